"""The step harness: everything a step process does around its recipe.

A step module is a recipe `def run(ctx: StepContext) -> None` handed to `step_main`, which
parses the entry point's arguments, composes the config, opens the run (`run.lifecycle`),
resolves the upstream run, tags the run with its lineage and cache key (the same key the
driver looks up: `pipeline.cache`, `pipeline.key_inputs`), runs the recipe under the resource
watchdog and logs the report card, on failure too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from typing import Callable

import mlflow
from mlflow.entities import Run
from omegaconf import DictConfig

from mlpipe.config import check_identity, compose, shell_unquoted, split_overrides
from mlpipe.errors import PipelineError, one_line
from mlpipe.pipeline import cache, key_inputs, summary
from mlpipe.pipeline.spec import StepSpec, spec_of
from mlpipe.reports import cards
from mlpipe.run import frames, handoff, lifecycle, monitor, processes
from mlpipe.run.context import StepContext, log_card
from mlpipe.run.outputs import (CONFIG_DIGEST_TAG, KEY_INPUT_TAG, KEY_TAG, LINEAGE_PREFIX, MEMBER_TAG,
                                LOOP_ORIGIN_TAG, MONITOR_WARNING_TAG, PROCESS_TAG, STEP_TAG, TEAM_TAG,
                                lineage_tag)

# The run name a step's run gets when it is opened without one (tests name their runs).
RUN_NAME_ENV = "MLPIPE_RUN_NAME"


def parse_args(step: str, extra: tuple[str, ...]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m steps.{step}")
    parser.add_argument("--overrides", default="", help="Hydra overrides, one string")
    spec = spec_of(step)
    if spec.upstream_param:
        parser.add_argument(f"--{spec.upstream_param.replace('_', '-')}", dest=spec.upstream_param, default="")
    for name in extra:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default="")
    return parser.parse_args(shell_unquoted(sys.argv[1:]))


def _compose(overrides: str) -> tuple[DictConfig | None, PipelineError | None]:
    """Composed before the run opens (system metrics are switched on when it does); a bad config
    is raised inside the run, so it still ends FAILED with its one-line message."""
    try:
        return compose(split_overrides(overrides)), None
    except PipelineError as exc:
        return None, exc


def step_main(step: str, recipe: Callable[[StepContext], None], *, extra_params: tuple[str, ...] = (),
              cacheable: Callable[[DictConfig], bool] | None = None) -> None:
    """Run one step: everything but the recipe itself happens here.

    What the step depends on beyond its config, code and upstream run (ingest: the data's
    digest; qa: the champion and the drift batch) comes from `key_inputs.KEY_INPUTS`."""
    frames.return_freed_memory()
    processes.stop_with_parent()
    lifecycle.prepare_process()
    args = parse_args(step, extra_params)
    params = dict(vars(args))
    started = time.monotonic()
    cfg, config_error = _compose(args.overrides)
    alone = not os.environ.get(lifecycle.QUIET_ENV)  # not under the driver, which reports for it
    if alone and cfg is not None and cfg.main.log == "quiet":
        _quiet_mlflow(cfg)
    # warm: forked by the driver's warm helper (pipeline/warm.py); own: a process of its own
    tags = {STEP_TAG: step, PROCESS_TAG: "own" if processes.WARM_PARENT is None else "warm"}
    with lifecycle.open_run(step, cfg, tags=tags, params=params, config_error=config_error, started=started,
                            system_metrics=bool(cfg is not None and cfg.monitor.system_metrics),
                            check_location=True, run_name=os.environ.get(RUN_NAME_ENV) or None) as opened:
        check_identity(step, cfg)
        spec = spec_of(step)
        upstream = _upstream(opened, spec, params)
        extra = key_inputs.key_input(step, opened.client, cfg, upstream)
        mlflow.set_tags(_identity_tags(step, cfg, opened, params, extra, cacheable))
        ctx = StepContext(step, cfg, params, opened.client.get_run(opened.run_id), upstream, opened.client,
                          key_input=extra, card=cards.Card(step), started=started)
        ctx.card.inputs.update({k: v for k, v in params.items() if v and k != "overrides"})
        if args.overrides:
            ctx.card.inputs["overrides"] = args.overrides
        _run_recipe(ctx, recipe, monitor.Limits.from_config(opened.config["monitor"]))
    if alone:  # what `main` prints as the step ends (a failure said its one line and exited above)
        run = opened.client.get_run(opened.run_id)
        print(summary.step_line(summary.result_of(step, run, "ran", time.monotonic() - started)), flush=True)


def _quiet_mlflow(cfg: DictConfig) -> None:
    """main.log=quiet for a step run alone, as `main` has it for its steps: MLflow's INFO and
    WARNING lines (system metrics, the pickle advice) and its download progress bars left out."""
    import logging

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    lifecycle.quiet_downloads(cfg)


def _upstream(opened: lifecycle.Opened, spec: StepSpec, params: dict[str, str]) -> Run | None:
    """The upstream run given by id (else the newest finished one), its lineage copied over."""
    if not spec.upstream_param:
        return None
    upstream = handoff.resolve_upstream(opened.client, opened.run.info.experiment_id, spec.upstream,
                                        params[spec.upstream_param])
    params[spec.upstream_param] = upstream.info.run_id
    mlflow.set_tags({**handoff.lineage(upstream), f"pipeline.{spec.upstream_param}": upstream.info.run_id})
    return upstream


def _identity_tags(step: str, cfg: DictConfig, opened: lifecycle.Opened, params: dict[str, str], extra: str | None,
                   cacheable: Callable[[DictConfig], bool] | None) -> dict[str, str]:
    """What the run is: its config slice's digest, its lineage entry, its code's digest, its
    author under a team, and the cache key the driver looks it up by."""
    config = opened.config
    tags = {CONFIG_DIGEST_TAG: cache.config_digest(step, config),
            lineage_tag(step): opened.run_id,
            f"{LINEAGE_PREFIX}{step}_code_digest": cache.code_digest(step)}
    if cfg.team.name and cfg.team.member:  # the author of every run, under a team (conf/team)
        tags |= {TEAM_TAG: cfg.team.name, MEMBER_TAG: cfg.team.member}
    if cfg.loop.origin:  # started by the loop's retrain (docs/loop.md)
        tags[LOOP_ORIGIN_TAG] = str(cfg.loop.origin)
    if extra:
        tags[KEY_INPUT_TAG] = extra
    if cacheable is None or cacheable(cfg):
        tags[KEY_TAG] = cache.step_key(step, config, params, extra)
    return tags


def _run_recipe(ctx: StepContext, recipe: Callable[[StepContext], None], limits: monitor.Limits) -> None:
    """The recipe under the resource watchdog; the card is logged whatever the outcome."""
    watchdog = monitor.Watchdog(ctx.step, limits, ctx.started)
    try:
        with watchdog:
            recipe(ctx)
            watchdog.final_check()
    except KeyboardInterrupt:
        log_card(ctx, "KILLED", "interrupted")
        raise
    except Exception as exc:
        log_card(ctx, "FAILED", f"{type(exc).__name__}: {one_line(exc)}")
        raise
    else:
        log_card(ctx, "FINISHED", None)
    finally:
        if watchdog.warnings:
            mlflow.set_tag(MONITOR_WARNING_TAG, "; ".join(watchdog.warnings.values()))
        shutil.rmtree(ctx.workdir, ignore_errors=True)
