"""One monitor run's reading and judging, without writing anything (the step writes): the watched
model and the state the previous monitor run handed on, what arrived since, the findings; and
the card's sections for it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlpipe.loop import state as states
from mlpipe.loop import watch, window
from mlpipe.run import handoff, outputs


@dataclass
class Look:
    watched: window.Watched
    previous: str | None  # the previous monitor run on the model, if any
    how: str  # where the state came from
    found: watch.Findings
    labelled: int  # labelled rows read
    served: int  # served rows read
    reason: str | None  # the raised trigger, or None


def look(client, lcfg, scfg, target: str, experiment_id: str) -> Look:
    """Reads what arrived for `loop.model`@`loop.alias` since the previous monitor run and judges it."""
    watched = window.watched(client, lcfg.model, lcfg.alias)
    before = handoff.newest_finished_run(client, experiment_id, {outputs.STEP_TAG: "monitor",
                                                                 "loop.model": watched.name})
    start, how = states.carried(states.State.from_tag(before.data.tags.get(states.STATE_TAG)) if before else None,
                                watched.name, watched.version)
    found = watch.Findings(start)
    labels = window.new_labels(target, scfg.experiment, watched.version, start.feedback_cursor,
                               scfg.records_timeout_s, lcfg.max_requests)
    served, last_id = window.served_rows(target, scfg.experiment, watched.version, start.request_cursor,
                                         scfg.records_timeout_s, lcfg.max_requests)
    watch.performance(found, labels, watched.task, lcfg.performance)
    watch.inputs(found, served, last_id, watched.profile, watched.reference, lcfg.inputs)
    watch.predictions(found, served)
    found.state.runs += 1
    return Look(watched, before.info.run_id if before else None, how, found, len(labels), len(served),
                found.trigger(list(lcfg.trigger)))


def fill_card(card, seen: Look, records: str, outcomes: dict[str, Any]) -> None:
    """The monitor's card: what it watched, the drift table, what it did not decide, its outcomes."""
    found, watched = seen.found, seen.watched
    card.inputs.update({"model": f"{watched.name}@{watched.alias} (version {watched.version}, {watched.task})",
                        "records": records, "state": seen.how, "previous monitor run": seen.previous or "none"})
    card.add_table("Input drift on the served rows since the last test, worst first",
                   ["column", "test", "p", "PSI", "rows", "drifted"],
                   [[d.column, d.test, d.p_value, d.psi, d.rows, d.drifted]
                    for d in sorted(found.drift, key=lambda d: -d.psi)])
    card.add_table("What was not decided", ["note"], [[note] for note in found.notes])
    card.outputs.update({"trigger": bool(seen.reason), "reason": seen.reason or "none", **outcomes,
                         "alarms (all rules)": "; ".join(f"{k}: {v}" for k, v in found.alarms.items()) or "none"})
