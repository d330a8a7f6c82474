"""Hydra sweeps of the whole pipeline: one sweep parent run, one nested pipeline run per job.

Jobs share ingest/preprocess through the step cache. register and serve run once, after every
job has finished, for the best job only: jobs never race for the champion alias.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import traceback

import mlflow
from hydra.experimental.callback import Callback
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from mlpipe.errors import PipelineError, StepFailedError
from mlpipe.pipeline import driver
from mlpipe.pipeline.spec import AFTER_SWEEP, select_steps
from mlpipe.quality import metric_names
from mlpipe.run.harness import absolute_tracking_uri, terminate


class SweepCallback(Callback):
    """Opens the sweep parent before the jobs; picks the best job and finishes the sweep after."""

    def __init__(self) -> None:
        self.sweep_run_id: str | None = None
        self.owns_run = False

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        absolute_tracking_uri()
        client = MlflowClient()
        # Inside `mlflow run`, the project run is the sweep parent; jobs must not resume it.
        run_id = os.environ.pop("MLFLOW_RUN_ID", None)
        if run_id is None:
            experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID") or _experiment_id()
            run_id = client.create_run(experiment_id, run_name="sweep").info.run_id
            self.owns_run = True
        run = client.get_run(run_id)
        os.environ["MLFLOW_EXPERIMENT_ID"] = run.info.experiment_id
        client.set_tag(run_id, driver.ROLE_TAG, "sweep")
        os.environ[driver.SWEEP_ENV] = self.sweep_run_id = run_id
        print(f"[mlpipe] sweep run {run_id}", file=sys.stderr)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        # Hydra turns a callback's exception into a warning: end the process ourselves.
        try:
            finish_sweep(config, self.sweep_run_id)
        except Exception as exc:
            if not isinstance(exc, PipelineError):
                traceback.print_exc()
            terminate(self.sweep_run_id, "sweep", exc)
            sys.exit(getattr(exc, "exit_code", 1))
        if self.owns_run:
            terminate(self.sweep_run_id, "sweep")


def _experiment_id() -> str:
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME")
    return mlflow.set_experiment(name).experiment_id if name else "0"


def best_job(jobs: list, greater_is_better: bool):
    """The FINISHED job with the best score; ties go to the earliest job."""
    scored = [j for j in jobs if j.info.status == "FINISHED"
              and not math.isnan(j.data.metrics.get(driver.SCORE_METRIC, math.nan))]
    if not scored:
        return None
    scored.sort(key=lambda j: int(j.data.tags.get("pipeline.job_num", "0")))
    pick = max if greater_is_better else min
    return pick(scored, key=lambda j: j.data.metrics[driver.SCORE_METRIC])


def finish_sweep(config: DictConfig, sweep_run_id: str) -> None:
    client = MlflowClient()
    sweep = client.get_run(sweep_run_id)
    jobs = client.search_runs([sweep.info.experiment_id],
                              filter_string=f"tags.`{driver.SWEEP_TAG}` = '{sweep_run_id}'",
                              order_by=["attributes.start_time ASC"], max_results=10000)
    metric = next((j.data.tags["pipeline.score_metric"] for j in jobs if "pipeline.score_metric" in j.data.tags), None)
    rows = [f"{j.data.tags.get('pipeline.job_num', '?'):>4}  {j.info.run_id}  {j.info.status:<8}  "
            f"{j.data.metrics.get(driver.SCORE_METRIC, float('nan')):.4f}  {' '.join(driver.overrides_of(j))}"
            for j in jobs]
    print(f"sweep {sweep_run_id}: {len(jobs)} jobs, scored on {metric}\n" + "\n".join(rows))
    client.log_text(sweep_run_id, "\n".join(rows) + "\n", "sweep_jobs.txt")
    client.log_metric(sweep_run_id, "sweep.jobs", len(jobs))
    client.log_metric(sweep_run_id, "sweep.failed_jobs", sum(j.info.status != "FINISHED" for j in jobs))
    steps = select_steps(config.main.steps)
    if metric is None:
        if any(s in steps for s in ("qa",) + AFTER_SWEEP):
            raise StepFailedError(f"no job of sweep {sweep_run_id} finished qa; nothing to compare or register")
        return
    best = best_job(jobs, metric_names.greater_is_better(metric))
    if best is None:
        raise StepFailedError(f"every job of sweep {sweep_run_id} failed; nothing to register")
    best_overrides = driver.overrides_of(best)
    for key, value in {"sweep.best_job_run_id": best.info.run_id, "sweep.metric": metric,
                       "sweep.best_overrides": " ".join(best_overrides)}.items():
        client.set_tag(sweep_run_id, key, value)
    client.log_metric(sweep_run_id, f"sweep.best_{metric}", best.data.metrics[driver.SCORE_METRIC])
    print(f"best job: {best.info.run_id} ({' '.join(best_overrides)}) {metric}="
          f"{best.data.metrics[driver.SCORE_METRIC]:.4f}")
    after = [s for s in steps if s in AFTER_SWEEP]
    if not after:
        return
    _run_after_sweep(config, sweep, best, best_overrides, after)


def _run_after_sweep(config, sweep, best, best_overrides: list[str], steps: list[str]) -> None:
    """register (and serve) the best job's model, nested under the sweep parent run."""
    from omegaconf import OmegaConf

    from mlpipe.run.handoff import download

    client = MlflowClient()
    qa_run = client.get_run(best.data.tags["pipeline.qa_run_id"])
    # The best job's own resolved config (the callback only receives the sweep's base config).
    with tempfile.TemporaryDirectory() as tmp:
        best_cfg = OmegaConf.load(download(client, best.info.run_id, "config/config.yaml", tmp))
    env_manager = best_cfg.main.env_manager or driver.detect_env_manager(client, sweep.info.run_id)
    pipeline = driver.Driver(best_cfg, best_overrides, sweep.info.run_id, sweep.info.experiment_id, env_manager)
    with mlflow.start_run(run_id=sweep.info.run_id):
        results, _ = pipeline.run(steps, outputs={"qa": qa_run})
    driver.log_summary(client, sweep.info.run_id, results)
    print(driver.format_table(results))
