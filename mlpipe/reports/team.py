"""The team report (`mlflow run . -e report`): where a team stands, read from the shared registry,
the tracking store and the serving records.

- a leaderboard: every member's current champion and the team champion, scored on the same
  held-out rows (`data.holdout_fraction`: rows every member's ingest dropped, data/frames.py),
  with a paired bootstrap confidence interval of each model's difference to the team champion;
- who holds the champion and the promotions with their evidence (the team model's versions);
- the A/B tests in the serving records and their state (the always-valid test, as the report
  that promotes reads it);
- team-wide monitoring: each member's step runs over the last `report.days` days with
  duration, peak memory, failures by error type and qa failures by check.
The statistics (`paired_ci`, `run_table`) are pure; the rest reads through MLflow's client.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from mlpipe.errors import ConfigError, DataError, one_line

MEASURES = {"classification": "accuracy", "regression": "mae"}


# -- the pure part ---------------------------------------------------------------------------

def paired_ci(model: Sequence[float], baseline: Sequence[float], alpha: float, n_boot: int,
              seed: int) -> tuple[float, float, float]:
    """(mean difference, low, high): the difference in mean per-row outcome between a model and
    the baseline scored on the same rows, with a percentile bootstrap interval that resamples
    rows (so both models' outcomes on a row stay paired)."""
    a, b = np.asarray(model, dtype=float), np.asarray(baseline, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired outcomes need the same non-zero length, got {a.size} and {b.size}")
    diff = a - b
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(n_boot, diff.size))].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(diff.mean()), float(low), float(high)


def outcomes(task: str, predictions: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """1/0 per row (classification) or the absolute error (regression)."""
    predictions, truth = np.asarray(predictions).ravel(), np.asarray(truth).ravel()
    if task == "classification":
        return (predictions.astype(str) == truth.astype(str)).astype(float)
    return np.abs(predictions.astype(float) - truth.astype(float))


def run_table(runs: Sequence[Any]) -> pd.DataFrame:
    """One row per step run: member, step, status, start, duration, peak memory, error type and
    the qa checks it failed."""
    rows = []
    for run in runs:
        tags, info = run.data.tags, run.info
        end = info.end_time or info.start_time
        rows.append({"member": tags.get("team.member", ""), "step": tags.get("pipeline.step", ""),
                     "status": info.status, "started": pd.Timestamp(info.start_time, unit="ms"),
                     "duration_s": (end - info.start_time) / 1000.0,
                     "peak_rss_mb": run.data.metrics.get("step.peak_rss_mb", float("nan")),
                     "error_type": tags.get("error.type", ""),
                     "qa_failed": tags.get("qa.failed_checks", "") if tags.get("pipeline.step") == "qa" else ""})
    return pd.DataFrame(rows, columns=["member", "step", "status", "started", "duration_s", "peak_rss_mb",
                                       "error_type", "qa_failed"])


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


# -- reading the team's state ----------------------------------------------------------------

@dataclass
class Candidate:
    label: str  # "team champion" or the member's name
    model_uri: str
    version: str
    member: str
    outcomes: np.ndarray | None = None
    error: str = ""
    tags: dict[str, str] | None = None  # the version's tags (its lineage.* among them)


def holdout(dcfg) -> tuple[pd.DataFrame, pd.Series]:
    """The team evaluation set: the rows of `data.source` that every ingest held out."""
    from mlpipe.data import sources
    from mlpipe.data.frames import held_out

    if dcfg.holdout_fraction <= 0:
        raise ConfigError("the team report needs held-out rows no member trained on: set team.holdout_fraction "
                          "(data.holdout_fraction) above 0, and run the members' pipelines with it")
    frame = sources.load_source(dcfg.source)
    rows = frame[held_out(frame, dcfg.holdout_fraction)]
    if rows.empty:
        raise DataError(f"data.holdout_fraction={dcfg.holdout_fraction} holds out no row of {dcfg.source}")
    return rows.drop(columns=[dcfg.target]), rows[dcfg.target]


def candidates(client, team, alias: str) -> list[Candidate]:
    from mlpipe.registry import versions

    found = []
    champion = versions.current(client, team.shared_model, alias)
    if champion is not None:
        found.append(Candidate("team champion", f"models:/{team.shared_model}/{champion.version}",
                               str(champion.version), (champion.tags or {}).get("team.member", ""),
                               tags=dict(champion.tags or {})))
    for member in [str(m["name"]) for m in team.members]:
        version = versions.current(client, f"{team.shared_model}.{member}", alias)
        if version is not None:
            found.append(Candidate(member, f"models:/{team.shared_model}.{member}/{version.version}",
                                   str(version.version), member, tags=dict(version.tags or {})))
    return found


def unseen_rows(client, c: Candidate, dcfg) -> str:
    """"" when the model's ingest held out the same rows as this report (the same data source and
    `data.holdout_fraction`), so it never trained on the evaluation set; else why it may have."""
    run_id = (c.tags or {}).get("lineage.ingest_run_id")
    if not run_id:
        return "not scored: no ingest run in its lineage, so whether it trained on the evaluation rows is unknown"
    params = client.get_run(run_id).data.params
    if params.get("data.source") != str(dcfg.source):
        return f"not scored: trained on {params.get('data.source')}, not {dcfg.source}"
    fraction = params.get("data.holdout_fraction")
    if fraction is None or float(fraction) != float(dcfg.holdout_fraction):
        return (f"not scored: its ingest held out data.holdout_fraction={fraction}, not {dcfg.holdout_fraction}, "
                "so it may have trained on evaluation rows")
    return ""


def score(client, found: list[Candidate], features: pd.DataFrame, truth: pd.Series, task: str,
          serialization: str, trusted: list[str], dcfg) -> None:
    """Each candidate's per-row outcomes on the held-out rows, loaded past the trust boundary;
    a model that may have trained on those rows (unseen_rows), or that cannot be loaded or
    scored, is listed with its reason."""
    from mlpipe.registry import provenance
    from mlpipe.training import model_io

    for c in found:
        c.error = unseen_rows(client, c, dcfg)
        if c.error:
            continue
        try:
            proof = provenance.validated(client, c.model_uri, "the team report scores only validated models")
            model, _ = model_io.load_model(proof.load_uri, serialization, trusted, expect_digest=proof.digest)
            c.outcomes = outcomes(task, np.asarray(model.predict(features)), truth.to_numpy())
        except Exception as exc:  # noqa: BLE001 - one unusable model does not hide the others
            c.error = one_line(exc)[:300]


def leaderboard(found: list[Candidate], task: str, alpha: float, n_boot: int, seed: int) -> list[dict[str, Any]]:
    """Rows best first; each with its difference to the team champion (else to the first scored
    model) and that difference's paired interval."""
    scored = [c for c in found if c.outcomes is not None]
    if not scored:
        return [{"label": c.label, "version": c.version, "member": c.member, "error": c.error} for c in found]
    base = scored[0]
    rows = []
    for c in found:
        row: dict[str, Any] = {"label": c.label, "model": c.model_uri, "version": c.version, "member": c.member,
                               "baseline": base.label, "error": c.error}
        if c.outcomes is not None:
            delta, low, high = paired_ci(c.outcomes, base.outcomes, alpha, n_boot, seed)
            row |= {"rows": int(c.outcomes.size), MEASURES[task]: float(c.outcomes.mean()), "delta": delta,
                    "ci_low": low, "ci_high": high}
        rows.append(row)
    sign = -1 if task == "classification" else 1
    return sorted(rows, key=lambda r: (MEASURES[task] not in r, sign * r.get(MEASURES[task], 0.0)))


def promotions(client, shared: str, alias: str) -> list[dict[str, Any]]:
    """The team model's versions, newest first: where each came from, who promoted it, the evidence."""
    from mlpipe.registry import versions

    champion = versions.current(client, shared, alias)
    out = []
    for v in sorted(versions.all_of(client, shared), key=lambda v: int(v.version), reverse=True):
        tags = v.tags or {}
        evidence = json.loads(tags.get("ab.evidence") or "{}")
        out.append({"version": str(v.version), "champion": bool(champion and champion.version == v.version),
                    "from": tags.get("team.copied_from", ""), "member": tags.get("team.member", ""),
                    "promoted_by": tags.get("ab.promoted_by", ""), "at": tags.get("ab.promoted_at", ""),
                    "experiment": tags.get("ab.promoted_by_experiment", ""), "test": evidence.get("test", ""),
                    "p_value": evidence.get("p_value", float("nan")),
                    "difference": evidence.get("accuracy_diff", evidence.get("mae_diff", float("nan"))),
                    "ci": f"[{evidence['ci_low']:.4f}, {evidence['ci_high']:.4f}]" if "ci_low" in evidence else ""})
    return out


def ab_tests(client, target: str, ab: dict, promoted: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every A/B experiment in the serving records with its state now: the verdict of the same
    test the promoting report runs (its task from the control's model, as that report finds it)."""
    from pathlib import Path

    from mlpipe.serving import abreport, records

    if not records.is_postgres(target) and not Path(target).is_file():
        return []
    out = []
    for exp in records.experiments(target):
        name = exp["experiment"]
        done = [p["version"] for p in promoted if p["experiment"] == name]
        try:
            served = records.served_models(target, name)
            task = ab["task"] or abreport.task_of(client, served, exp["control"] if exp["control"] in served
                                                  else next(iter(served), None))
            state = abreport.build(target, name, ab, [], task)["recommendation"]
        except Exception as exc:  # noqa: BLE001 - one experiment that cannot be read does not hide the rest
            state = f"cannot decide: {one_line(exc)[:200]}"
        out.append({"experiment": name, "arms": ", ".join(v["name"] for v in exp["variants"]),
                    "control": exp["control"], "requests": exp["requests"], "labelled": exp["labelled_requests"],
                    "state": state + (f" (promoted: version {', '.join(done)})" if done else "")})
    return out


def team_runs(client, team, days: float) -> list[Any]:
    """Every step run of the team's members' experiments (`<team>/<member>`) of the last `days`."""
    since = int((time.time() - days * 86400) * 1000)
    ids = [e.experiment_id for e in (client.get_experiment_by_name(f"{team.name}/{m['name']}") for m in team.members)
           if e is not None]
    if not ids:
        return []
    return client.search_runs(ids, f"attributes.start_time >= {since} and tags.`pipeline.step` != ''",
                              max_results=5000)


# -- charts (PNG) ----------------------------------------------------------------------------

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


def leaderboard_chart(rows: list[dict[str, Any]], task: str, dpi: float) -> bytes:
    """Each model's difference to the team champion with its interval."""
    scored = [r for r in rows if "delta" in r]
    fig, ax = _figure(dpi)
    labels = [f"{r['label']} (v{r['version']})" for r in scored]
    deltas = np.array([r["delta"] for r in scored])
    err = np.array([[r["delta"] - r["ci_low"] for r in scored], [r["ci_high"] - r["delta"] for r in scored]])
    ax.barh(labels, deltas, xerr=err, color="#4a78b5", capsize=4)
    ax.axvline(0, color="#333", lw=1)
    ax.set_xlabel(f"{MEASURES[task]} difference to {scored[0]['baseline'] if scored else '-'} (paired CI)")
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
