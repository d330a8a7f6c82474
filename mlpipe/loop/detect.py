"""The monitor's decision rules, pure: numbers in, a decision and its reason out.

- **Performance** (classification): a Bernoulli CUSUM on the served model's errors, one
  labelled row at a time. In control the error rate is the baseline p0 (the upper end of a
  one-sided interval on the first `baseline_rows` labelled rows the model answered, so that an
  estimate on the low side does not make a stable model drift towards an alarm); the alternative
  is p1 = p0 + `min_drop`. S = max(0, S + log-likelihood ratio of the row); an alarm when S > h.
  With h = ln(`false_alarm_rows`), a model whose error rate stays at p0 raises a false alarm on
  average at most once in `false_alarm_rows` labelled rows, however often the monitor runs
  (S is carried from run to run): the CUSUM's in-control run length is at least e^h (Wald).
- **Input drift**: qa's tests (KS + PSI per numeric column, chi-square + PSI per categorical one,
  Bonferroni over the columns: quality/drift.py) on each window of new served rows, the k-th
  test of one model at alpha_k = alpha * 6 / (pi^2 k^2). The alpha_k sum to alpha, so the chance
  of any false alarm over all the runs on a model is at most alpha, however many there are.
- **Prediction drift** is measured (PSI of the predicted classes against the baseline's) and
  reported, never a trigger on its own: a shift in what the model answers follows from its inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from mlpipe.errors import ConfigError


def threshold(false_alarm_rows: float) -> float:
    """The CUSUM threshold h whose in-control average run length is at least `false_alarm_rows`."""
    if false_alarm_rows <= 1:
        raise ConfigError(f"loop.performance.false_alarm_rows={false_alarm_rows:g}: must be over 1")
    return math.log(false_alarm_rows)


def spent_alpha(alpha: float, k: int) -> float:
    """The level of the k-th test (k = 1, 2, ...) of a series whose levels sum to `alpha`."""
    return alpha * 6.0 / (math.pi ** 2 * k ** 2)


def upper_bound(errors: int, rows: int, z: float = 1.2816) -> float:
    """The upper end of the one-sided Wilson interval (90% by default) of an error rate."""
    return wilson(errors, rows, z)[1]


def wilson(successes: int, rows: int, z: float = 1.96) -> tuple[float, float]:
    """The two-sided Wilson interval of a proportion (95% by default)."""
    if rows == 0:
        return 0.0, 1.0
    p = successes / rows
    centre = p + z * z / (2 * rows)
    half = z * math.sqrt(p * (1 - p) / rows + z * z / (4 * rows * rows))
    scale = 1 + z * z / rows
    return max(0.0, (centre - half) / scale), min(1.0, (centre + half) / scale)


@dataclass
class Cusum:
    """A Bernoulli CUSUM for an error rate rising from p0 to p1; `s` and `rows` carry over."""

    p0: float
    p1: float
    h: float
    s: float = 0.0
    rows: int = 0  # rows seen since the last restart
    peak: float = 0.0  # the largest s seen since the last restart
    last_zero: int | None = None  # in the last update: the position after which s was last 0

    @classmethod
    def tuned(cls, baseline_errors: int, baseline_rows: int, min_drop: float, false_alarm_rows: float) -> "Cusum":
        p0 = min(max(upper_bound(baseline_errors, baseline_rows), 1e-3), 0.95)
        return cls(p0, min(p0 + min_drop, 0.999), threshold(false_alarm_rows))

    def update(self, errors: Sequence[int]) -> int | None:
        """Adds the rows (1: an error) in order; the 1-based position of the row that raised the
        alarm, else None. `last_zero` is then the position of the last row after which S was 0
        (0: before the first row of this call): the CUSUM's estimate of where the change began."""
        up, down = math.log(self.p1 / self.p0), math.log((1 - self.p1) / (1 - self.p0))
        self.last_zero = 0 if self.s == 0.0 else None
        for i, error in enumerate(errors, start=1):
            self.s = max(0.0, self.s + (up if error else down))
            self.rows += 1
            self.peak = max(self.peak, self.s)
            if self.s == 0.0:
                self.last_zero = i
            if self.s > self.h:
                return i
        return None


def psi_of_counts(expected: dict, actual: dict, floor: float = 1e-4) -> float:
    """PSI between two categorical distributions given as counts (classes missing in one count 0)."""
    keys = set(expected) | set(actual)
    n_e, n_a = sum(expected.values()) or 1, sum(actual.values()) or 1
    total = 0.0
    for key in keys:
        e, a = max(expected.get(key, 0) / n_e, floor), max(actual.get(key, 0) / n_a, floor)
        total += (a - e) * math.log(a / e)
    return total
