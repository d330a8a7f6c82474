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
