"""Warm step processes: one helper per pipeline imports the heavy libraries once, and every step
process that `mlflow run` starts hands its work over to a fork of it.

The driver starts the helper (`python -m mlpipe.run.warm <socket> <module>...`, `Helper`) and
puts its socket in MLPIPE_WARM_SOCKET for the step processes. `python -m steps.<step>` then
stays a thin launcher: `steps/__init__.py` calls `hand_off` before any heavy import, which sends
the step's arguments, environment, working directory and standard streams (file descriptors,
SCM_RIGHTS) over the Unix socket. The helper forks a child that becomes the step (the module
run as __main__, as `python -m` would) and reports its exit status; the launcher exits with it.
Gunicorn's preload, Android's zygote and Python's forkserver start method work the same way.

The launcher stays the process `mlflow run` waits for, and so the one to signal:
- SIGTERM and SIGHUP to it go on to the child; SIGINT too, unless the child shares its process
  group (a terminal's Ctrl-C then reaches both already).
- The child holds the launcher's connection: when the launcher dies (SIGKILL), the child gets
  SIGTERM, as a step gets from its parent-death signal, and SIGKILL STOP_GRACE_S later.
- A helper that cannot be reached, refuses or dies before answering: the launcher says so on
  stderr and runs the step in its own process, exactly as without the helper.

The helper forks only from a single thread, with no tracking store, run or lock opened: it
imports modules and does nothing else. Standard library only at import: the launcher must
start in milliseconds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys

SOCKET_ENV = "MLPIPE_WARM_SOCKET"
TRACE_ENV = "MLPIPE_WARM_TRACE"  # 1: each child prints the modules it imported after the fork
PACKAGE = "steps"
DRIVER = "steps.main"  # not handed over: it starts the helper
OFF = "main.warm_steps=false"
STOP_GRACE_S = 10.0
MAX_REQUEST = 1 << 22
FORWARDED = (signal.SIGTERM, signal.SIGHUP)

# Imported by the helper beyond the step modules: what the steps import only inside functions.
# Missing ones are skipped (an optional dependency); MLPIPE_WARM_TRACE=1 shows what is left.
EXTRA_IMPORTS = (
    "mlflow.sklearn",
    "mlflow.models.evaluation.default_evaluator",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
    "mlflow.store.artifact.local_artifact_repo",
    "mlflow.system_metrics.system_metrics_monitor",
    "matplotlib.pyplot",
    "scipy.stats",
    "sklearn.ensemble",
    "sklearn.linear_model",
    "sklearn.tree",
    "psutil",
)


class Fallback(Exception):
    """The helper did not take the step: the launcher runs it itself."""


# -- the launcher: `python -m steps.<step>` while MLPIPE_WARM_SOCKET is set ------------------------
def target(orig_argv: list[str]) -> str | None:
    """`steps.<step>` when this interpreter was started as `python [options] -m steps.<step> ...`."""
    try:
        module = orig_argv[orig_argv.index("-m") + 1]
    except (ValueError, IndexError):
        return None
    return module if module.startswith(PACKAGE + ".") else None


def turned_off(argv: list[str]) -> bool:
    """`main.warm_steps=false` among the driver's overrides (`--overrides="... main.warm_steps=false"`)."""
    tokens = " ".join(argv).replace("'", " ").replace('"', " ").lower().split()
    return any(t.lstrip("+") == OFF or t.endswith("=" + OFF) for t in tokens)


def hand_off() -> None:
    """Run this step in a fork of the warm helper and exit with its status; return (after one
    line on stderr) when the helper does not take it, and the caller goes on as usual. In the
    driver, start the helper now, so that it imports while the driver does."""
    path, module = os.environ.get(SOCKET_ENV), target(getattr(sys, "orig_argv", []))
    if module == DRIVER:
        if not turned_off(sys.argv):
            ensure(True)  # the config decides later: run_job's ensure() stops a helper it turns off
        return
    if not path or module is None:
        return
    try:
        outcome = launch(path, module, sys.argv[1:])
    except Fallback as exc:
        print(f"mlpipe: the warm helper did not take {module} ({exc}); running it in its own process",
              file=sys.stderr, flush=True)
        return
    finish(outcome)


def finish(outcome: int) -> None:
    """Exit as the step did: with its code, or by its signal (-N), so the parent reads the same status."""
    if outcome < 0:
        if -outcome not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(-outcome, signal.SIG_DFL)
        os.kill(os.getpid(), -outcome)
    sys.exit(outcome)


def _stream_fds() -> list[int]:
    fds = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:  # a closed standard stream: the child gets /dev/null there
            fds.append(os.open(os.devnull, os.O_RDWR))
    return fds


def launch(path: str, module: str, args: list[str]) -> int:
    """The step's exit code, or -N when a signal N ended it. Raises Fallback before the child exists."""
    from mlpipe.run.processes import stop_with_parent

    stop_with_parent()  # SIGTERM here when `mlflow run` dies; it goes on to the child
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.connect(path)
    except OSError as exc:
        raise Fallback(f"cannot connect to {path}: {exc.strerror or exc}") from None
    request = {"module": module, "args": args, "cwd": os.getcwd(), "env": dict(os.environ),
               "prefix": sys.prefix, "root": _root(), "ppid": os.getppid(), "pgid": os.getpgrp()}
    child: dict[str, object] = {}

    def forward(signum, _frame) -> None:
        if signum == signal.SIGINT and child.get("grouped"):
            return  # the child is in this process group: Ctrl-C reached it too
        if "pid" in child:
            try:
                os.kill(int(child["pid"]), signum)
            except ProcessLookupError:
                pass
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt

    for sig in (*FORWARDED, signal.SIGINT):
        signal.signal(sig, forward)
    try:
        socket.send_fds(sock, [json.dumps(request).encode()], _stream_fds())
    except OSError as exc:
        raise Fallback(f"sending the step to {path} failed: {exc.strerror or exc}") from None
    while True:
        try:
            data = sock.recv(MAX_REQUEST)
        except ConnectionResetError:
            data = b""
        if not data:
            if "pid" not in child:
                raise Fallback("the helper closed the connection before starting the step")
            print(f"mlpipe: the warm helper and the step process {child['pid']} of {module} ended without "
                  f"reporting an exit status", file=sys.stderr, flush=True)
            return 1
        message = json.loads(data)
        if "refused" in message:
            raise Fallback(message["refused"])
        if "pid" in message:
            child.update(message)
        elif "signal" in message:
            return -int(message["signal"])
        elif "exit" in message:
            return int(message["exit"])


def _root() -> str:
    """The project folder this code is imported from (the one holding `mlpipe/` and `steps/`):
    `mlpipe.config.PROJECT_ROOT`, without importing that module's Hydra and OmegaConf."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))


# -- the helper ----------------------------------------------------------------------------------
class Helper:
    """`python -m mlpipe.run.warm <socket> <module>...`: bind, import, then fork one child per
    request until SIGTERM. Single-threaded: the children are reaped between requests (SIGCHLD
    wakes the select through a self-pipe)."""

    def __init__(self, path: str, modules: list[str]):
        self.path, self.modules, self.children = path, list(modules), {}
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(path)  # before the imports: launchers wait in the backlog meanwhile
        self.listener.listen(64)
        self.wake_r, self.wake_w = os.pipe()
        for fd in (self.wake_r, self.wake_w):
            os.set_blocking(fd, False)
        self.stopping = False

    def serve(self) -> None:
        import select

        from mlpipe.run.processes import die_with_parent

        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver stops it; Ctrl-C is for the steps
        die_with_parent()  # and it ends with the driver, whatever ends the driver (no thread: it forks)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self.wake_w)
        try:
            self.preload(between=lambda: self._serve_once(select, 0.0))
            while not self.stopping:
                self._serve_once(select, 5.0)
        finally:
            self.listener.close()
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def _serve_once(self, select, timeout: float) -> None:
        ready, _, _ = select.select([self.listener, self.wake_r], [], [], timeout)
        self._drain_wakeups()
        self._reap()
        if self.listener in ready and not self.stopping:
            conn, _ = self.listener.accept()
            self._take(conn)

    def _stop(self, *_) -> None:
        self.stopping = True

    def preload(self, between=lambda: None) -> None:
        """Import the served modules, then EXTRA_IMPORTS; `between` imports, a launcher already
        waiting is served (the first step need not wait for the last import: a child imports what
        its helper had not yet)."""
        import gc
        import importlib

        for name in (*self.modules, *EXTRA_IMPORTS):
            between()
            try:
                importlib.import_module(name)
            except ImportError as exc:
                if name in self.modules:
                    raise
                print(f"mlpipe: the warm helper could not import {name} ({exc}); the steps import it themselves",
                      file=sys.stderr, flush=True)
        steps = [name.split(".", 1)[1] for name in self.modules if name.startswith(PACKAGE + ".")]
        if steps:  # the code digest in each step's cache key: of the very code the children run
            from mlpipe.pipeline import cache

            for step in steps:
                cache.code_digest(step)
        gc.collect()
        gc.freeze()  # imported objects stay out of the children's collections: fewer pages copied

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is None:
                continue
            message = ({"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status)
                       else {"exit": os.waitstatus_to_exitcode(status)})
            _send(conn, message)
            conn.close()

    def refusal(self, request: dict) -> str | None:
        """Why this request is not for this helper, or None."""
        import threading

        if request.get("module") not in self.modules:
            return f"it serves {', '.join(self.modules)}"
        if os.path.realpath(request.get("prefix", "")) != os.path.realpath(sys.prefix):
            return f"the step's Python environment {request.get('prefix')} is not the helper's {sys.prefix}"
        if request.get("root") != _root():
            return f"the step's project {request.get('root')} is not the helper's {_root()}"
        if threading.active_count() > 1:  # forking beside another thread copies its locks held
            return f"the helper has {threading.active_count()} threads and forks only from one"
        return None

    def _take(self, conn: socket.socket) -> None:
        fds: list[int] = []
        try:
            data, fds, _, _ = socket.recv_fds(conn, MAX_REQUEST, 3)
            request = json.loads(data)
            problem = self.refusal(request)
            if problem or len(fds) != 3:
                _send(conn, {"refused": problem or "the standard streams did not arrive"})
                conn.close()
                return
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                become_step(request, fds, conn, [self.listener.fileno(), self.wake_r, self.wake_w])
            try:
                os.setpgid(pid, request["pgid"])  # also done by the child: whichever runs first
            except OSError:
                pass
            try:
                grouped = os.getpgid(pid) == request["pgid"]
            except ProcessLookupError:
                grouped = False
            _send(conn, {"pid": pid, "grouped": grouped})
            self.children[pid] = conn
        except (OSError, ValueError) as exc:
            _send(conn, {"refused": f"the helper failed to start the step: {exc}"})
            conn.close()
        finally:
            for fd in fds:
                os.close(fd)


def _send(conn: socket.socket, message: dict) -> None:
    try:
        conn.send(json.dumps(message).encode())
    except OSError:  # the launcher is gone: nobody to tell
        pass


# -- the driver's side ----------------------------------------------------------------------------
_started: dict[str, object] = {}


def ensure(enabled: bool) -> None:
    """The driver's helper for the pipeline's steps, started once per driver process (every job
    of a sweep shares it) with its socket in MLPIPE_WARM_SOCKET for the step processes; stopped
    when `enabled` is false (main.warm_steps) and at exit."""
    import atexit
    import subprocess
    import tempfile

    from mlpipe.pipeline.spec import STEPS

    if not enabled or not sys.platform.startswith("linux"):
        stop()
        return
    if _started:
        return
    inherited = os.environ.get(SOCKET_ENV)
    # MLPIPE_SWEEP_RUN_ID is driver.SWEEP_ENV, spelled out: this module imports nothing heavy.
    if inherited and os.path.exists(inherited) and os.environ.get("MLPIPE_SWEEP_RUN_ID"):
        # A sweep job in a launcher's worker process (joblib, submitit's local executor): the
        # sweep parent's helper, already warm, serves its steps too. Not ours to stop.
        _started.update(process=None, folder=None, joined=inherited)
        return
    folder = tempfile.mkdtemp(prefix="mlpipe-warm-")  # 0700: only this user reaches the socket
    path = os.path.join(folder, "helper.sock")
    env = {k: v for k, v in os.environ.items() if k != SOCKET_ENV}
    modules = [f"{PACKAGE}.{step}" for step in STEPS]
    process = subprocess.Popen([sys.executable, "-m", "mlpipe.run.warm", path, *modules], cwd=_root(), env=env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, process_group=0)
    _started.update(process=process, folder=folder)
    os.environ[SOCKET_ENV] = path
    atexit.register(stop)


def helper_pid() -> int | None:
    """This driver's own helper; None when there is none or it joined its sweep parent's."""
    process = _started.get("process")
    return process.pid if process is not None else None


def stop() -> None:
    """SIGKILL to the helper, which holds nothing to flush (its socket folder goes here): at the
    driver's exit it may still be importing, and a SIGTERM would wait for the imports to end.
    Steps it forked are not its to stop: each ends with its own launcher."""
    import shutil

    os.environ.pop(SOCKET_ENV, None)
    _started.pop("joined", None)
    process, folder = _started.pop("process", None), _started.pop("folder", None)
    if process is not None:
        process.kill()
        process.wait()
    if folder:
        shutil.rmtree(str(folder), ignore_errors=True)


# -- the child: from a fork of the helper to the step ---------------------------------------------
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
            _send(conn, {"exit": code})  # for the launcher, should the helper be gone by now
        os._exit(code if code >= 0 else 1)


def _name_process(module: str) -> None:
    """`ps -o comm`, `top` and psutil's name() show the step (`steps.train`), not the helper's
    name; the command line stays the helper's (`ps -f` shows `python -m mlpipe.run.warm ...`)."""
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
    SIGKILL STOP_GRACE_S later: a launcher killed with SIGKILL takes its step with it."""
    import threading
    import time

    def watch() -> None:
        try:
            while conn.recv(64):
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(STOP_GRACE_S)
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


if __name__ == "__main__":
    Helper(sys.argv[1], sys.argv[2:]).serve()
