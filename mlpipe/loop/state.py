"""What one monitor run hands the next (the tag `loop.state` of its run, JSON): the model version
it watched, how far it read the records, the baseline and the CUSUM's statistic, how many input
drift tests it spent. A new champion starts a new state: a new baseline, a fresh alpha budget."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

STATE_TAG = "loop.state"


@dataclass
class State:
    model: str  # the registered model
    version: str  # the version watched (the alias's when the run started)
    request_cursor: int = 0  # records: the id of the last request whose rows an input test read
    feedback_cursor: int = 0  # records: the id of the last label set the performance rule read
    baseline_rows: int = 0  # labelled rows of this version that set its baseline error rate
    baseline_errors: int = 0
    baseline_predictions: dict = field(default_factory=dict)  # predicted value -> count in the baseline
    cusum: float = 0.0  # the CUSUM's statistic after the last row read
    cusum_rows: int = 0  # rows the CUSUM has read since its last restart
    cusum_zero_id: int = 0  # records: the label set after which the statistic was last 0 (where a change began)
    drift_tests: int = 0  # input drift tests spent on this version (the k of alpha_k)
    # where the first alarm on this version said the change began (records ids): a later trigger
    # on the same version (its retrain failed the gate, its challenger lost) retrains from there too
    change_feedback: int | None = None  # the label set after which the performance change began
    change_request: int | None = None  # the request after which the first drifted window began
    alarms: int = 0  # alarms raised on this version
    runs: int = 0  # monitor runs on this version

    def to_tag(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_tag(cls, text: str | None) -> "State | None":
        if not text:
            return None
        try:
            return cls(**json.loads(text))
        except (ValueError, TypeError):
            return None  # a state written by another version of this code: start afresh


def carried(previous: State | None, model: str, version: str) -> tuple[State, str]:
    """The state this run starts from, and why: the previous run's when it watched this very
    version, else a new one (the first run, or the champion changed since)."""
    if previous is None:
        return State(model, version), "first run on this model: a new baseline"
    if previous.model != model or previous.version != str(version):
        return State(model, version), (f"the watched version changed ({previous.model} v{previous.version} -> "
                                       f"v{version}): a new baseline")
    return previous, f"carried from the previous run (run {previous.runs} on v{version})"
