"""A fork of the helper becoming the step: the launcher's streams, working directory, environment
and process group, a fresh interpreter's state, the module run as `__main__`, its exit status
sent back (standard library only at import)."""

from __future__ import annotations

import os
import signal
import socket
import sys

from mlpipe.pipeline.warm import SOCKET_ENV, TRACE_ENV, send

def become_step(request: dict, fds: list[int], conn: socket.socket, helper_fds: list[int]) -> None:
    """Turn this fork into `python -m <module> <args>` as the launcher would have run it, run it,
    and exit with its status (never returns)."""
    code = 70
    try:
        before = set(sys.modules)
        for fd in helper_fds:
            os.close(fd)
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            os.setpgid(0, request["pgid"])
        except OSError:
            pass
        for target_fd, fd in enumerate(fds):
            os.dup2(fd, target_fd)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        _name_process(request["module"])
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ.pop(SOCKET_ENV, None)
        _reset_process(request)
        _watch_launcher(conn)
        sys.argv = ["-m", *request["args"]]
        code = run_module(request["module"])
        if os.environ.get(TRACE_ENV) == "1":
            _trace(request["module"], before)
    except BaseException:  # noqa: BLE001 - the set-up itself failed: say so, and exit non-zero
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        if code >= 0:
            send(conn, {"exit": code})  # for the launcher, should the helper be gone by now
        os._exit(code if code >= 0 else 1)


def _name_process(module: str) -> None:
    """`ps -o comm`, `top` and psutil's name() show the step (`steps.train`), not the helper's
    name; the command line stays the helper's (`ps -f` shows `python -m mlpipe.pipeline.warm.helper ...`)."""
    import ctypes

    pr_set_name = 15
    try:
        ctypes.CDLL(None).prctl(pr_set_name, module.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _reset_process(request: dict) -> None:
    """What a new interpreter would have: buffering for these streams, fresh random state,
    MLflow's log level from this environment, and the launcher's parent as this step's."""
    from mlpipe.run import processes

    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
        stream.reconfigure(line_buffering=unbuffered or fd == 2 or os.isatty(fd), write_through=unbuffered)
    processes.WARM_PARENT = int(request["ppid"])
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()  # a new interpreter seeds from the OS; a fork copies the helper's
    if "mlflow" in sys.modules and os.environ.get("MLFLOW_CONFIGURE_LOGGING", "true").lower() != "false":
        from mlflow.utils.logging_utils import _configure_mlflow_loggers

        _configure_mlflow_loggers(root_module_name="mlflow")


def _watch_launcher(conn: socket.socket) -> None:
    """SIGTERM to this process once its launcher is gone (its end of the connection closes),
    SIGKILL main.stop_grace_s later (handed over by the driver in MLPIPE_STOP_GRACE_S; without it,
    SIGTERM alone): a launcher killed with SIGKILL takes its step with it."""
    import threading
    import time

    from mlpipe.run.processes import STOP_GRACE_ENV

    grace = os.environ.get(STOP_GRACE_ENV)

    def watch() -> None:
        try:
            while conn.recv(64):
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGTERM)
        if grace is not None:
            time.sleep(float(grace))
            os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="mlpipe-warm-launcher", daemon=True).start()


def run_module(module: str) -> int:
    """`python -m module` in this process: its exit code, after the interpreter's own exit steps
    (non-daemon threads joined, atexit handlers run). Ctrl-C ends it by SIGINT, as Python does."""
    import atexit
    import runpy
    import threading

    code = 0
    interrupted = False
    sys.modules.pop(module, None)  # the helper imported it; `python -m` runs a fresh copy as __main__
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exit_code(exc.code)
    except KeyboardInterrupt:
        interrupted = True
        sys.excepthook(*sys.exc_info())
    except BaseException:  # noqa: BLE001 - uncaught: a traceback and exit status 1, as Python does
        sys.excepthook(*sys.exc_info())
        code = 1
    threading._shutdown()  # noqa: SLF001 - what the interpreter does at exit: join non-daemon threads
    atexit._run_exitfuncs()  # noqa: SLF001
    if interrupted:
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return code


def exit_code(code: object) -> int:
    """The status `sys.exit(code)` gives: None is 0, an int is itself, anything else is printed
    to stderr and is 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _trace(module: str, before: set[str]) -> None:
    new = sorted(set(sys.modules) - before)
    tops = sorted({name.split(".")[0] for name in new})
    print(f"mlpipe warm trace: {module} imported {len(new)} modules after the fork: {' '.join(tops)}",
          file=sys.stderr, flush=True)
    if os.environ.get(TRACE_ENV + "_ALL") == "1":
        print("\n".join(new), file=sys.stderr, flush=True)
