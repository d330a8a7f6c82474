"""monitor: one tick of the closed loop (docs/loop.md). A canaried challenger is decided first
(promoted or rolled back by the sequential A/B test, or left to collect labels); then what the
server answered for `loop.model`@`loop.alias` since the previous monitor run is judged: input
drift, prediction drift, accuracy on the labels, by rules whose false-alarm rates hold however
often it runs (mlpipe/loop/detect.py). A raised trigger (tag loop.trigger) retrains on the rows
served since the change and registers a challenger, unless one is being canaried."""

from pathlib import Path

from mlpipe.loop import canary, retrain, tick, window
from mlpipe.loop.state import STATE_TAG
from mlpipe.pipeline.harness import step_main
from mlpipe.registry import provenance
from mlpipe.run.context import StepContext
from mlpipe.serving import abreport
from mlpipe.serving.records.db import display

PROJECT = str(Path(__file__).resolve().parents[1])  # the project a retrain's `mlflow run` runs


def run(ctx: StepContext) -> None:
    lcfg, scfg, rcfg = ctx.cfg.loop, ctx.cfg.serve, ctx.cfg.registry
    target = abreport.records_path(ctx.section("serve"), ctx.tracking_uri)
    tags, lines, outcomes = {}, [], {}
    challenger = canary.pending(ctx.client, lcfg.model, rcfg.challenger_alias)
    if challenger is not None:
        decision = canary.decide(ctx.client, challenger, target, scfg.experiment, ctx.section("serve")["ab"],
                                 window.task_of(ctx.client, challenger) or "classification", scfg.records_timeout_s,
                                 lcfg.canary.max_rows)
        tags |= canary.act(ctx.client, decision, target, scfg.experiment, lcfg.model, rcfg,
                           provenance.trust_for(ctx.client, ctx.cfg.trust), scfg.records_timeout_s)
        lines.append(decision.line)
        outcomes["canary"] = decision.line
        challenger = challenger if decision.action == "wait" else None
    seen = tick.look(ctx.client, lcfg, scfg, target, ctx.run.info.experiment_id)
    if lcfg.importance.enabled:
        tick.importances(ctx.client, seen, ctx.cfg, target)
    if seen.reason and lcfg.retrain.enabled:
        retrained = _retrain(ctx, seen, target) if challenger is None else retrain.Outcome(
            None, None, f"no retrain: challenger v{challenger.version} is still being canaried")
        tags |= {"loop.retrain_run_id": retrained.run_id or "", "loop.challenger": retrained.challenger or ""}
        lines.append(retrained.line)
        outcomes["retrain"] = retrained.line
    watched = seen.watched
    tick.fill_card(ctx.card, seen, f"{display(target)}, experiment {scfg.experiment}", outcomes)
    ctx.log_metrics(seen.found.metrics)
    ctx.set_tags(tags | {"loop.model": watched.name, "loop.version": watched.version,
                         "loop.trigger": str(bool(seen.reason)).lower(), "loop.reason": seen.reason or "",
                         STATE_TAG: seen.found.state.to_tag()})
    ctx.summary("; ".join([f"{watched.name} v{watched.version}: " + (f"TRIGGER: {seen.reason}" if seen.reason
                                                                      else "no trigger")
                           + f"; {seen.labelled} labelled rows, {seen.served} served rows read", *lines]))


def _retrain(ctx: StepContext, seen: tick.Look, target: str) -> retrain.Outcome:
    """The labelled rows served since the change began, as a snapshot logged to this run, then `main` on them."""
    rcfg, scfg, watched, found = ctx.cfg.loop.retrain, ctx.cfg.serve, seen.watched, seen.found
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
    return retrain.run(ctx.client, command, PROJECT, rcfg.timeout_s, ctx.run_id, watched.name,
                       ctx.cfg.registry.challenger_alias, ctx.run.info.experiment_id)


if __name__ == "__main__":
    step_main("monitor", run, cacheable=lambda cfg: False)
