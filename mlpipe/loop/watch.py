"""One monitor run's findings, pure: the state it starts from, the labels and served rows that
arrived since, the watched model's training reference and `loop` config in; the state to hand
on, the measurements and whether (and why, in one line each) the loop's trigger is raised."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import pandas as pd

from mlpipe.loop import detect
from mlpipe.loop.state import State
from mlpipe.quality import drift


@dataclass
class Findings:
    state: State
    alarms: dict[str, str] = field(default_factory=dict)  # rule -> why, one line
    notes: list[str] = field(default_factory=list)  # what was not decided, and why
    metrics: dict[str, float] = field(default_factory=dict)
    drift: list[drift.ColumnDrift] = field(default_factory=list)

    # where what alarmed in this run begins, for the retrain's snapshot (the first alarm's on this
    # version, kept in the state: a retry trains on every row since)
    @property
    def changed_after_feedback(self) -> int | None:
        """The label set after which the performance change began, when that rule alarmed."""
        return self.state.change_feedback if "performance" in self.alarms else None

    @property
    def drifted_after_request(self) -> int | None:
        """The request after which the first drifted window began, when that rule alarmed."""
        return self.state.change_request if "inputs" in self.alarms else None

    def trigger(self, rules: Sequence[str]) -> str | None:
        """The reason the loop's trigger is raised (the rules in loop.trigger that alarmed), or None."""
        raised = [f"{rule}: {self.alarms[rule]}" for rule in rules if rule in self.alarms]
        return "; ".join(raised) or None


def performance(found: Findings, labels: Sequence[tuple[int, Any, Any]], task: str, pcfg) -> None:
    """The baseline from the first labelled rows, then the CUSUM on the rest; the window's
    accuracy with its 95% interval."""
    state = found.state
    before = state.feedback_cursor
    if labels:
        state.feedback_cursor = max(state.feedback_cursor, max(row[0] for row in labels))
    if task != "classification":
        found.notes.append(f"performance: not decided for a {task or 'unknown'} task (classification only); "
                           f"{len(labels)} labelled rows read")
        return
    errors = [int(p != t) for _, p, t in labels]
    fill = max(0, min(len(errors), int(pcfg.baseline_rows) - state.baseline_rows))
    state.baseline_rows += fill
    state.baseline_errors += sum(errors[:fill])
    for _, p, _ in labels[:fill]:
        state.baseline_predictions[str(p)] = state.baseline_predictions.get(str(p), 0) + 1
    found.metrics |= {"monitor.labelled_rows": float(len(errors))}
    if errors:
        low, high = detect.wilson(len(errors) - sum(errors), len(errors))
        found.metrics |= {"monitor.accuracy": 1 - sum(errors) / len(errors), "monitor.accuracy_low": low,
                          "monitor.accuracy_high": high}
    if state.baseline_rows < int(pcfg.baseline_rows):
        found.notes.append(f"performance: baseline {state.baseline_rows}/{int(pcfg.baseline_rows)} labelled rows "
                           "(loop.performance.baseline_rows); nothing decided yet")
        return
    ids = [row[0] for row in labels[fill:]]
    _cusum(found, errors[fill:], ids, labels[fill - 1][0] if fill else before, pcfg)


def _cusum(found: Findings, errors: list[int], ids: list[int], before: int, pcfg) -> None:
    """The CUSUM on the rows after the baseline (`ids`: their label sets; `before`: the label set
    before the first), restarted after an alarm and fed the rest; where the change began."""
    state = found.state
    cusum = detect.Cusum.tuned(state.baseline_errors, state.baseline_rows, float(pcfg.min_drop),
                               float(pcfg.false_alarm_rows))
    cusum.s, cusum.rows = state.cusum, state.cusum_rows
    start, offset = before, 0
    while True:
        at = cusum.update(errors[offset:])
        if cusum.last_zero is not None:  # 0: the statistic was 0 before the first of these rows
            state.cusum_zero_id = ids[offset + cusum.last_zero - 1] if cusum.last_zero else start
        if at is None:
            break
        if "performance" not in found.alarms:  # this run's first alarm: its line and where the change began
            window = errors[offset:offset + at][-int(pcfg.baseline_rows):]
            found.alarms["performance"] = (
                f"accuracy fell: CUSUM over h={cusum.h:.1f} after {cusum.rows} labelled rows (baseline error "
                f"<= {cusum.p0:.3f}, tuned for +{float(pcfg.min_drop):g}; the last {len(window)} rows: error "
                f"{sum(window) / len(window):.3f})")
            if state.change_feedback is None:
                state.change_feedback = state.cusum_zero_id
            state.alarms += 1
        cusum.s, cusum.rows = 0.0, 0  # restarted: the next alarm needs new evidence
        start, offset = ids[offset + at - 1], offset + at
    found.metrics |= {"monitor.cusum": cusum.s, "monitor.cusum_h": cusum.h, "monitor.cusum_peak": cusum.peak,
                      "monitor.baseline_error": cusum.p0}
    state.cusum, state.cusum_rows = cusum.s, cusum.rows


def inputs(found: Findings, served: pd.DataFrame, last_id: int, profile: dict, reference: pd.DataFrame,
           icfg) -> None:
    """qa's drift tests on the window of served rows, at the level the alpha budget has left."""
    state = found.state
    columns = [c for c in profile.get("columns", {}) if c in served.columns]
    found.metrics["monitor.served_rows"] = float(len(served))
    if len(served) < int(icfg.min_rows):
        found.notes.append(f"inputs: {len(served)} served rows with inputs since the last test, fewer than "
                           f"loop.inputs.min_rows={int(icfg.min_rows)}: tested when more arrive")
        return
    first = state.request_cursor
    state.request_cursor = max(state.request_cursor, int(last_id))
    missing = sorted(set(profile.get("columns", {})) - set(columns))
    if missing:
        found.notes.append(f"inputs: not kept by the server, not tested: {', '.join(missing)} (serve.inputs)")
    state.drift_tests += 1
    level = detect.spent_alpha(float(icfg.alpha), state.drift_tests)
    found.drift = drift.compare(profile, reference, served[columns], level, float(icfg.max_psi))
    drifted = [d for d in found.drift if d.drifted]
    found.metrics |= {"monitor.columns_drifted": float(len(drifted)), "monitor.drift_level": level,
                      "monitor.max_psi": max((d.psi for d in found.drift), default=0.0)}
    if len(drifted) > int(icfg.max_drifted_columns):
        if state.change_request is None:
            state.change_request = first
        found.alarms["inputs"] = (f"{len(drifted)} of {len(found.drift)} columns drifted on {len(served)} served rows "
                                  f"(test {state.drift_tests} at alpha {level:.2g}): {drift.describe(found.drift)}")
        state.alarms += 1


def predictions(found: Findings, served: pd.DataFrame) -> None:
    """PSI of the window's predicted values against the baseline's (classification: reported only)."""
    baseline = found.state.baseline_predictions
    if served.empty or not baseline or "prediction" not in served:
        return
    counts = served["prediction"].astype(str).value_counts().to_dict()
    found.metrics["monitor.prediction_psi"] = detect.psi_of_counts(baseline, counts)
