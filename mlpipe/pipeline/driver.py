"""The driver behind `mlflow run . -e main`: chains the steps with `mlflow.run`, reusing cached runs.

One pipeline = one parent run with a nested child run per step. A step whose cache key matches a
FINISHED run is not rerun: the old run is linked from the parent by a small nested "cached" run.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import sys
import threading
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from mlpipe.config import PROJECT_ROOT, digest, to_container
from mlpipe.errors import PipelineError, StepFailedError, UpstreamError
from mlpipe.pipeline import backends, cache
from mlpipe.pipeline.spec import STEPS, forced_steps
from mlpipe.run import handoff, warm
from mlpipe.run.harness import ERROR_MESSAGE_TAG, ERROR_TYPE_TAG, QUIET_ENV
from mlpipe.run.outputs import RegisterOutput
from mlpipe.run.processes import exited

ENV_MANAGER_TAG = "mlflow.project.env"
REUSED_TAG = "pipeline.reused_run_id"
ROLE_TAG = "pipeline.role"
SWEEP_ENV = "MLPIPE_SWEEP_RUN_ID"
SWEEP_TAG = "pipeline.sweep_run_id"
SCORE_METRIC = "pipeline.score"
STOP_GRACE_S = 10  # SIGTERM, then SIGKILL this much later


@dataclass
class StepResult:
    step: str
    run_id: str
    outcome: str  # ran | cached
    seconds: float
    summary: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


def step_bound(cfg) -> float | None:
    """How long the driver waits for a step process: with monitor.action=fail the step stops itself
    at monitor.max_step_seconds (between bytecodes); one that does not (a long C call, a hang) is
    stopped main.step_grace_s later. None (no bound) otherwise: a step may run as long as it needs."""
    limit = cfg.monitor.max_step_seconds
    if limit is None or cfg.monitor.action != "fail":
        return None
    return float(limit) + float(cfg.main.step_grace_s)


class StepTimer:
    """Stops the step process `mlflow.run` is waiting for once `bound` seconds have passed:
    SIGTERM to every child process of this driver and everything under them, SIGKILL to what is
    left `grace` seconds later. `mlflow.run` then returns the failure; `fired` says why."""

    def __init__(self, bound: float | None, grace: float = STOP_GRACE_S):
        self.bound, self.grace, self.fired, self._timer = bound, grace, False, None

    def __enter__(self) -> "StepTimer":
        if self.bound is not None:
            self._timer = threading.Timer(self.bound, self._fire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._timer is not None:
            self._timer.cancel()
            if self.fired:  # the step's process ended; what it left behind is stopped before going on
                self._timer.join(timeout=3 * self.grace)

    def _fire(self) -> None:
        import psutil

        self.fired = True
        # Not the warm helper itself, but the step it forked (mlpipe/run/warm.py), also reached
        # through its launcher: a stopped (SIGSTOP) step would not see its launcher die.
        helper, roots = warm.helper_pid(), []
        for child in psutil.Process().children():
            try:
                roots += child.children() if child.pid == helper else [child]
            except psutil.NoSuchProcess:
                pass
        stop_tree(roots, self.grace)


def stop_tree(roots, grace: float = STOP_GRACE_S) -> None:
    """SIGTERM to these processes and everything under them (`bash -c`, the step's Python, its
    workers), SIGKILL to what is left `grace` seconds later. Nothing is reaped here: the
    process's own parent (MLflow's Popen) reads its exit status."""
    import psutil

    procs = []
    for root in roots:
        try:
            procs += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for sig, wait in (("terminate", grace), ("kill", grace)):
        for p in procs:
            try:
                getattr(p, sig)()
            except psutil.NoSuchProcess:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and not all(exited(p.pid) for p in procs):
            time.sleep(0.1)
        procs = [p for p in procs if not exited(p.pid)]
        if not procs:
            return


def quiet_downloads(cfg) -> None:
    """main.log=quiet: no artifact download progress bars (cards, configs) from this process."""
    if cfg.main.log == "quiet":
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def env_manager_for(cfg, client: MlflowClient, run_id: str | None) -> str:
    """main.env_manager when set, else the one this driver's own run uses."""
    return cfg.main.env_manager or detect_env_manager(client, run_id)


def detect_env_manager(client: MlflowClient, run_id: str | None) -> str:
    """The env manager `mlflow run` used for this driver's own run: children get the same one."""
    if not run_id:
        return "local"
    env = client.get_run(run_id).data.tags.get(ENV_MANAGER_TAG, "local")
    # A docker_env project (deploy/kubernetes) runs this driver inside the step image: the steps
    # run in the same container, with its Python.
    return "local" if env == "docker" else env


def hydra_argv(argv: list[str]) -> list[str]:
    """`--steps=train,qa --overrides="-m a=1,2"` (from MLproject) -> Hydra's own command line."""
    import argparse

    from mlpipe.config import shell_unquoted, split_overrides

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
        from mlpipe.run.storage import FALLBACK_TAG

        return handoff.newest_finished_run(self.client, self.experiment_id, {cache.KEY_TAG: key},
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
        if self.env_manager == "local":
            # `python` in the MLproject commands must be this interpreter (a venv not on PATH otherwise).
            bindir = os.path.dirname(sys.executable)
            if not os.environ.get("PATH", "").startswith(bindir + os.pathsep):
                os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
        os.environ[QUIET_ENV] = "1"  # children inherit os.environ; the driver reports their errors
        # the experiment is passed by id: `mlflow run` refuses a name from the environment beside it
        os.environ.pop("MLFLOW_EXPERIMENT_NAME", None)
        quiet = self.cfg.main.log == "quiet"
        if quiet:  # MLflow's INFO/WARNING lines, in the step processes and in this one
            os.environ["MLFLOW_LOGGING_LEVEL"] = "ERROR"
        projects_logger = logging.getLogger("mlflow.projects")
        level = projects_logger.level
        projects_logger.setLevel(logging.ERROR if quiet else level)
        try:
            # A pod has no process here to stop: its step stops itself at monitor.max_step_seconds,
            # and the Job template's activeDeadlineSeconds bounds the pod.
            timer = StepTimer(step_bound(self.cfg) if self.cfg.main.backend == "local" else None)
            with timer:
                run_id = self._start(step, params)
            return self.client.get_run(run_id)
        except (mlflow.exceptions.ExecutionException, backends.NotSubmitted) as exc:
            failed = self._failed_child(step)
            if failed is None:
                raise StepFailedError(f"step {step} failed to start: {exc}") from exc
            if timer.fired:
                self._timed_out(step, failed.info.run_id)
            if failed.info.status == "RUNNING":  # died without ending its run (killed, out of memory)
                self.client.set_terminated(failed.info.run_id, "FAILED")
            tags = failed.data.tags
            if ERROR_TYPE_TAG not in tags:
                kind, message = (("StepNotStarted", str(exc)) if isinstance(exc, backends.NotSubmitted) else
                                 ("StepDied", DIED if self.cfg.main.backend == "local" else DIED_IN_POD))
                self.client.set_tag(failed.info.run_id, ERROR_TYPE_TAG, kind)
                self.client.set_tag(failed.info.run_id, ERROR_MESSAGE_TAG, message)
            failed = self.client.get_run(failed.info.run_id)
            self.card_rows.append((step, failed, "ran"))
            tags = failed.data.tags
            raise StepFailedError(
                f"step {step} failed (run {failed.info.run_id}, {tags[ERROR_TYPE_TAG]}): {tags[ERROR_MESSAGE_TAG]}"
            ) from exc
        finally:
            os.environ.pop(QUIET_ENV, None)
            if quiet:
                os.environ.pop("MLFLOW_LOGGING_LEVEL", None)
            projects_logger.setLevel(level)

    def _start(self, step: str, params: dict[str, str]) -> str:
        """Run the step with `mlflow.run` on main.backend and wait for it; its run id.
        ExecutionException when it ran and failed, NotSubmitted when it could not start on Kubernetes."""
        args = {**backends.mlflow_run_args(self.cfg, self.env_manager), "entry_point": step, "parameters": params,
                "experiment_id": self.experiment_id, "run_name": step}
        if self.cfg.main.backend == "local":
            return mlflow.run(**args).run_id
        try:
            submitted = mlflow.run(**args)
        except Exception as exc:  # MLflow's, Docker's or the Kubernetes client's: nothing ran
            raise backends.NotSubmitted(backends.not_submitted(exc)) from exc
        try:
            if not submitted.wait():
                raise mlflow.exceptions.ExecutionException(f"Run (ID '{submitted.run_id}') failed")
        except KeyboardInterrupt:
            submitted.cancel()  # MLflow deletes the Job (the API's default keeps its pod: docs/kubernetes.md)
            raise
        return submitted.run_id

    def _check_same_code(self, step: str, run: Run, key: str | None) -> None:
        """A step in a pod keys itself with the image's code and the config its pod composed: a
        key other than the driver's means an image built from other code (or other settings in
        the pod's environment), whose run this checkout must not take as its own."""
        theirs = run.data.tags.get(cache.KEY_TAG)
        if self.cfg.main.backend == "local" or key is None or theirs == key:
            return
        raise StepFailedError(
            f"step {step} (run {run.info.run_id}) ran in its pod with other code or config than this checkout: its "
            f"cache key {str(theirs)[:12]}… is not the driver's {key[:12]}…; rebuild the step image from this checkout "
            "(docker build -f deploy/kubernetes/Dockerfile -t mlpipe:local .) and give the Job template the "
            "environment the config reads here (docs/kubernetes.md)")

    def _timed_out(self, step: str, run_id: str) -> None:
        run = self.client.get_run(run_id)
        message = (f"step {step} ran over monitor.max_step_seconds={self.cfg.monitor.max_step_seconds:g} s + "
                   f"main.step_grace_s={self.cfg.main.step_grace_s:g} s without stopping itself and was stopped "
                   f"by the driver; raise monitor.max_step_seconds if it needs longer")
        if run.info.status == "RUNNING":
            self.client.set_terminated(run_id, "FAILED")
        self.client.set_tag(run_id, ERROR_TYPE_TAG, "StepTimeout")
        self.client.set_tag(run_id, ERROR_MESSAGE_TAG, message)
        self.card_rows.append((step, self.client.get_run(run_id), "ran"))
        raise StepFailedError(f"step {step} failed (run {run_id}, StepTimeout): {message}")

    def _failed_child(self, step: str) -> Run | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' "
                          f"and tags.`mlflow.project.entryPoint` = '{step}'",
            order_by=["attributes.start_time DESC"], max_results=1,
        )
        return runs[0] if runs else None

    def _run_step(self, step: str, outputs: dict[str, Run]) -> StepResult:
        started = time.monotonic()
        params = self._params(step, outputs)
        key = self._key(step, params, outputs)
        # Concurrent pipelines wanting the same step wait here, then find it cached.
        lock = cache.LOCK_DIR / f"{digest([mlflow.get_tracking_uri(), key or step])[:32]}.lock"
        with cache.bounded_lock(lock, self.cfg.main.step_lock_timeout_s, f"another pipeline running step {step}",
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
        return StepResult(step, run.info.run_id, outcome, time.monotonic() - started,
                          run.data.tags.get(handoff.SUMMARY_TAG, ""), dict(run.data.metrics))

    def _check_kubernetes(self) -> None:
        """Before any step: the backend config, Docker, and a tracking store the pods reach too."""
        backends.kubernetes_config(str(self.cfg.main.backend_config))
        backends.check_submitter()
        backends.check_tracking_uris(mlflow.get_tracking_uri(), os.environ.get(backends.KUBE_TRACKING_ENV))
        warm.stop()  # the steps run in pods: the warm helper would serve none of them

    def publish_cards(self) -> None:
        """Copy each step's card into the parent run under cards/, with an index page linking them.

        Best effort: a missing card (a step that died before writing one) is listed as such."""
        import json
        import shutil

        from mlpipe.reports import cards

        if not self.card_rows:
            return
        try:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "cards"
                out.mkdir()
                rows = []
                for i, (step, run, outcome) in enumerate(self.card_rows, 1):
                    href = f"{i:02d}-{step}.html"
                    try:
                        got = self.client.download_artifacts(run.info.run_id, cards.CARD_HTML, str(Path(tmp) / str(i)))
                        shutil.copyfile(got, out / href)
                    except Exception:  # noqa: BLE001 - no card to copy
                        href = None
                    rows.append({"step": step, "run_id": run.info.run_id, "status": run.info.status,
                                 "outcome": outcome, "href": href,
                                 "summary": run.data.tags.get(handoff.SUMMARY_TAG)
                                 or run.data.tags.get(ERROR_MESSAGE_TAG, "")})
                title = f"pipeline {self.parent_run_id}"
                (out / "index.html").write_text(cards.render_index(title, rows))
                (out / "index.json").write_text(json.dumps(rows, indent=1))
                self.client.log_artifacts(self.parent_run_id, str(out), self.cards_path)
        except Exception as exc:  # noqa: BLE001 - the pipeline's outcome matters more than its cards
            print(f"warning: main: report cards not linked: {type(exc).__name__}: {exc}", file=sys.stderr)

    def run(self, steps: list[str], outputs: dict[str, Run] | None = None) -> tuple[list[StepResult], dict[str, Run]]:
        """Run (or reuse) `steps` in order; returns the table rows and each step's run."""
        outputs = dict(outputs or {})
        if self.cfg.main.backend == "kubernetes":
            self._check_kubernetes()
        first = STEPS[steps[0]]
        if first.upstream and first.upstream not in outputs:
            outputs[first.upstream] = self._matching_upstream(first.upstream)
        results = []
        cache.LOCK_DIR.mkdir(parents=True, exist_ok=True)
        try:
            for step in steps:
                results.append(self._run_step(step, outputs))
                print(step_line(results[-1]), flush=True)
        finally:
            self.publish_cards()
        return results, outputs


# What the driver says of a step process that ended without reporting an error of its own.
DIED = ("the step process ended without reporting an error (killed, or out of memory?); "
        "its run is marked FAILED and is never reused")
DIED_IN_POD = ("the step's Kubernetes Job failed without the step reporting an error (out of memory, evicted, an "
               "image its node could not pull, the template's activeDeadlineSeconds?): `kubectl describe` its Job; "
               "its run is marked FAILED and is never reused")


FIGURES = (("step s", "step.wall_s", "{:.1f}"), ("cpu s", "step.cpu_s", "{:.1f}"), ("peak MB", "step.peak_rss_mb", "{:.0f}"))


def step_line(result: StepResult) -> str:
    """What the terminal shows as each step ends: `[mlpipe] train ran in 8.8 s: validation.accuracy=1.0000`."""
    return f"[mlpipe] {result.step} {result.outcome} in {result.seconds:.1f} s: {result.summary}".rstrip(": ")


def format_table(results: list[StepResult]) -> str:
    """The summary the driver prints: step, run id, cached or ran, seconds the driver waited, the
    step's own wall time, CPU time and peak RSS (of the reused run when cached), key result."""
    header = ("step", "run id", "outcome", "seconds", *(name for name, _, _ in FIGURES), "result")
    rows = [header]
    for r in results:
        figures = [fmt.format(r.metrics[key]) if key in r.metrics else "-" for _, key, fmt in FIGURES]
        rows.append((r.step, r.run_id, r.outcome, f"{r.seconds:.1f}", *figures, r.summary))
    last = len(header) - 1
    widths = [max(len(row[i]) for row in rows) for i in range(last)]
    lines = ["  ".join(cell.ljust(widths[i]) if i < last else cell for i, cell in enumerate(row)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 6)
    return "\n".join(line.rstrip() for line in lines)


def score_of(outputs: dict[str, Run]) -> tuple[str, float] | None:
    """The qa primary metric of a pipeline (what a sweep optimises)."""
    qa = outputs.get("qa")
    if qa is None:
        return None
    metric = qa.data.tags.get("qa.primary_metric")
    value = qa.data.metrics.get(f"qa.{metric}")
    return (metric, value) if metric and value is not None and not math.isnan(value) else None


def log_summary(client: MlflowClient, run_id: str, results: list[StepResult], name: str = "pipeline_summary") -> None:
    table = format_table(results)
    client.log_text(run_id, table + "\n", f"{name}.txt")
    client.log_dict(run_id, [r.__dict__ for r in results], f"{name}.json")
    for r in results:
        if "step.wall_s" in r.metrics:
            client.log_metric(run_id, f"{r.step}.wall_s", r.metrics["step.wall_s"])


def overrides_of(run: Run) -> list[str]:
    import json

    return json.loads(run.data.tags.get("pipeline.overrides", "[]"))
