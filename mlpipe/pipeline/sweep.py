"""Hydra sweeps of the whole pipeline: one sweep parent run, one nested pipeline run per job.

The steps no swept key reaches (ingest and preprocess in a model sweep) run once, in the sweep
parent, before any job starts; every job then finds them in the step cache. That holds for any
launcher, parallel or not, on one machine or on a cluster whose nodes share only the tracking
server. register and serve run once, after every job has finished, for the best job only: jobs
never race for the champion alias.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import sys
import tempfile
import traceback

import mlflow
from hydra.experimental.callback import Callback
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from mlpipe.config import compose, to_container
from mlpipe.errors import ConfigError, PipelineError, StepFailedError, UpstreamError
from mlpipe.pipeline import jobs, summary
from mlpipe.pipeline.spec import AFTER_SWEEP, STEPS, select_steps
from mlpipe.pipeline.warm import control as warm
from mlpipe.run import handoff, lifecycle
from mlpipe.run.outputs import (CONFIG_ARTIFACT, ERROR_MESSAGE_TAG, ROLE_TAG, SCORE_METRIC, SWEEP_TAG, SweepJob, SweepJobOutput)
from mlpipe.training import metric_names


class SweepCallback(Callback):
    """Opens the sweep parent before the jobs; picks the best job and finishes the sweep after."""

    def __init__(self) -> None:
        self.sweep_run_id: str | None = None
        self.owns_run = False
        self.ended = False

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        lifecycle.prepare_process()
        lifecycle.apply_client_settings(config)
        lifecycle.quiet_downloads(config)
        client = MlflowClient()
        # Inside `mlflow run`, the project run is the sweep parent; jobs must not resume it.
        run_id = os.environ.pop("MLFLOW_RUN_ID", None)
        if run_id is None:
            experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID") or _experiment_id()
            run_id = client.create_run(experiment_id, run_name="sweep").info.run_id
            self.owns_run = True
        run = client.get_run(run_id)
        os.environ["MLFLOW_EXPERIMENT_ID"] = run.info.experiment_id
        client.set_tag(run_id, ROLE_TAG, "sweep")
        task = [str(o) for o in config.hydra.overrides.task] if "hydra" in config else []
        swept = {k: v for k, _, v in (o.lstrip("+~").partition("=") for o in task) if k in ("model", "data")}
        client.update_run(run_id, name=summary.run_name("sweep", config, run.info.start_time / 1000, swept))
        os.environ[jobs.SWEEP_ENV] = self.sweep_run_id = run_id
        print(f"[mlpipe] sweep run {run_id}", file=sys.stderr)
        atexit.register(self._unended)
        try:
            check_direction(config)
            run_shared_steps(config, run_id)
        except Exception as exc:  # Hydra would only warn: no job starts on a failed shared step
            self._fail(exc)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        # Hydra turns a callback's exception into a warning: end the process ourselves.
        try:
            finish_sweep(config, self.sweep_run_id)
        except Exception as exc:
            self._fail(exc)
        if self.owns_run:
            lifecycle.terminate(self.sweep_run_id, "sweep")
        self.ended = True

    def _fail(self, exc: Exception) -> None:
        if not isinstance(exc, PipelineError):
            traceback.print_exc()
        lifecycle.terminate(self.sweep_run_id, "sweep", exc)
        self.ended = True
        sys.exit(getattr(exc, "exit_code", 1))

    def _unended(self) -> None:
        """At exit, a sweep that never reached its end (the sweeper or launcher raised, as
        Optuna's does when no trial completed; Ctrl-C) is not left RUNNING: FAILED, with why."""
        if self.ended or MlflowClient().get_run(self.sweep_run_id).info.status != "RUNNING":
            return
        lifecycle.terminate(self.sweep_run_id, "sweep", StepFailedError(
            "the sweep stopped before its end (the sweeper's or launcher's error printed above, or an "
            "interrupt); its jobs' runs show how far it got"))


def _experiment_id() -> str:
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME")
    return mlflow.set_experiment(name).experiment_id if name else "0"


def optimizer(config: DictConfig) -> str | None:
    """The direction an optimizing sweeper (Optuna's) steers by; None for the grid of the basic one."""
    sweeper = config.hydra.sweeper
    if "direction" not in sweeper:
        return None
    direction = sweeper.direction
    return str(getattr(direction, "name", direction))


def check_direction(config: DictConfig) -> None:
    """An optimizing sweeper must steer the way the qa primary metric improves (the plug-in's own
    default is minimize; accuracy and r2, the defaults, improve upwards)."""
    direction = optimizer(config)
    if direction is None:
        return
    metric = config.qa.primary_metric
    want = "maximize" if metric is None or metric_names.greater_is_better(metric) else "minimize"
    if direction != want:
        shown = metric or "the default qa primary metric (accuracy or r2)"
        raise ConfigError(f"hydra.sweeper.direction={direction}, but {shown} is better when "
                          f"{'greater' if want == 'maximize' else 'smaller'}: set hydra.sweeper.direction={want}")


def _task_overrides(config: DictConfig) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))


def job_num(job) -> int:
    return SweepJob.from_run(job).job_num


def job_overrides(job) -> list[str]:
    """The Hydra task overrides a job ran with."""
    return json.loads(SweepJob.from_run(job).overrides)


def score_metric(job) -> str | None:
    """The metric a job's `pipeline.score` is, when it finished qa."""
    try:
        return SweepJobOutput.from_run(job).score_metric
    except UpstreamError:
        return None


def searched_keys(config: DictConfig) -> list[str]:
    """The keys a sweep varies, as written: `model.n_estimators`, `model` (a group)."""
    keys = [o.key_or_group for o in _task_overrides(config) if o.is_sweep_override()]
    return keys + [str(k) for k in (config.hydra.sweeper.get("params") or {}) if str(k) not in keys]


def swept_groups(config: DictConfig) -> set[str]:
    """The top-level config keys a sweep varies: its command line's sweep overrides
    (`model.n_estimators=50,100`, `model=a,b`, `range(...)`) and the sweeper's own search space
    (`hydra.sweeper.params`, Optuna's or the basic sweeper's). Hydra's own overrides
    (`hydra/launcher=...`) are never in the task overrides, so never here."""
    return {k.lstrip("+~").split(".")[0].split("/")[0].split("@")[0] for k in searched_keys(config)}


def shared_prefix(steps: list[str], swept: set[str]) -> list[str]:
    """The leading steps every job of the sweep runs with the same config (pure).

    A swept key that no step's cache key names (main, monitor, storage...) may change how any
    step runs: then nothing is shared."""
    known = {key for spec in STEPS.values() for key in spec.config_keys}
    if swept - known:
        return []
    shared = []
    for step in steps:
        if step in AFTER_SWEEP or swept & set(STEPS[step].config_keys):
            break
        shared.append(step)
    return shared


def run_shared_steps(config: DictConfig, sweep_run_id: str) -> list[str]:
    """Run the sweep's shared steps once, nested under the sweep parent, before any job."""
    steps = shared_prefix(select_steps(config.main.steps), swept_groups(config))
    if not steps:
        return []
    fixed = [o.input_line for o in _task_overrides(config) if not o.is_sweep_override()]
    warm.ensure(bool(config.main.warm_steps))
    sweep = MlflowClient().get_run(sweep_run_id)
    # The callback's config still holds Hydra's per-job keys (hydra.job.num): not the steps' config.
    cfg = OmegaConf.masked_copy(config, [key for key in config if key != "hydra"])
    print(f"[mlpipe] sweep: {', '.join(steps)} run once for every job", file=sys.stderr)
    mlflow.start_run(run_id=sweep_run_id)  # the steps' runs nest under the sweep parent
    try:  # register and serve publish their cards under cards/ at the end
        jobs.drive(cfg, fixed, sweep_run_id, sweep.info.experiment_id, steps, cards_path="cards/shared",
                   summary_name="shared_steps")
    finally:
        # Detached, not ended: the jobs and the sweep's end come next. MLflow stamps an end time
        # meanwhile (the UI shows the shared steps' duration until the sweep ends and re-stamps it).
        mlflow.end_run("RUNNING")
    return steps


def best_job(jobs: list, greater_is_better: bool):
    """The FINISHED job with the best score; ties go to the earliest job."""
    scored = [j for j in jobs if j.info.status == "FINISHED"
              and not math.isnan(j.data.metrics.get(SCORE_METRIC, math.nan))]
    if not scored:
        return None
    scored.sort(key=job_num)
    pick = max if greater_is_better else min
    return pick(scored, key=lambda j: j.data.metrics[SCORE_METRIC])


def study(config: DictConfig, jobs: list, best, metric: str) -> dict:
    """What an optimizing sweep found: every trial (a job) with its state, value and parameters,
    and the best one. A job that failed (the qa gate, an error) is a FAIL trial with no value."""
    keys = searched_keys(config)

    def params(job) -> dict[str, str]:
        pairs = (o.split("=", 1) for o in job_overrides(job) if "=" in o)
        return {k: v for k, v in pairs if k.lstrip("+~") in keys}

    trials = [{"number": job_num(j), "run_id": j.info.run_id,
               "state": "COMPLETE" if j.info.status == "FINISHED" else "FAIL",
               "value": j.data.metrics.get(SCORE_METRIC) if j.info.status == "FINISHED" else None,
               "params": params(j), "error": j.data.tags.get(ERROR_MESSAGE_TAG)} for j in jobs]
    sampler = config.hydra.sweeper.get("sampler") or {}
    return {"metric": metric, "direction": optimizer(config), "sampler": sampler.get("_target_"),
            "n_trials": config.hydra.sweeper.get("n_trials"), "searched": keys,
            "best": {"number": job_num(best), "run_id": best.info.run_id,
                     "value": best.data.metrics[SCORE_METRIC], "params": params(best)},
            "trials": sorted(trials, key=lambda t: t["number"])}


def finish_sweep(config: DictConfig, sweep_run_id: str) -> None:
    client = MlflowClient()
    sweep = client.get_run(sweep_run_id)
    jobs = handoff.all_runs(client, [sweep.info.experiment_id], f"tags.`{SWEEP_TAG}` = '{sweep_run_id}'",
                            order_by=["attributes.start_time ASC"])
    metric = next(filter(None, map(score_metric, jobs)), None)
    rows = [f"{job_num(j):>4}  {j.info.run_id}  {j.info.status:<8}  "
            f"{j.data.metrics.get(SCORE_METRIC, float('nan')):.4f}  {' '.join(job_overrides(j))}" for j in jobs]
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
    for job in jobs:  # the sweep's history as one chart: the metric by job number
        if job.info.status == "FINISHED" and SCORE_METRIC in job.data.metrics:
            client.log_metric(sweep_run_id, f"sweep.{metric}", job.data.metrics[SCORE_METRIC],
                              step=job_num(job))
    if optimizer(config):
        client.log_dict(sweep_run_id, study(config, jobs, best, metric), "sweep_study.json")
    best_overrides = job_overrides(best)
    for key, value in {"sweep.best_job_run_id": best.info.run_id, "sweep.metric": metric,
                       "sweep.best_overrides": " ".join(best_overrides)}.items():
        client.set_tag(sweep_run_id, key, value)
    client.log_metric(sweep_run_id, f"sweep.best_{metric}", best.data.metrics[SCORE_METRIC])
    print(f"best job: {best.info.run_id} ({' '.join(best_overrides)}) {metric}="
          f"{best.data.metrics[SCORE_METRIC]:.4f}")
    after = [s for s in steps if s in AFTER_SWEEP]
    if not after:
        return
    _run_after_sweep(config, sweep, best, best_overrides, after)


def _run_after_sweep(config, sweep, best, best_overrides: list[str], steps: list[str]) -> None:
    """register (and serve) the best job's model, nested under the sweep parent run."""
    qa_run = MlflowClient().get_run(SweepJobOutput.from_run(best).qa_run_id)
    best_cfg = best_job_config(best, best_overrides)
    with mlflow.start_run(run_id=sweep.info.run_id):
        jobs.drive(best_cfg, best_overrides, sweep.info.run_id, sweep.info.experiment_id, steps, outputs={"qa": qa_run})


def best_job_config(best, overrides: list[str]) -> DictConfig:
    """The best job's config composed again from its overrides (so checked like any config), and
    the same as the config it ran with (`config/config.yaml` of its run): a config tree edited
    during the sweep must not register the best job's model under other settings."""
    composed = compose(overrides)
    with tempfile.TemporaryDirectory() as tmp:
        logged = OmegaConf.load(handoff.download(MlflowClient(), best.info.run_id, CONFIG_ARTIFACT, tmp))
    ran = OmegaConf.to_container(logged, resolve=True)
    ran.pop("hydra", None)
    changed = sorted(key for key in set(ran) | set(to_container(composed))
                     if ran.get(key) != to_container(composed).get(key))
    if changed:
        raise ConfigError(f"the best job {best.info.run_id} ran with another config than its overrides compose to now "
                          f"({', '.join(changed)} differ: conf/ changed during the sweep?); nothing was registered: "
                          "run the sweep again with the config as it is now")
    return composed
