"""The launcher: `python -m steps.<step>` while MLPIPE_WARM_SOCKET is set hands its work to a
fork of the driver's warm helper and exits with the step's status (standard library only)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys

from mlpipe.pipeline.warm import DRIVER, MAX_REQUEST, PACKAGE, SOCKET_ENV, project_root

OFF = "main.warm_steps=false"
FORWARDED = (signal.SIGTERM, signal.SIGHUP)


class Fallback(Exception):
    """The helper did not take the step: the launcher runs it itself."""


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


def one_step(argv: list[str]) -> bool:
    """`--steps=<one step>` on the driver's command line (MLproject's `-P steps=train`): nothing to
    share between step processes, so no helper."""
    for arg in (a.strip("'\"") for a in argv):
        if arg.startswith("--steps="):
            names = [name.strip() for name in arg[len("--steps="):].split(",") if name.strip()]
            return len(names) == 1 and names[0] != "all"
    return False


def hand_off() -> None:
    """Run this step in a fork of the warm helper and exit with its status; return (after one
    line on stderr) when the helper does not take it, and the caller goes on as usual. In the
    driver, start the helper now, so that it imports while the driver does (not for one step:
    its own process imports what the helper would, and the helper's other imports are waste)."""
    path, module = os.environ.get(SOCKET_ENV), target(getattr(sys, "orig_argv", []))
    if module == DRIVER:
        if not turned_off(sys.argv) and not one_step(sys.argv):
            from mlpipe.pipeline.warm import control

            control.ensure(True)  # the config decides later: run_job's ensure() stops a helper it turns off
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
               "prefix": sys.prefix, "root": project_root(), "ppid": os.getppid(), "pgid": os.getpgrp()}
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
