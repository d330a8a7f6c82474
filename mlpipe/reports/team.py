"""The team report's tables and charts (`mlflow run . -e report`), from what mlpipe/team/report.py
read and mlpipe/quality/compare.py ranked: the leaderboard's chart, team-wide monitoring (each
member's step runs with duration, peak memory, failures by error type and qa failures by check)
and the durations chart. No store, no model.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd


def monitoring_tables(table: pd.DataFrame) -> dict[str, list[list[Any]]]:
    """Per member and step: runs, failed, median and max duration, max peak memory; failures by
    error type; qa failures by check."""
    out: dict[str, list[list[Any]]] = {"steps": [], "errors": [], "qa": []}
    if table.empty:
        return {"steps": [], "errors": [["(none)", "", 0]], "qa": [["(none)", "", 0]]}
    for (member, step), group in table.groupby(["member", "step"], sort=True):
        out["steps"].append([member, step, len(group), int((group["status"] == "FAILED").sum()),
                             round(float(group["duration_s"].median()), 1), round(float(group["duration_s"].max()), 1),
                             float(group["peak_rss_mb"].max())])
    failed = table[table["error_type"] != ""]
    for (member, kind), group in failed.groupby(["member", "error_type"], sort=True):
        out["errors"].append([member, kind, len(group)])
    checks = table[table["qa_failed"] != ""].assign(check=lambda t: t["qa_failed"].str.split(","))
    checks = checks.explode("check")
    for (member, check), group in checks.groupby(["member", "check"], sort=True):
        out["qa"].append([member, check.strip(), len(group)])
    for key in ("errors", "qa"):
        out[key] = out[key] or [["(none)", "", 0]]
    return out


# -- charts (PNG) ----------------------------------------------------------------------------

def add_monitoring(card, watch: dict[str, list[list[Any]]], days: float) -> None:
    """The monitoring tables (monitoring_tables) on the team report's card."""
    card.add_table(f"Step runs of the last {days:g} days", ["member", "step", "runs", "failed", "median s", "max s",
                                                         "peak MB"], watch["steps"])
    card.add_table("Failures by error type", ["member", "error type", "runs"], watch["errors"])
    card.add_table("qa failures by check", ["member", "check", "runs"], watch["qa"])


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    out = io.BytesIO()
    fig.tight_layout()
    fig.savefig(out, format="png")
    plt.close(fig)
    return out.getvalue()


def _figure(dpi: float, size=(6.4, 3.2)):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size, dpi=dpi)


def bar_label(row: dict[str, Any]) -> str:
    """Who made the model and which version: `bob v3`, and `(team champion)` on the leader."""
    who = f"{row.get('member') or 'unknown member'} v{row['version']}"
    return f"{who} (team champion)" if row["label"] == "team champion" else who


def leaderboard_chart(rows: list[dict[str, Any]], metric: str, dpi: float, higher_is_better: bool = True) -> bytes:
    """Each model's difference to the team champion in `metric`, with its interval, drawn so that
    right is better whatever the metric (an error's difference is turned round): green bars beat
    the champion, red ones trail it."""
    scored = [r for r in rows if "delta" in r]
    fig, ax = _figure(dpi)
    sign = 1.0 if higher_is_better else -1.0
    deltas = np.array([sign * r["delta"] for r in scored])
    low = np.array([sign * (r["ci_low"] if higher_is_better else r["ci_high"]) for r in scored])
    high = np.array([sign * (r["ci_high"] if higher_is_better else r["ci_low"]) for r in scored])
    colors = ["#2e8b57" if d > 0 else "#c0392b" if d < 0 else "#888888" for d in deltas]
    ax.barh([bar_label(r) for r in scored], deltas, xerr=np.array([deltas - low, high - deltas]), color=colors,
            capsize=4)
    ax.axvline(0, color="#333", lw=1)
    ax.set_xlabel(f"{metric}: worse <- than {scored[0]['baseline'] if scored else '-'} -> better (paired CI)")
    return _png(fig)


def duration_chart(table: pd.DataFrame, dpi: float) -> bytes:
    """Median step duration per member."""
    fig, ax = _figure(dpi)
    if not table.empty:
        pivot = table.pivot_table(index="step", columns="member", values="duration_s", aggfunc="median")
        pivot.plot.bar(ax=ax, rot=0)
    ax.set_ylabel("median duration (s)")
    ax.set_title("step runs per member")
    return _png(fig)
