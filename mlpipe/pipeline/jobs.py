"""One pipeline job: the body of the Hydra app behind `main`, alone or as one job of a sweep;
the preflight check of its command line; and `drive`, the one way a Driver is run and its
summary logged and printed (a pipeline, a sweep job, a sweep's shared steps and its end)."""

from __future__ import annotations

import argparse
import json
import os
import socket

import mlflow
from hydra.core.hydra_config import HydraConfig
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from mlpipe.config import shell_unquoted, split_overrides
from mlpipe.pipeline import backends, summary
from mlpipe.pipeline.driver import Driver
from mlpipe.pipeline.spec import AFTER_SWEEP, select_steps
from mlpipe.pipeline.warm import control as warm
from mlpipe.run import lifecycle, storage
from mlpipe.run.outputs import (ERROR_MESSAGE_TAG, JOB_PROCESS_TAG, LOOP_ORIGIN_TAG, NODE_TAG, OVERRIDES_TAG,
                                ROLE_TAG, SCORE_METRIC, SweepJob, SweepJobOutput)

NODE_ENV = "MLPIPE_NODE"  # set in the job's Ray worker by hydra_plugins/mlpipe_ray_launcher
SWEEP_ENV = "MLPIPE_SWEEP_RUN_ID"  # set by the sweep callback: this process runs jobs of that sweep
EXPERIMENT_TAG = "pipeline.experiment_id"  # where the steps ran, when not the driver's experiment


def hydra_argv(argv: list[str]) -> list[str]:
    """`--steps=train,qa --overrides="-m a=1,2"` (from MLproject) -> Hydra's own command line."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--steps", default=None)
    parser.add_argument("--overrides", default=None)
    known, rest = parser.parse_known_args(shell_unquoted(argv[1:]))
    if known.steps is None and known.overrides is None:
        return argv
    out = [argv[0], *rest, *split_overrides(known.overrides)]
    if known.steps and known.steps != "all":
        names = [s.strip() for s in known.steps.split(",") if s.strip()]
        out.append(f"main.steps=[{','.join(names)}]")
    return out


def drive(cfg, overrides: list[str], run_id: str, experiment_id: str, steps: list[str], *,
          env_run_id: str | None = None, outputs: dict[str, Run] | None = None, cards_path: str = "cards",
          summary_name: str = "pipeline_summary", title: str | None = None) -> dict[str, Run]:
    """Run `steps` with a Driver under the run `run_id` (their parent: it must be this process's
    active run), log the summary table in that run and print it; each step's run. The steps get
    main.env_manager, else the env manager of the run `env_run_id` (the driver's own)."""
    client = MlflowClient()
    env_manager = backends.env_manager_for(cfg, client, env_run_id or run_id)
    pipeline = Driver(cfg, overrides, run_id, experiment_id, env_manager)
    pipeline.cards_path = cards_path
    results, outputs = pipeline.run(steps, outputs)
    summary.log_summary(client, run_id, results, summary_name)
    print((f"{title}:\n" if title else "") + summary.format_table(results), flush=True)
    return outputs


def run_job(cfg: DictConfig, overrides: list[str] | None = None) -> float | None:
    """Run the selected steps; in a sweep, defer register/serve to the sweep's end. `overrides`:
    the command line's, for a pipeline run without Hydra's app (else Hydra's task overrides)."""
    lifecycle.prepare_process()
    sweep_run_id = os.environ.get(SWEEP_ENV)
    # One step shares nothing with another step process: its own process imports what the helper would.
    warm.ensure(bool(cfg.main.warm_steps) and (bool(sweep_run_id) or len(select_steps(cfg.main.steps)) > 1))
    lifecycle.quiet_downloads(cfg)
    overrides = list(HydraConfig.get().overrides.task) if overrides is None else overrides
    if sweep_run_id:
        return _sweep_job(cfg, overrides, sweep_run_id)
    tags = {ROLE_TAG: "pipeline", OVERRIDES_TAG: json.dumps(overrides)} \
        | ({LOOP_ORIGIN_TAG: str(cfg.loop.origin)} if cfg.loop.origin else {})
    with lifecycle.open_run("main", cfg, tags=tags, run_name=None) as opened:
        opened.client.update_run(opened.run_id, name=summary.run_name("main", cfg, opened.run.info.start_time / 1000))
        # storage=s3: the steps run in the experiment whose artifact location is the bucket.
        experiment_id = storage.ensure_experiment(opened.client, opened.config["storage"]) \
            or opened.run.info.experiment_id
        if experiment_id != opened.run.info.experiment_id:
            mlflow.set_tag(EXPERIMENT_TAG, experiment_id)
        outputs = drive(cfg, overrides, opened.run_id, experiment_id, select_steps(cfg.main.steps))
        score = summary.score_of(outputs)
        if score:
            mlflow.log_metric(SCORE_METRIC, score[1])
            return score[1]
    return None


class FailedJob:
    """What a failed sweep job returns to its sweeper instead of a score. Optuna's sweeper records
    the trial as FAIL (float() of it raises, with the reason) and goes on; the basic sweeper does
    not read returns. A NaN would not do: Optuna 2.10 refuses it, and the sweeper then crashes."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __float__(self) -> float:
        raise ValueError(self.reason)

    def __repr__(self) -> str:
        return f"failed job: {self.reason}"


def _sweep_job(cfg: DictConfig, overrides: list[str], sweep_run_id: str) -> float | FailedJob:
    client = MlflowClient()
    sweep = client.get_run(sweep_run_id)
    job_num = HydraConfig.get().job.num
    steps = [s for s in select_steps(cfg.main.steps) if s not in AFTER_SWEEP]
    job = SweepJob(sweep_run_id=sweep_run_id, job_num=job_num, overrides=json.dumps(overrides))
    tags = {ROLE_TAG: "sweep-job", **job.tags(), JOB_PROCESS_TAG: f"{socket.gethostname()}:{os.getpid()}",
            **({NODE_TAG: os.environ[NODE_ENV]} if NODE_ENV in os.environ else {})}  # hydra/launcher=ray
    # A PipelineError ends this job's run FAILED and leaves it out of the choice; the sweep goes on.
    with lifecycle.open_run(f"job-{job_num}", cfg, contain=True, tags=tags, experiment_id=sweep.info.experiment_id,
                            parent_run_id=sweep_run_id, run_name=f"job-{job_num}") as opened:
        run_id = opened.run_id
        outputs = drive(cfg, overrides, run_id, sweep.info.experiment_id, steps, env_run_id=sweep_run_id,
                        title=f"job {job_num} ({' '.join(overrides)})")
        score = summary.score_of(outputs)
        if score:
            mlflow.set_tags(SweepJobOutput(qa_run_id=outputs["qa"].info.run_id, score_metric=score[0]).tags())
            mlflow.log_metric(SCORE_METRIC, score[1])
            return score[1]
    ended = client.get_run(run_id)
    return FailedJob(ended.data.tags.get(ERROR_MESSAGE_TAG) or f"job {job_num} ({ended.info.status}) has no qa score")


def preflight(argv: list[str]) -> DictConfig | None:
    """Check the command line's config before anything runs, so a bad override ends the
    driver's run FAILED with one clear line (Hydra alone prints a multi-line report). For a plain
    command line (one pipeline: no Hydra flag, no sweep, no Hydra key), the composed config:
    the driver runs it without Hydra's app, which would compose it again (twice) and write an
    output folder nothing reads. None: Hydra runs the command line."""
    from mlpipe.config import validate_cli
    from mlpipe.errors import ConfigError

    try:
        cfg, plain = validate_cli([arg for arg in argv[1:] if arg.strip()])
        select_steps(cfg.main.steps)  # contiguous, known: refused here, not after the helper started
    except ConfigError as exc:
        lifecycle.prepare_process()
        with lifecycle.open_run("main", None, tags={ROLE_TAG: "pipeline"}, config_error=exc):
            pass
    return cfg if plain else None
