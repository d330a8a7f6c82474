"""mlpipe/run/processes.py with real processes: a running one, a zombie, one that is gone."""

import os
import subprocess
import sys
import time

from mlpipe.run.processes import exited


def test_a_zombie_has_exited_though_os_kill_still_finds_it():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert not exited(proc.pid)
    finally:
        proc.kill()
    deadline = time.monotonic() + 10
    while not exited(proc.pid):  # not reaped yet: a zombie
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, 0)  # no error: it is still in the process table
    proc.wait()
    assert exited(proc.pid)


def test_stop_group_ends_every_process_of_a_group_even_one_that_ignores_sigterm():
    """A shell in its own session with a child that ignores SIGTERM: the group gets SIGTERM, then
    SIGKILL after the timeout, and stop_group returns only when none of it is left."""
    import subprocess
    import time

    from mlpipe.run.processes import group_alive, stop_group

    proc = subprocess.Popen(["bash", "-c", "trap '' TERM; sleep 60 & wait"], start_new_session=True)
    time.sleep(0.3)
    assert group_alive(proc.pid)
    started = time.monotonic()
    stop_group(proc.pid, timeout=1)
    assert not group_alive(proc.pid) and time.monotonic() - started >= 1


def test_a_step_behind_a_shell_stops_when_the_launcher_dies(tmp_path):
    """The uv / virtualenv env managers run `bash -c "source <activate> && python ..."`. Bash 5.2
    execs the step in place of itself; a shell that stays between (an older bash, or a command
    after the step, as here) outlives a killed `mlflow run`, so the parent-death signal never
    comes: the step watches the shell's parent and stops (SIGTERM) once it is gone."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import psutil

    root = Path(__file__).resolve().parents[3]
    step = "from mlpipe.run.processes import stop_with_parent; stop_with_parent(); import time; time.sleep(60)"
    launcher_code = ("import subprocess, sys, time; "
                     f"subprocess.Popen(['bash', '-c', '{sys.executable} -c \"{step}\"; true']); time.sleep(60)")
    launcher = subprocess.Popen([sys.executable, "-c", launcher_code], cwd=root)
    deadline = time.monotonic() + 20
    while not [p for p in psutil.Process(launcher.pid).children(recursive=True) if p.name().startswith("python")]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(2)  # the step is past stop_with_parent
    shell, python = sorted(psutil.Process(launcher.pid).children(recursive=True), key=lambda p: p.pid)
    assert shell.name() == "bash"
    launcher.send_signal(signal.SIGKILL)  # `mlflow run` killed
    gone, alive = psutil.wait_procs([python], timeout=10)
    assert not alive
    launcher.wait()
    shell.kill()
