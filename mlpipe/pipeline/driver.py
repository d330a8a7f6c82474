"""The driver behind `mlflow run . -e main`: chains the steps with `mlflow.run`, reusing cached runs.

One pipeline = one parent run with a nested child run per step. A step whose cache key matches a
FINISHED run is not rerun: the old run is linked from the parent by a small nested "cached" run.
Launching a step process is `launch.py`'s; what the driver reports is `summary.py`'s.
"""

from __future__ import annotations

import copy
import logging
import os
import sys
import time
from typing import Any

import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from mlpipe.config import digest, to_container
from mlpipe.errors import PipelineError, StepFailedError, UpstreamError
from mlpipe.pipeline import backends, cache, launch, summary
from mlpipe.pipeline.warm import control as warm
from mlpipe.pipeline.spec import STEPS, forced_steps
from mlpipe.run import handoff, lifecycle, locks
from mlpipe.run.outputs import ERROR_MESSAGE_TAG, ERROR_TYPE_TAG, FALLBACK_TAG, KEY_TAG, RegisterOutput
from mlpipe.run.processes import STOP_GRACE_ENV

REUSED_TAG = "pipeline.reused_run_id"


class Driver:
    """Runs a list of steps for one composed config under one parent run."""

    def __init__(self, cfg, overrides: list[str], parent_run_id: str, experiment_id: str, env_manager: str):
        self.cfg = cfg
        self.config = to_container(cfg)
        self.overrides = overrides
        self.parent_run_id = parent_run_id
        self.experiment_id = experiment_id
        self.env_manager = env_manager
        self.client = MlflowClient()
        self.cards_path = "cards"  # where publish_cards puts the steps' cards in the parent run
        self.forced = forced_steps(cfg.main.force)
        # (step, run, outcome) of every step this driver ran, reused or saw fail: their cards.
        self.card_rows: list[tuple[str, Run, str]] = []

    # -- inputs -------------------------------------------------------------------------------
    def _step_overrides(self, step: str) -> dict[str, str]:
        """What the driver adds for one step: serve answers a smoke test and stops."""
        if step == "serve" and not any(o.startswith("serve.mode=") for o in self.overrides):
            return {"serve.mode": "smoke"}
        return {}

    def _overrides_for(self, step: str) -> str:
        import shlex

        extra = [f"{k}={v}" for k, v in self._step_overrides(step).items()]
        return shlex.join([*self.overrides, *extra])

    def _config_for(self, step: str) -> dict[str, Any]:
        """The resolved config the step will compose, including the driver's own additions."""
        extra = self._step_overrides(step)
        if not extra:
            return self.config
        config = copy.deepcopy(self.config)
        for dotted, value in extra.items():
            node = config
            *path, leaf = dotted.split(".")
            for part in path:
                node = node[part]
            node[leaf] = value
        return config

    def _params(self, step: str, outputs: dict[str, Run]) -> dict[str, str]:
        spec = STEPS[step]
        params = {"overrides": self._overrides_for(step)}
        if spec.upstream_param:
            params[spec.upstream_param] = outputs[spec.upstream].info.run_id
        elif step == "serve":
            params["model_uri"] = RegisterOutput.from_run(outputs["register"]).model_uri
        return params

    def _matching_upstream(self, step: str) -> Run:
        digest = cache.config_digest(step, self.config)
        run = handoff.newest_finished(self.client, self.experiment_id, step, digest)
        if run is None:
            raise UpstreamError(
                f"no finished {step} run matches this configuration in experiment {self.experiment_id}; "
                f"include {step} in main.steps (or run: mlflow run . -e main)"
            )
        print(f"[mlpipe] {step}: using finished run {run.info.run_id} (same {step} config)", file=sys.stderr)
        return run

    # -- cache ----------------------------------------------------------------------------------
    def _key(self, step: str, params: dict[str, str], outputs: dict[str, Run]) -> str | None:
        """The key the step will tag itself with (the same `keys.key_input` as the step uses).

        None when a source cannot be read: the step then runs and fails with its own message."""
        from mlpipe.pipeline import key_inputs

        upstream = STEPS[step].upstream
        try:
            extra = key_inputs.key_input(step, self.client, self.cfg, outputs.get(upstream) if upstream else None)
        except PipelineError:
            return None
        return cache.step_key(step, self._config_for(step), params, extra)

    def _cached(self, key: str) -> Run | None:
        """The newest FINISHED run with this key, except runs whose artifacts fell back to local
        disk: once the store is back, their step reruns onto it."""
        return handoff.newest_finished_run(self.client, self.experiment_id, {KEY_TAG: key},
                                           accept=lambda run: run.data.tags.get(FALLBACK_TAG) != "true")

    def _link(self, step: str, run: Run) -> None:
        """A nested FINISHED run that points at the reused one, so the parent shows every step."""
        link = self.client.create_run(
            self.experiment_id, run_name=f"{step} (cached)",
            tags={"mlflow.parentRunId": self.parent_run_id, REUSED_TAG: run.info.run_id,
                  "pipeline.cached_step": step,
                  "mlflow.note.content": f"Reused {step} run [{run.info.run_id}]"
                                         f"(#/experiments/{run.info.experiment_id}/runs/{run.info.run_id})."},
        )
        self.client.set_terminated(link.info.run_id, "FINISHED")

    # -- execution ------------------------------------------------------------------------------
    def _launch(self, step: str, params: dict[str, str]) -> Run:
        """The step's new run, launched and waited for; a failure is a StepFailedError naming
        the step, its run and its error (the driver's own finding when the step said none)."""
        quiet = self.cfg.main.log == "quiet"
        projects_logger = logging.getLogger("mlflow.projects")
        level = projects_logger.level
        self._child_environment(quiet)
        projects_logger.setLevel(logging.ERROR if quiet else level)
        # A pod has no process here to stop: its step stops itself at monitor.max_step_seconds,
        # and the Job template's activeDeadlineSeconds bounds the pod.
        timer = launch.StepTimer(launch.step_bound(self.cfg) if self.cfg.main.backend == "local" else None,
                                 self.cfg.main.stop_grace_s, helper=warm.helper_pid())
        try:
            with timer:
                run_id = launch.start(self.cfg, self.env_manager, step, params, self.experiment_id)
            return self.client.get_run(run_id)
        except (mlflow.exceptions.ExecutionException, backends.NotSubmitted) as exc:
            raise self._failure(step, exc, timer.fired) from exc
        finally:
            os.environ.pop(lifecycle.QUIET_ENV, None)
            if quiet:
                os.environ.pop("MLFLOW_LOGGING_LEVEL", None)
            projects_logger.setLevel(level)

    def _child_environment(self, quiet: bool) -> None:
        """What the step processes inherit from os.environ for this launch."""
        if self.env_manager == "local":
            # `python` in the MLproject commands must be this interpreter (a venv not on PATH otherwise).
            bindir = os.path.dirname(sys.executable)
            if not os.environ.get("PATH", "").startswith(bindir + os.pathsep):
                os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
        os.environ[lifecycle.QUIET_ENV] = "1"  # the driver reports the children's errors
        os.environ[STOP_GRACE_ENV] = str(self.cfg.main.stop_grace_s)
        # the experiment is passed by id: `mlflow run` refuses a name from the environment beside it
        os.environ.pop("MLFLOW_EXPERIMENT_NAME", None)
        if quiet:  # MLflow's INFO/WARNING lines, in the step processes and in this one
            os.environ["MLFLOW_LOGGING_LEVEL"] = "ERROR"

    def _failure(self, step: str, exc: BaseException, timed_out: bool) -> StepFailedError:
        """The failed step's run, ended FAILED with the error it reported, or with the driver's
        own finding (StepTimeout, StepNotStarted, StepDied) when it could report none."""
        failed = self._failed_child(step)
        if failed is None:
            return StepFailedError(f"step {step} failed to start: {exc}")
        running = failed.info.status == "RUNNING"  # died without ending its run (killed, out of memory)
        if timed_out or ERROR_TYPE_TAG not in failed.data.tags:
            lifecycle.fail_run(failed.info.run_id, launch.finding(self.cfg, step, exc, timed_out), step,
                               end=running, say=False)
        elif running:
            self.client.set_terminated(failed.info.run_id, "FAILED")
        failed = self.client.get_run(failed.info.run_id)
        self.card_rows.append((step, failed, "ran"))
        tags = failed.data.tags
        return StepFailedError(f"step {step} failed (run {failed.info.run_id}, {tags[ERROR_TYPE_TAG]}): "
                               f"{tags[ERROR_MESSAGE_TAG]}")

    def _check_same_code(self, step: str, run: Run, key: str | None) -> None:
        """A step in a pod keys itself with the image's code and the config its pod composed: a
        key other than the driver's means an image built from other code (or other settings in
        the pod's environment), whose run this checkout must not take as its own."""
        theirs = run.data.tags.get(KEY_TAG)
        if self.cfg.main.backend == "local" or key is None or theirs == key:
            return
        raise StepFailedError(
            f"step {step} (run {run.info.run_id}) ran in its pod with other code or config than this checkout: its "
            f"cache key {str(theirs)[:12]}… is not the driver's {key[:12]}…; rebuild the step image from this checkout "
            "(docker build -f deploy/kubernetes/Dockerfile -t mlpipe:local .) and give the Job template the "
            "environment the config reads here (docs/kubernetes.md)")

    def _failed_child(self, step: str) -> Run | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' "
                          f"and tags.`mlflow.project.entryPoint` = '{step}'",
            order_by=["attributes.start_time DESC"], max_results=1,
        )
        return runs[0] if runs else None

    def _run_step(self, step: str, outputs: dict[str, Run]) -> summary.StepResult:
        started = time.monotonic()
        params = self._params(step, outputs)
        key = self._key(step, params, outputs)
        # Concurrent pipelines wanting the same step wait here, then find it cached.
        lock = locks.LOCK_DIR / f"{digest([mlflow.get_tracking_uri(), key or step])[:32]}.lock"
        with locks.bounded_lock(lock, self.cfg.main.step_lock_timeout_s, f"another pipeline running step {step}",
                                "main.step_lock_timeout_s", f"step {step} did not run"):
            hit = None if step in self.forced or key is None else self._cached(key)
            if hit:
                self._link(step, hit)
                run, outcome = hit, "cached"
            else:
                run, outcome = self._launch(step, params), "ran"
                self._check_same_code(step, run, key)
        outputs[step] = run
        self.card_rows.append((step, run, outcome))
        self.client.set_tag(self.parent_run_id, f"pipeline.{step}_run_id", run.info.run_id)
        return summary.result_of(step, run, outcome, time.monotonic() - started)

    def _check_kubernetes(self) -> None:
        """Before any step: the backend config, Docker, and a tracking store the pods reach too."""
        backends.kubernetes_config(str(self.cfg.main.backend_config))
        backends.check_submitter()
        backends.check_tracking_uris(mlflow.get_tracking_uri(), os.environ.get(backends.KUBE_TRACKING_ENV))
        warm.stop()  # the steps run in pods: the warm helper would serve none of them

    def run(self, steps: list[str], outputs: dict[str, Run] | None = None
            ) -> tuple[list[summary.StepResult], dict[str, Run]]:
        """Run (or reuse) `steps` in order; returns the table rows and each step's run."""
        outputs = dict(outputs or {})
        if self.cfg.main.backend == "kubernetes":
            self._check_kubernetes()
        first = STEPS[steps[0]]
        if first.upstream and first.upstream not in outputs:
            outputs[first.upstream] = self._matching_upstream(first.upstream)
        results = []
        locks.LOCK_DIR.mkdir(parents=True, exist_ok=True)
        try:
            for step in steps:
                results.append(self._run_step(step, outputs))
                print(summary.step_line(results[-1]), flush=True)
        finally:
            summary.publish_cards(self.client, self.parent_run_id, self.card_rows, self.cards_path)
        return results, outputs
