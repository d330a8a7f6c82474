"""Launching one step process, stopping one that runs past its time, and what the driver says of
a step process that could not say why it ended (StepDied, StepTimeout, StepNotStarted)."""

from __future__ import annotations

import threading
import time
from typing import Any

import mlflow

from mlpipe.errors import StepDied, StepFailedError, StepNotStarted, StepTimeout
from mlpipe.pipeline import backends
from mlpipe.run.processes import exited

# What the driver says of a step process that ended without reporting an error of its own.
DIED = ("the step process ended without reporting an error (killed, or out of memory?); "
        "its run is marked FAILED and is never reused")
DIED_IN_POD = ("the step's Kubernetes Job failed without the step reporting an error (out of memory, evicted, an "
               "image its node could not pull, the template's activeDeadlineSeconds?): `kubectl describe` its Job; "
               "its run is marked FAILED and is never reused")


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
    left `grace` seconds later (main.stop_grace_s). `mlflow.run` then returns the failure; `fired` says why.
    `helper` names the warm helper's pid: not it, but the step it forked is stopped."""

    def __init__(self, bound: float | None, grace: float, helper: int | None = None):
        self.bound, self.grace, self.helper, self.fired, self._timer = bound, grace, helper, False, None

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
        # Not the warm helper itself, but the step it forked (pipeline/warm), also reached
        # through its launcher: a stopped (SIGSTOP) step would not see its launcher die.
        roots = []
        for child in psutil.Process().children():
            try:
                roots += child.children() if child.pid == self.helper else [child]
            except psutil.NoSuchProcess:
                pass
        stop_tree(roots, self.grace)


def stop_tree(roots, grace: float) -> None:
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


def start(cfg, env_manager: str, step: str, params: dict[str, str], experiment_id: str) -> str:
    """Run the step with `mlflow.run` on main.backend and wait for it; its run id.
    ExecutionException when it ran and failed, NotSubmitted when it could not start on Kubernetes."""
    args: dict[str, Any] = {**backends.mlflow_run_args(cfg, env_manager), "entry_point": step, "parameters": params,
                            "experiment_id": experiment_id, "run_name": step}
    if cfg.main.backend == "local":
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


def finding(cfg, step: str, exc: BaseException, timed_out: bool) -> StepFailedError:
    """The driver's own account of a failed step process, for a step run that has none."""
    if timed_out:
        return StepTimeout(
            f"step {step} ran over monitor.max_step_seconds={cfg.monitor.max_step_seconds:g} s + "
            f"main.step_grace_s={cfg.main.step_grace_s:g} s without stopping itself and was stopped by the driver; "
            "raise monitor.max_step_seconds if it needs longer")
    if isinstance(exc, backends.NotSubmitted):
        return StepNotStarted(str(exc))
    return StepDied(DIED if cfg.main.backend == "local" else DIED_IN_POD)
