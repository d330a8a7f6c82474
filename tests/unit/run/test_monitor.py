"""mlpipe/run/monitor.py: resource figures, limit checks and the watchdog that warns or stops a step."""

import time

import pytest

from mlpipe.errors import ResourceLimitError
from mlpipe.run import monitor


def limits_of(**given) -> monitor.Limits:
    """Limits with conf/monitor's values where the test sets none (null limits, warn, 0.5 s)."""
    return monitor.Limits(**({"max_rss_mb": None, "max_step_seconds": None, "action": "warn", "poll_seconds": 0.5}
                             | given))


def test_usage_has_the_three_figures():
    started = time.monotonic() - 2
    figures = monitor.usage(started)
    assert set(figures) == {"step.wall_s", "step.cpu_s", "step.peak_rss_mb"}
    assert figures["step.wall_s"] >= 2 and figures["step.cpu_s"] > 0 and figures["step.peak_rss_mb"] > 10


def test_breaches_name_the_limit():
    figures = {"step.wall_s": 12.0, "step.cpu_s": 1.0, "step.peak_rss_mb": 900.0}
    assert monitor.breaches(figures, limits_of()) == []
    found = monitor.breaches(figures, limits_of(max_rss_mb=500, max_step_seconds=10))
    assert found == [("max_rss_mb", "peak RSS 900 MB is above monitor.max_rss_mb=500"),
                     ("max_step_seconds", "the step has run 12.0 s, more than monitor.max_step_seconds=10")]
    assert monitor.breaches(figures, limits_of(max_rss_mb=1000, max_step_seconds=20)) == []


def busy(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sum(range(1000))


def test_watchdog_fail_stops_the_main_thread_while_it_works():
    limits = limits_of(max_step_seconds=0.3, action="fail", poll_seconds=0.05)
    started = time.monotonic()
    with pytest.raises(ResourceLimitError, match=r"^the step has run 0\.\d s, more than monitor.max_step_seconds=0.3"):
        with monitor.Watchdog("train", limits, started):
            busy(5)
    assert time.monotonic() - started < 2  # stopped mid-work, not at the end


def test_watchdog_warn_says_it_once_and_lets_the_step_finish(capsys):
    limits = limits_of(max_step_seconds=0.1, action="warn", poll_seconds=0.05)
    with monitor.Watchdog("qa", limits, time.monotonic()) as dog:
        busy(0.5)
        dog.final_check()
    err = capsys.readouterr().err
    assert err.count("warning: qa: the step has run") == 1 and "(monitor.action=warn: the step goes on)" in err
    assert list(dog.warnings) == ["max_step_seconds"]


def test_final_check_catches_a_breach_between_polls():
    limits = limits_of(max_rss_mb=1, action="fail", poll_seconds=60)
    with pytest.raises(ResourceLimitError, match="above monitor.max_rss_mb=1"):
        with monitor.Watchdog("ingest", limits, time.monotonic()) as dog:
            dog.final_check()


def test_no_limits_no_thread():
    with monitor.Watchdog("serve", limits_of(), time.monotonic()) as dog:
        assert dog._thread is None


def test_an_error_raised_because_of_the_stop_becomes_the_limit_error():
    limits = limits_of(max_step_seconds=0.2, action="fail", poll_seconds=0.05)
    with pytest.raises(ResourceLimitError, match="monitor.max_step_seconds=0.2") as info:
        with monitor.Watchdog("train", limits, time.monotonic()):
            failures = 0
            while failures < 3:  # code that swallows each stop, then gives up with its own error
                try:
                    busy(5)
                except ResourceLimitError:
                    failures += 1
            raise ValueError("all fits failed")
    assert isinstance(info.value.__cause__, ValueError)
