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
    importance: list[list] | None = None  # [column, on the training rows, on the served rows, change]
    importance_note: str = ""  # how it was measured, or why it was not


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


def importances(client, seen: Look, cfg, target: str) -> None:
    """Permutation importance (quality/importance.py) of the watched model on its training rows
    and on its newest labelled served rows, compared column by column, onto `seen`."""
    from mlpipe.loop import retrain
    from mlpipe.quality import importance
    from mlpipe.registry import provenance

    icfg, watched, scfg = cfg.loop.importance, seen.watched, cfg.serve
    served = retrain.labelled(target, scfg.experiment, watched.version, scfg.records_timeout_s, icfg.rows)
    if len(served) < int(icfg.min_rows):
        seen.importance_note = (f"importance: {len(served)} labelled served rows, fewer than "
                                f"loop.importance.min_rows={int(icfg.min_rows)}: not compared")
        return
    columns = list(watched.reference.columns)
    missing = [c for c in columns if c not in served.columns]
    if missing:
        seen.importance_note = f"importance: the server did not keep {', '.join(missing)} (serve.inputs): not compared"
        return
    model = window.model(client, watched, provenance.trust_for(client, cfg.trust), cfg.runtime, cfg.serialization,
                         list(cfg.skops_trusted_types))
    train = window.training_rows(client, watched, cfg.data.target, int(icfg.rows), int(cfg.seed))
    labels = served["label"].infer_objects().to_numpy()  # the records' JSON values: ints, floats or strings
    served = served[columns].astype(watched.reference.dtypes.to_dict(), errors="ignore")
    before = importance.permutation(model.predict, train[columns], train[cfg.data.target], watched.task,
                                    int(icfg.repeats), int(cfg.seed))
    after = importance.permutation(model.predict, served, labels, watched.task, int(icfg.repeats), int(cfg.seed))
    seen.importance = importance.compared(before, after)
    seen.importance_note = (f"the drop in {before[0]['score'] if before else 'score'} when a column is shuffled: "
                            f"{len(train)} training rows vs the newest {len(served)} labelled served rows")


def fill_card(card, seen: Look, records: str, outcomes: dict[str, Any]) -> None:
    """The monitor's card: what it watched, the drift table, what it did not decide, its outcomes."""
    found, watched = seen.found, seen.watched
    card.inputs.update({"model": f"{watched.name}@{watched.alias} (version {watched.version}, {watched.task})",
                        "records": records, "state": seen.how, "previous monitor run": seen.previous or "none"})
    card.add_table("Input drift on the served rows since the last test, worst first",
                   ["column", "test", "p", "PSI", "rows", "drifted"],
                   [[d.column, d.test, d.p_value, d.psi, d.rows, d.drifted]
                    for d in sorted(found.drift, key=lambda d: -d.psi)])
    if seen.importance:
        card.add_table(f"Permutation importance, {seen.importance_note}; largest change first",
                       ["column", "training", "served", "change"], seen.importance)
    notes = found.notes + ([seen.importance_note] if seen.importance is None and seen.importance_note else [])
    card.add_table("What was not decided", ["note"], [[note] for note in notes])
    card.outputs.update({"trigger": bool(seen.reason), "reason": seen.reason or "none", **outcomes,
                         "alarms (all rules)": "; ".join(f"{k}: {v}" for k, v in found.alarms.items()) or "none"})
