"""mlpipe/pipeline/launch.py: how long the driver waits for a step, and stopping one past it."""

from __future__ import annotations


def test_the_driver_waits_for_a_step_only_when_the_step_must_stop_itself():
    from mlpipe.config import compose
    from mlpipe.pipeline.launch import step_bound

    assert step_bound(compose([])) is None  # no limit: a step runs as long as it needs
    assert step_bound(compose(["monitor.max_step_seconds=30"])) is None  # action=warn: it goes on
    assert step_bound(compose(["monitor.max_step_seconds=30", "monitor.action=fail", "main.step_grace_s=5"])) == 35


def test_a_step_that_ignores_sigterm_past_its_bound_is_killed_with_what_it_started(tmp_path):
    """A real process tree, waited for as mlflow.run waits (Popen.wait): `bash -c` running a
    Python that ignores SIGTERM and has a child of its own, as a hung step would."""
    import subprocess
    import sys
    import time

    import psutil

    from mlpipe.pipeline.launch import StepTimer

    script = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); time.sleep(120)")
    with StepTimer(2.0, grace=1) as timer:
        proc = subprocess.Popen(["bash", "-c", f"{sys.executable} -c \"{script}\"; echo never"])
        time.sleep(1.5)
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        assert len(tree) == 3
        proc.wait(timeout=30)  # what mlflow.run does; the timer stops the tree
    assert timer.fired and proc.returncode in (-15, -9)  # the parent still reads the exit status
    for p in tree[1:]:  # gone, or a zombie of a parent that is gone (not reaped where init does not)
        try:
            assert p.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            pass
    with StepTimer(30, grace=1) as timer:
        assert subprocess.run([sys.executable, "-c", "import sys; sys.exit(3)"]).returncode == 3
    assert not timer.fired
