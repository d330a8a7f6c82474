"""One pipeline job: the body of the Hydra app behind `main`, alone or as one job of a sweep."""

from __future__ import annotations

import json
import os

import mlflow
from hydra.core.hydra_config import HydraConfig
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from mlpipe.config import to_container
from mlpipe.pipeline import driver
from mlpipe.pipeline.spec import AFTER_SWEEP, select_steps
from mlpipe.run import storage, warm
from mlpipe.run.harness import ERROR_MESSAGE_TAG, absolute_tracking_uri, guarded_run, log_config

NODE_ENV = "MLPIPE_NODE"  # set in the job's Ray worker by hydra_plugins/mlpipe_ray_launcher


def run_job(cfg: DictConfig) -> float | None:
    """Run the selected steps; in a sweep, defer register/serve to the sweep's end."""
    absolute_tracking_uri()
    warm.ensure(bool(cfg.main.warm_steps))
    driver.quiet_downloads(cfg)
    overrides = list(HydraConfig.get().overrides.task)
    sweep_run_id = os.environ.get(driver.SWEEP_ENV)
    if sweep_run_id:
        return _sweep_job(cfg, overrides, sweep_run_id)
    config = to_container(cfg)
    storage.apply_client_settings(config["storage"])
    with guarded_run("main", run_name=None) as active:
        client = MlflowClient()
        mlflow.set_tags({driver.ROLE_TAG: "pipeline", "pipeline.overrides": json.dumps(overrides)})
        run = client.get_run(active.info.run_id)
        storage.prepare(client, run, config["storage"], "main", mlflow.get_tracking_uri())
        log_config(cfg, config, {}, run)
        steps = select_steps(cfg.main.steps)
        env_manager = driver.env_manager_for(cfg, client, run.info.run_id)
        # storage=s3: the steps run in the experiment whose artifact location is the bucket.
        experiment_id = storage.ensure_experiment(client, config["storage"]) or run.info.experiment_id
        if experiment_id != run.info.experiment_id:
            mlflow.set_tag("pipeline.experiment_id", experiment_id)
        pipeline = driver.Driver(cfg, overrides, run.info.run_id, experiment_id, env_manager)
        results, outputs = pipeline.run(steps)
        driver.log_summary(client, run.info.run_id, results)
        print(driver.format_table(results))
        score = driver.score_of(outputs)
        if score:
            mlflow.log_metric(driver.SCORE_METRIC, score[1])
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
    with guarded_run(f"job-{job_num}", contain=True,
                     experiment_id=sweep.info.experiment_id, parent_run_id=sweep_run_id, run_name=f"job-{job_num}",
                     tags={driver.ROLE_TAG: "sweep-job", driver.SWEEP_TAG: sweep_run_id,
                           "pipeline.overrides": json.dumps(overrides), "pipeline.job_num": str(job_num),
                           # the Ray node that ran it (hydra/launcher=ray)
                           **({"pipeline.node": os.environ[NODE_ENV]} if NODE_ENV in os.environ else {})}) as active:
        # A PipelineError ends this job's run FAILED and leaves it out of the choice; the sweep goes on.
        run_id = active.info.run_id
        log_config(cfg, to_container(cfg), {}, client.get_run(run_id))
        env_manager = driver.env_manager_for(cfg, client, sweep_run_id)
        pipeline = driver.Driver(cfg, overrides, run_id, sweep.info.experiment_id, env_manager)
        results, outputs = pipeline.run(steps)
        driver.log_summary(client, run_id, results)
        print(f"job {job_num} ({' '.join(overrides)}):\n{driver.format_table(results)}")
        score = driver.score_of(outputs)
        if "qa" in outputs:
            mlflow.set_tag("pipeline.qa_run_id", outputs["qa"].info.run_id)
        if score:
            mlflow.set_tag("pipeline.score_metric", score[0])
            mlflow.log_metric(driver.SCORE_METRIC, score[1])
            return score[1]
    job = client.get_run(run_id)
    return FailedJob(job.data.tags.get(ERROR_MESSAGE_TAG) or f"job {job_num} ({job.info.status}) has no qa score")


def preflight(argv: list[str]) -> None:
    """Check the command line's config before Hydra runs it, so a bad override ends the
    driver's run FAILED with one clear line (Hydra alone prints a multi-line report)."""
    from mlpipe.config import validate_cli
    from mlpipe.errors import ConfigError

    if not [arg for arg in argv[1:] if arg.strip()]:
        return  # no command line: the config files alone (tests/unit/test_config.py composes them)
    try:
        validate_cli(argv[1:])
    except ConfigError as exc:
        absolute_tracking_uri()
        with guarded_run("main"):
            mlflow.set_tag(driver.ROLE_TAG, "pipeline")
            raise exc
