"""Whether a process has ended, for the waits that stop or outlive one (the driver's step
timer, the Ctrl-C watcher, the team server's stop)."""

from __future__ import annotations


def exited(pid: int) -> bool:
    """Gone, or a zombie: it has ended and only waits for its parent (or an init that may never
    reap it, in a container) to read its exit status. `os.kill(pid, 0)` counts a zombie as alive."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
