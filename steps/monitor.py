"""monitor: what the server answered for `loop.model`@`loop.alias` since the previous monitor run
(docs/loop.md): input drift per column against the training reference, prediction drift, and
accuracy on the labelled rows, each decided by a rule whose false-alarm rate holds however often
it runs (mlpipe/loop/detect.py). A raised trigger is the tag loop.trigger=true and its reason."""

from pathlib import Path

from mlpipe.loop import state as states
from mlpipe.loop import retrain, watch, window
from mlpipe.pipeline.harness import step_main
from mlpipe.run import handoff, outputs
from mlpipe.run.context import StepContext
from mlpipe.serving import abreport
from mlpipe.serving.records.db import display

PROJECT = str(Path(__file__).resolve().parents[1])  # the project a retrain's `mlflow run` runs


def run(ctx: StepContext) -> None:
    lcfg, scfg = ctx.cfg.loop, ctx.cfg.serve
    watched = window.watched(ctx.client, lcfg.model, lcfg.alias)
    target = abreport.records_path(ctx.section("serve"), ctx.tracking_uri)
    before = handoff.newest_finished_run(ctx.client, ctx.run.info.experiment_id,
                                         {outputs.STEP_TAG: "monitor", "loop.model": watched.name})
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
    reason = found.trigger(list(lcfg.trigger))
    retrained = _retrain(ctx, watched, target, found) if reason and lcfg.retrain.enabled else None

    ctx.card.inputs.update({"model": f"{watched.name}@{watched.alias} (version {watched.version}, {watched.task})",
                            "records": f"{display(target)}, experiment {scfg.experiment}", "state": how,
                            "previous monitor run": before.info.run_id if before else "none"})
    ctx.card.add_table("Input drift on the served rows since the last test, worst first",
                       ["column", "test", "p", "PSI", "rows", "drifted"],
                       [[d.column, d.test, d.p_value, d.psi, d.rows, d.drifted]
                        for d in sorted(found.drift, key=lambda d: -d.psi)])
    ctx.card.add_table("What was not decided", ["note"], [[note] for note in found.notes])
    ctx.card.outputs.update({"trigger": bool(reason), "reason": reason or "none",
                             "retrain": retrained.line if retrained else "none",
                             "alarms (all rules)": "; ".join(f"{k}: {v}" for k, v in found.alarms.items()) or "none"})
    ctx.log_metrics(found.metrics)
    ctx.set_tags({"loop.model": watched.name, "loop.version": watched.version,
                  "loop.trigger": str(bool(reason)).lower(),
                  "loop.reason": reason or "", states.STATE_TAG: found.state.to_tag()}
                 | ({"loop.retrain_run_id": retrained.run_id or "", "loop.challenger": retrained.challenger or ""}
                    if retrained else {}))
    ctx.summary(f"{watched.name} v{watched.version}: " + (f"TRIGGER: {reason}" if reason else "no trigger")
                + f"; {len(labels)} labelled rows, {len(served)} served rows read"
                + (f"; {retrained.line}" if retrained else ""))


def _retrain(ctx: StepContext, watched, target: str, found) -> retrain.Outcome:
    """The labelled rows served since the change began, as a snapshot logged to this run, then `main` on them."""
    rcfg, scfg = ctx.cfg.loop.retrain, ctx.cfg.serve
    served = retrain.labelled(target, scfg.experiment, watched.version, scfg.records_timeout_s, rcfg.rows,
                              found.changed_after_feedback, found.drifted_after_request)
    if len(served) < rcfg.min_rows:
        return retrain.Outcome(None, None, f"no retrain: {len(served)} labelled served rows, fewer than "
                                           f"loop.retrain.min_rows={rcfg.min_rows}")
    path, tags = retrain.snapshot(served, watched.reference, ctx.cfg.data.target, rcfg.snapshot_dir)
    ctx.log_files([path], "loop")
    ctx.set_tags(tags)
    command = retrain.command(PROJECT, ctx.params.get("overrides") or "", path, rcfg, watched.name,
                              ctx.cfg.data.name, ctx.run_id)
    ctx.card.inputs["retrain"] = f"mlflow run . -e main -P overrides=\"{command.overrides}\""
    return retrain.run(ctx.client, command, PROJECT, rcfg.timeout_s, ctx.run_id, watched.name,
                       ctx.cfg.registry.challenger_alias, ctx.run.info.experiment_id)


if __name__ == "__main__":
    step_main("monitor", run, cacheable=lambda cfg: False)
