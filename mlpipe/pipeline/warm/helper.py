"""The helper process: `python -m mlpipe.pipeline.warm.helper <socket> <module>...` binds, imports
the step modules and what they import, then forks one child per request (standard library only
at import; the imports happen in `preload`)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys

from mlpipe.pipeline.warm import MAX_REQUEST, PACKAGE, project_root, send

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
    # runtime=onnx: train converts (skl2onnx imports onnx: 0.9 s), qa and serve run onnxruntime
    "skl2onnx",
    "skl2onnx.sklapi",
    "onnxruntime",
)


class Helper:
    """`python -m mlpipe.pipeline.warm.helper <socket> <module>...`: bind, import, then fork one child per
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
            send(conn, message)
            conn.close()

    def refusal(self, request: dict) -> str | None:
        """Why this request is not for this helper, or None."""
        import threading

        if request.get("module") not in self.modules:
            return f"it serves {', '.join(self.modules)}"
        if os.path.realpath(request.get("prefix", "")) != os.path.realpath(sys.prefix):
            return f"the step's Python environment {request.get('prefix')} is not the helper's {sys.prefix}"
        if request.get("root") != project_root():
            return f"the step's project {request.get('root')} is not the helper's {project_root()}"
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
                send(conn, {"refused": problem or "the standard streams did not arrive"})
                conn.close()
                return
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                from mlpipe.pipeline.warm.child import become_step

                become_step(request, fds, conn, [self.listener.fileno(), self.wake_r, self.wake_w])
            try:
                os.setpgid(pid, request["pgid"])  # also done by the child: whichever runs first
            except OSError:
                pass
            try:
                grouped = os.getpgid(pid) == request["pgid"]
            except ProcessLookupError:
                grouped = False
            send(conn, {"pid": pid, "grouped": grouped})
            self.children[pid] = conn
        except (OSError, ValueError) as exc:
            send(conn, {"refused": f"the helper failed to start the step: {exc}"})
            conn.close()
        finally:
            for fd in fds:
                os.close(fd)




if __name__ == "__main__":
    Helper(sys.argv[1], sys.argv[2:]).serve()
