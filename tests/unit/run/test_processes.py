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
