"""Whether a process (or a process group) has ended, and stopping a group: for the waits that
stop or outlive one (the driver's step timer, the Ctrl-C watcher, the team server's stop, the
demo's model server)."""

from __future__ import annotations


def exited(pid: int) -> bool:
    """Gone, or a zombie: it has ended and only waits for its parent (or an init that may never
    reap it, in a container) to read its exit status. `os.kill(pid, 0)` counts a zombie as alive."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def group_alive(pgid: int) -> bool:
    """A process of the group still running (zombies left for init to reap do not count)."""
    import os

    import psutil

    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid and not exited(proc.pid):
                return True
        except (ProcessLookupError, PermissionError):
            continue
    return False


def stop_group(pgid: int, timeout: float) -> None:
    """SIGTERM to a process group (a server and its workers), SIGKILL to what is left `timeout`
    seconds later; returns once no process of the group is left. The group's leader is reaped
    when it is this process's child."""
    import os
    import signal
    import time

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and group_alive(pgid):
            try:
                os.waitpid(pgid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.2)
        if not group_alive(pgid):
            return
