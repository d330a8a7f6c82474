"""Resource figures and limits for one step process (config group `monitor`).

- `usage()`: wall time, CPU time (the process and its finished children) and peak RSS, logged
  as `step.wall_s`, `step.cpu_s`, `step.peak_rss_mb` on every step run, FAILED ones included.
- `Watchdog`: a daemon thread that polls the same figures every `poll_seconds` while the step
  runs. Past a limit it warns once (action `warn`) or stops the step (action `fail`) by raising
  `ResourceLimitError` in the main thread, through a signal handler, repeated at every poll
  until the step ends: Python delivers it at the next bytecode, so a long C call finishes first.

MLflow's own system metrics (psutil: `system/cpu_utilization_percentage`,
`system/system_memory_usage_megabytes`, ...) are switched on by the harness when it opens the run.
"""

from __future__ import annotations

import _thread
import resource
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from mlpipe.errors import ResourceLimitError

ACTIONS = ("warn", "fail")
LIMIT_SIGNAL = signal.SIGUSR1


@dataclass(frozen=True)
class Limits:
    max_rss_mb: float | None
    max_step_seconds: float | None
    action: str
    poll_seconds: float

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "Limits":
        """`conf/monitor` (types, ranges and choices checked when composed: mlpipe/schema/)."""
        return cls(cfg["max_rss_mb"], cfg["max_step_seconds"], cfg["action"], float(cfg["poll_seconds"]))

    @property
    def active(self) -> bool:
        return self.max_rss_mb is not None or self.max_step_seconds is not None


def usage(started: float) -> dict[str, float]:
    """The step's figures so far (`started`: time.monotonic() when the step began)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "step.wall_s": round(time.monotonic() - started, 3),
        "step.cpu_s": round(own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime, 3),
        "step.peak_rss_mb": round(max(own.ru_maxrss, children.ru_maxrss) / 1024, 1),
    }


def breaches(figures: dict[str, float], limits: Limits) -> list[tuple[str, str]]:
    """(limit key, message) for each limit the figures are past."""
    found = []
    if limits.max_rss_mb is not None and figures["step.peak_rss_mb"] > limits.max_rss_mb:
        found.append(("max_rss_mb", f"peak RSS {figures['step.peak_rss_mb']:.0f} MB is above "
                                    f"monitor.max_rss_mb={limits.max_rss_mb:g}"))
    if limits.max_step_seconds is not None and figures["step.wall_s"] > limits.max_step_seconds:
        found.append(("max_step_seconds", f"the step has run {figures['step.wall_s']:.1f} s, more than "
                                          f"monitor.max_step_seconds={limits.max_step_seconds:g}"))
    return found


class Watchdog:
    """Polls `usage` against `limits` while a step runs; see the module doc."""

    def __init__(self, step: str, limits: Limits, started: float):
        self.step, self.limits, self.started = step, limits, started
        self.warnings: dict[str, str] = {}
        self.failure: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._previous = None

    def __enter__(self) -> "Watchdog":
        if self.limits.active:
            if self.limits.action == "fail":
                self._previous = signal.signal(LIMIT_SIGNAL, self._raise)
            self._thread = threading.Thread(target=self._poll, name=f"mlpipe-watchdog-{self.step}", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        try:
            if self._thread:
                self._thread.join(timeout=5)
        finally:
            if self._previous is not None:
                signal.signal(LIMIT_SIGNAL, self._previous)
        # The stop may surface as another error (scikit-learn's CV turns failed folds into a
        # ValueError): the limit is the cause, and the error says so.
        if self.failure and exc is not None and not isinstance(exc, ResourceLimitError):
            raise ResourceLimitError(self.failure) from exc

    def _raise(self, signum, frame) -> None:
        raise ResourceLimitError(self.failure)

    def check(self) -> None:
        """One poll (watchdog thread): warn about new breaches, or stop the step (action fail)."""
        found = breaches(usage(self.started), self.limits)
        if self.limits.action == "fail":
            if found and self.failure is None:
                self.failure = found[0][1]
            if self.failure:
                # Again at every poll until the step ends: code that catches exceptions (as
                # scikit-learn's cross-validation does per fold) must not swallow the stop.
                _thread.interrupt_main(LIMIT_SIGNAL)
            return
        self._warn(found)

    def final_check(self) -> None:
        """In the main thread after the recipe: a breach the last poll missed still counts."""
        found = breaches(usage(self.started), self.limits)
        if self.limits.action == "fail":
            if found or self.failure:
                raise ResourceLimitError(self.failure or found[0][1])
            return
        self._warn(found)

    def _warn(self, found: list[tuple[str, str]]) -> None:
        for key, message in found:
            if key not in self.warnings:
                self.warnings[key] = message
                print(f"warning: {self.step}: {message} (monitor.action=warn: the step goes on)",
                      file=sys.stderr, flush=True)

    def _poll(self) -> None:
        while not self._stop.wait(self.limits.poll_seconds):
            self.check()
