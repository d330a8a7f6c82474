"""Always-valid A/B statistics, the pure part: the normal-mixture sequential probability ratio
test (mSPRT) of Johari, Koomen, Pekelis & Walsh (2017, "Peeking at A/B tests").

Its p-value and confidence sequence stay valid however often they are read while data arrives:
the chance that *any* look ever shows p < alpha under no difference is at most alpha, so a
report may be re-run after every batch. No I/O here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

TASKS = ("classification", "regression")


@dataclass(frozen=True)
class Sequential:
    p_value: float  # always-valid p: min over every look of 1/Lambda, capped at 1 (NaN with no look)
    ci_low: float  # confidence sequence for diff: intersection of the running intervals
    ci_high: float  # (-inf, inf) with no look; empty (low > high) only with probability <= alpha
    diff: float  # mean(challenger) - mean(control) on all rows (NaN when an arm is empty)
    n_control: int
    n_challenger: int
    looks: int  # prefixes at which Lambda was computed


def default_tau(task: str, control_outcomes: Sequence[float], rule: dict[str, float]) -> float:
    """The mixture's effect-size scale: the standard deviation of the N(0, tau^2) prior on the
    difference, by `rule` (serve.ab.default_tau). Classification: rule["classification"] (0.1:
    an accuracy difference of about 10 points). Regression: rule["regression_sd"] x the standard
    deviation of the control's absolute errors given (0.5), rule["fallback"] with fewer than
    two or when they do not vary (1.0)."""
    if task not in TASKS:
        raise ValueError(f"task={task!r}; expected classification or regression")
    if task == "classification":
        return float(rule["classification"])
    out = np.asarray(control_outcomes, dtype=float)
    if out.size < 2:
        return float(rule["fallback"])
    sd = float(np.std(out, ddof=1))
    return float(rule["regression_sd"]) * sd if math.isfinite(sd) and sd > 0 else float(rule["fallback"])


def always_valid(arms: Sequence[int], outcomes: Sequence[float], *, tau: float, alpha: float,
                 burn_in: int) -> Sequential:
    """arms: 0 (control) or 1 (challenger) per row, in arrival order; outcomes: 1/0 correct
    (classification) or absolute error (regression) per row. Evaluates the mSPRT at every
    prefix (every row) where both arms have >= burn_in rows and a positive variance estimate."""
    if not (isinstance(tau, (int, float, np.number)) and math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau={tau!r}; expected a finite number > 0")
    if not (isinstance(alpha, (int, float, np.number)) and 0 < alpha < 1):
        raise ValueError(f"alpha={alpha!r}; expected a number in (0, 1)")
    if isinstance(burn_in, bool) or not isinstance(burn_in, (int, np.integer)) or burn_in < 2:
        raise ValueError(f"burn_in={burn_in!r}; expected an integer >= 2")
    arm = np.asarray(arms)
    out = np.asarray(outcomes, dtype=float)
    if arm.ndim != 1 or out.ndim != 1 or arm.size != out.size:
        raise ValueError(f"arms and outcomes must be 1-d of the same length, got {arm.shape} and {out.shape}")
    if not ((arm == 0) | (arm == 1)).all():
        raise ValueError(f"arms must hold only 0 (control) and 1 (challenger), got {np.unique(arm)[:5].tolist()}")
    if not np.isfinite(out).all():
        raise ValueError("outcomes must be finite numbers")
    treat = arm == 1
    n_t_all, n_c_all = int(treat.sum()), int((~treat).sum())
    diff = float(out[treat].mean() - out[~treat].mean()) if n_t_all and n_c_all else float("nan")
    nothing = Sequential(float("nan"), -math.inf, math.inf, diff, n_c_all, n_t_all, 0)
    if n_t_all < burn_in or n_c_all < burn_in:
        return nothing

    binary = bool(((out == 0) | (out == 1)).all())
    mean_c, var_c, n_c = _running(out, ~treat, binary)
    mean_t, var_t, n_t = _running(out, treat, binary)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = var_c / n_c + var_t / n_t
    look = (n_c >= burn_in) & (n_t >= burn_in) & (v > 0)
    if not look.any():
        return nothing
    d, v = mean_t[look] - mean_c[look], v[look]
    t2 = float(tau) ** 2
    # log Lambda_n = 1/2 log(V/(V+tau^2)) + tau^2 d^2 / (2 V (V+tau^2)), in logs: no overflow.
    log_lambda = 0.5 * np.log(v / (v + t2)) + t2 * d**2 / (2 * v * (v + t2))
    p_value = float(min(1.0, math.exp(-float(log_lambda.max()))))
    # The set {theta : Lambda_n(theta) < 1/alpha} at each look, intersected over the looks.
    half = np.sqrt(v * (v + t2) / t2 * (2 * math.log(1 / alpha) + np.log((v + t2) / v)))
    return Sequential(p_value, float((d - half).max()), float((d + half).min()), diff,
                      n_c_all, n_t_all, int(look.sum()))


def _running(out: np.ndarray, member: np.ndarray, binary: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One arm's running count, mean and variance at every prefix of the rows (cumulative sums)."""
    n = np.cumsum(member).astype(float)
    rows = out[member]
    # Shifting by the arm's first value keeps the sums small (less cancellation) and makes a
    # constant arm's variance exactly 0 rather than rounding noise.
    shift = rows[0] if rows.size else 0.0
    x = np.where(member, out - shift, 0.0)
    s, ss = np.cumsum(x), np.cumsum(x * x)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = s / n + shift
        if binary:
            # 0/1 outcomes: the Bernoulli variance at the Jeffreys posterior mean
            # (successes + 1/2) / (n + 1), never 0, so an arm that is all right (or all wrong)
            # early on cannot give V = 0 and an infinite Lambda; it tends to p(1-p) as n grows.
            p = (s + shift * n + 0.5) / (n + 1)
            var = p * (1 - p)
        else:
            var = np.maximum(ss - s * s / n, 0.0) / (n - 1)
    return mean, var, n
