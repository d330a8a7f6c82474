"""Whether a process (or a process group) has ended, stopping a group, and a process that stops
with the one that launched it: for the waits that stop or outlive one (the driver's step timer,
the Ctrl-C watcher, the team server's stop, the demo's model server) and for every step process.
Standard library only at import: the warm launcher (`mlpipe.pipeline.warm.launcher`) uses it."""

from __future__ import annotations

import sys
from pathlib import Path

# main.stop_grace_s, handed by the driver to its step processes (a warm step reads it when its
# launcher dies: SIGTERM, then SIGKILL this many seconds later).
STOP_GRACE_ENV = "MLPIPE_STOP_GRACE_S"

# Set in a step forked by the warm helper (mlpipe/pipeline/warm/), whose parent is the helper: the
# parent it would have had without the helper, i.e. that of the thin `python -m steps.<step>`
# launcher (`mlflow run`, or a shell under the uv / virtualenv env managers).
WARM_PARENT: int | None = None


def exit_now(code: int = 0) -> None:
    """End this process as Python would, without the interpreter's teardown: other threads are
    joined and the atexit handlers run (logging flushed, MLflow's own, the warm helper stopped),
    the standard streams flushed, then os._exit. Freeing every module's objects one by one took
    0.5 s of a cached pipeline's 5.5 s with MLflow, pandas and scikit-learn loaded (measured),
    and nothing in it is needed once the run has ended."""
    import atexit
    import os
    import threading

    threading._shutdown()  # noqa: SLF001 - what the interpreter does first at exit: join non-daemon threads
    atexit._run_exitfuncs()  # noqa: SLF001
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def launcher_pid() -> int:
    """The process that launched this step: its parent, or in a warm child the launcher's parent."""
    import os

    return WARM_PARENT if WARM_PARENT is not None else os.getppid()


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


def stop_with_parent() -> None:
    """Linux: SIGTERM reaches this process when the process that started it dies (`mlflow run`
    killed, the driver gone; through the `bash -c` of the uv and virtualenv env managers too),
    so no step or worker outlives its launcher. The server drains on
    SIGTERM and ends its run FINISHED; any other step stops at once (its run is left RUNNING, as
    after SIGKILL). Elsewhere, nothing. A warm child (forked by the helper, whose death must not
    stop it) is stopped by its launcher's death instead, through the launcher's connection."""
    if not sys.platform.startswith("linux") or WARM_PARENT is not None:
        return
    die_with_parent()
    _watch_launcher_behind_shell()


def die_with_parent() -> None:
    """Linux: SIGTERM to this process when its parent dies (prctl PR_SET_PDEATHSIG); no thread."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import os
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() == 1:  # the parent was already gone before the request
        os.kill(os.getpid(), signal.SIGTERM)


SHELLS = ("bash", "sh", "dash")


def _proc_stat(pid: int) -> tuple[str, str, int] | None:
    """(command name, state, parent pid) of a process from /proc, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
    return name, rest[0], int(rest[1])


def _watch_launcher_behind_shell(poll_s: float = 0.5) -> None:
    """Under `--env-manager uv` / `virtualenv`, `mlflow run` starts `bash -c "<activate> && python
    ..."`: the shell is this process's parent and it does not stop when `mlflow run` dies, so the
    parent-death signal never comes. A daemon thread then watches the shell's parent (the
    launcher) and sends this process SIGTERM once it is gone (or a zombie)."""
    import os
    import signal
    import threading
    import time

    shell = _proc_stat(os.getppid())
    if shell is None or shell[0] not in SHELLS or shell[2] <= 1:
        return
    launcher = shell[2]

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            found = _proc_stat(launcher)
            if found is None or found[1] == "Z":
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="mlpipe-launcher-watch", daemon=True).start()
