"""Data drift: a reference profile of the training split, and a batch compared with it.

Pure functions over frames and dicts, no MLflow. preprocess stores the profile (quantile bins
and category frequencies) and a capped sample of the reference rows; qa compares the test
split, and any new batch given as `qa.data_source`, against them:

- numeric columns: two-sample Kolmogorov-Smirnov against the reference rows, PSI on the
  profile's quantile bins;
- categorical columns: chi-square on the reference and batch category counts, PSI on the
  category frequencies.

A column drifts when the test rejects at `alpha / columns` (Bonferroni: the family-wise false
alarm rate over all columns stays at most `alpha`) AND its PSI exceeds `max_psi`. The test alone
flags negligible shifts on large batches; PSI alone flags noise on small ones (its expected value
under no drift is about (bins - 1) * (1/n_reference + 1/n_batch)).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

MISSING = "<missing>"
# PSI's log ratio is undefined for empty bins: fractions are floored at this value.
PSI_FLOOR = 1e-4


def _numeric_values(series: pd.Series) -> np.ndarray:
    return pd.to_numeric(series, errors="coerce").dropna().to_numpy(dtype=float)


def _categories(series: pd.Series) -> pd.Series:
    return series.astype("object").where(series.notna(), MISSING).map(str)


def bin_counts(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Counts in (-inf, e0], (e0, e1], ..., (e_last, inf)."""
    index = np.searchsorted(np.asarray(edges, dtype=float), values, side="left")
    return np.bincount(index, minlength=len(edges) + 1)


def reference_profile(frame: pd.DataFrame, numeric: list[str], categorical: list[str], bins: int) -> dict[str, Any]:
    """Quantile bins (inner edges + fractions) per numeric column, frequencies per categorical one."""
    columns: dict[str, Any] = {}
    for col in numeric:
        values = _numeric_values(frame[col])
        if len(values) == 0:
            continue
        inner = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1))[1:-1]).tolist()
        counts = bin_counts(values, inner)
        columns[col] = {"kind": "numeric", "rows": int(len(values)), "edges": inner,
                        "fractions": (counts / len(values)).tolist(),
                        "missing_fraction": float(frame[col].isna().mean()),
                        "mean": float(values.mean()), "std": float(values.std()),
                        "min": float(values.min()), "max": float(values.max())}
    for col in categorical:
        counts = _categories(frame[col]).value_counts()
        columns[col] = {"kind": "categorical", "rows": int(counts.sum()),
                        "frequencies": {str(k): float(v / counts.sum()) for k, v in counts.items()}}
    return {"rows": int(len(frame)), "bins": bins, "columns": columns}


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two fraction vectors over the same bins."""
    e = np.clip(np.asarray(expected, dtype=float), PSI_FLOOR, None)
    a = np.clip(np.asarray(actual, dtype=float), PSI_FLOOR, None)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    kind: str
    test: str
    statistic: float
    p_value: float
    psi: float
    rows: int
    drifted: bool
    reference_fractions: list[float]
    batch_fractions: list[float]
    bins: list[str]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _numeric_drift(col: str, ref: dict, reference_values: np.ndarray, values: np.ndarray) -> tuple:
    from scipy.stats import ks_2samp

    stat, p = ks_2samp(reference_values, values)
    fractions = bin_counts(values, ref["edges"]) / len(values)
    edges = ref["edges"]
    labels = [f"<= {edges[0]:.3g}"] if edges else ["all"]
    labels += [f"({a:.3g}, {b:.3g}]" for a, b in zip(edges, edges[1:])]
    labels += [f"> {edges[-1]:.3g}"] if edges else []
    return "ks", float(stat), float(p), psi(ref["fractions"], fractions), list(ref["fractions"]), fractions.tolist(), labels


def _categorical_drift(col: str, ref: dict, values: pd.Series) -> tuple:
    from scipy.stats import chi2_contingency

    counts = _categories(values).value_counts()
    labels = list(ref["frequencies"]) + sorted(str(k) for k in counts.index if str(k) not in ref["frequencies"])
    expected = np.array([ref["frequencies"].get(k, 0.0) for k in labels])
    actual = np.array([counts.get(k, 0) for k in labels], dtype=float)
    table = np.vstack([expected * ref["rows"], actual])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        stat, p = 0.0, 1.0
    else:
        stat, p, _, _ = chi2_contingency(table)
    fractions = actual / actual.sum()
    return "chi2", float(stat), float(p), psi(expected, fractions), expected.tolist(), fractions.tolist(), labels


def compare(profile: dict[str, Any], reference: pd.DataFrame, batch: pd.DataFrame, alpha: float,
            max_psi: float) -> list[ColumnDrift]:
    """Each profiled column of `batch` against the reference; see the module doc for the rule."""
    columns = [c for c in profile["columns"] if c in batch.columns]
    corrected = alpha / max(len(columns), 1)
    out = []
    for col in columns:
        ref = profile["columns"][col]
        if ref["kind"] == "numeric":
            values = _numeric_values(batch[col])
            if len(values) == 0:
                continue
            found = _numeric_drift(col, ref, _numeric_values(reference[col]), values)
            rows = len(values)
        else:
            found = _categorical_drift(col, ref, batch[col])
            rows = int(batch[col].shape[0])
        test, stat, p, value, ref_fr, batch_fr, labels = found
        drifted = (not math.isnan(p)) and p < corrected and value > max_psi
        out.append(ColumnDrift(col, ref["kind"], test, stat, p, value, rows, drifted, ref_fr, batch_fr, labels))
    return out


def summary(found: list[ColumnDrift], alpha: float, max_psi: float) -> dict[str, Any]:
    drifted = [d.column for d in found if d.drifted]
    return {"columns": len(found), "drifted": drifted, "alpha": alpha,
            "alpha_per_column": alpha / max(len(found), 1), "max_psi": max_psi,
            "max_psi_seen": max((d.psi for d in found), default=0.0),
            "details": [d.as_dict() for d in found]}


def describe(found: list[ColumnDrift], limit: int = 3) -> str:
    """The drifted columns, worst PSI first: 'alcohol (psi 3.1, ks p=1e-12)'."""
    worst = sorted((d for d in found if d.drifted), key=lambda d: -d.psi)
    shown = [f"{d.column} (psi {d.psi:.2f}, {d.test} p={d.p_value:.1g})" for d in worst[:limit]]
    more = len(worst) - limit
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def check(name: str, found: list[ColumnDrift], max_drifted: int):
    """The gate check for one batch: at most `max_drifted` drifted columns."""
    from mlpipe.quality.gate import Check

    drifted = [d for d in found if d.drifted]
    note = f"drifted: {describe(found)}" if drifted else f"{len(found)} columns compared"
    return Check(f"drift.{name}", len(drifted) <= max_drifted, float(len(drifted)), f"<= {max_drifted} drifted columns",
                 note)
