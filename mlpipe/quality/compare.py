"""Models compared on the same rows: a metric's value for each, and each one's difference to a
baseline model with a paired bootstrap interval (rows are resampled, both models' answers on a
row stay together). Any metric of the one table (training/metric_names.py): the team report's
leaderboard ranks by the configured qa.primary_metric.

Pure: predictions (or, for roc_auc, scores of the positive class) and the truth in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from mlpipe.training import metric_names

# How each metric is computed on rows picked by an index array (one row of `idx` per resample),
# vectorized over the resamples. f1_score is the macro average over the classes present in each
# resample (as train's cross-validation scores it); roc_auc needs binary truth and scores.


def _accuracy(t, p):
    return (p == t).mean(axis=-1)


def _mae(t, p):
    return np.abs(p - t).mean(axis=-1)


def _rmse(t, p):
    return np.sqrt(((p - t) ** 2).mean(axis=-1))


def _r2(t, p):
    sst = ((t - t.mean(axis=-1, keepdims=True)) ** 2).sum(axis=-1)
    sse = ((t - p) ** 2).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sst > 0, 1 - sse / np.where(sst > 0, sst, 1), np.nan)


def _f1_macro(t, p):
    labels = np.unique(np.concatenate([np.unique(t), np.unique(p)]))
    total, present = np.zeros(t.shape[:-1]), np.zeros(t.shape[:-1])
    for label in labels:
        tp = ((p == label) & (t == label)).sum(axis=-1)
        wrong = ((p == label) != (t == label)).sum(axis=-1)  # false positives and false negatives
        seen = (tp + wrong) > 0
        total += np.where(seen, 2 * tp / np.where(seen, 2 * tp + wrong, 1), 0.0)
        present += seen
    with np.errstate(invalid="ignore"):
        return total / present


def _roc_auc(t, s):
    from scipy.stats import rankdata

    ranks = rankdata(s, axis=-1)
    positive = t == 1
    n1 = positive.sum(axis=-1)
    n0 = t.shape[-1] - n1
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = ((ranks * positive).sum(axis=-1) - n1 * (n1 + 1) / 2) / (n1 * n0)
    return np.where((n1 > 0) & (n0 > 0), auc, np.nan)


# Cells (resamples x rows) held at once: about 16 MB of floats or 64 MB of short labels.
RESAMPLED_CELLS = 2_000_000
SCORERS = {"accuracy": _accuracy, "f1_score": _f1_macro, "roc_auc": _roc_auc, "r2": _r2, "rmse": _rmse, "mae": _mae}


def needs_scores(metric: str) -> bool:
    """roc_auc ranks the positive class's scores (predict_proba), not the predicted labels."""
    return metric == "roc_auc"


def value(metric: str, truth, answers) -> float:
    """The metric of `answers` (predictions, or scores for roc_auc) against `truth`, on all rows."""
    t, a = _arrays(metric, truth, answers)
    return float(SCORERS[metric](t, a))


def _arrays(metric: str, truth, answers) -> tuple[np.ndarray, np.ndarray]:
    t, a = np.asarray(truth).ravel(), np.asarray(answers).ravel()
    if t.shape != a.shape or t.size == 0:
        raise ValueError(f"the truth and the answers need the same non-zero length, got {t.size} and {a.size}")
    if metric_names.METRICS[metric].task == "regression" or needs_scores(metric):
        return t.astype(float), a.astype(float)
    return t.astype(str), a.astype(str)  # labels compared as text: 1 and "1" are one class


def paired_difference(metric: str, truth, model, baseline, alpha: float, n_boot: int,
                      seed: int) -> tuple[float, float, float]:
    """(difference, low, high): metric(model) - metric(baseline) on all rows, and the percentile
    interval of that difference over `n_boot` resamples of the rows (both on the same rows)."""
    t, m = _arrays(metric, truth, model)
    _, b = _arrays(metric, truth, baseline)
    rng, scorer = np.random.default_rng(seed), SCORERS[metric]
    per_chunk = max(1, RESAMPLED_CELLS // t.size)  # resamples at a time: memory stays bounded on big holdouts
    diffs = []
    for start in range(0, n_boot, per_chunk):
        idx = rng.integers(0, t.size, size=(min(per_chunk, n_boot - start), t.size))
        diffs.append(scorer(t[idx], m[idx]) - scorer(t[idx], b[idx]))
    low, high = np.nanquantile(np.concatenate(diffs), [alpha / 2, 1 - alpha / 2])
    return float(scorer(t, m) - scorer(t, b)), float(low), float(high)


class Scored(Protocol):
    """What the leaderboard ranks (team/report.py's Candidate has it)."""

    label: str
    model_uri: str
    version: str
    member: str
    answers: Any  # predictions, or scores for roc_auc; None when not scored
    error: str


@dataclass(frozen=True)
class Board:
    metric: str
    rows: list[dict[str, Any]]  # best first


def leaderboard(found: list[Scored], truth, metric: str, alpha: float, n_boot: int, seed: int) -> Board:
    """Rows best first by `metric`; each with its difference to the first scored candidate (the
    team champion when there is one) and that difference's paired interval."""
    scored = [c for c in found if c.answers is not None]
    if not scored:
        return Board(metric, [{"label": c.label, "version": c.version, "member": c.member, "error": c.error}
                              for c in found])
    base = scored[0]
    rows = []
    for c in found:
        row: dict[str, Any] = {"label": c.label, "model": c.model_uri, "version": c.version, "member": c.member,
                               "baseline": base.label, "error": c.error}
        if c.answers is not None:
            delta, low, high = paired_difference(metric, truth, c.answers, base.answers, alpha, n_boot, seed)
            row |= {"rows": int(np.asarray(truth).size), metric: value(metric, truth, c.answers), "delta": delta,
                    "ci_low": low, "ci_high": high}
        rows.append(row)
    sign = -1 if metric_names.greater_is_better(metric) else 1
    return Board(metric, sorted(rows, key=lambda r: (metric not in r, sign * r.get(metric, 0.0))))
