"""Warm step processes: one helper per pipeline imports the heavy libraries once, and every step
process that `mlflow run` starts hands its work over to a fork of it.

The driver starts the helper (`python -m mlpipe.pipeline.warm.helper <socket> <module>...`) and
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
  SIGTERM, as a step gets from its parent-death signal, and SIGKILL main.stop_grace_s later.
- A helper that cannot be reached, refuses or dies before answering: the launcher says so on
  stderr and runs the step in its own process, exactly as without the helper.

The helper forks only from a single thread, with no tracking store, run or lock opened: it
imports modules and does nothing else. Standard library only at import: the launcher must
start in milliseconds.

- `launcher`: `python -m steps.<step>` handing its work over (`hand_off`);
- `helper`: the helper process, forking a child per step;
- `child`: a fork of the helper becoming the step;
- `control`: the driver's side, starting its helper once and stopping it.
"""

from __future__ import annotations

import json
import os
import socket

SOCKET_ENV = "MLPIPE_WARM_SOCKET"
TRACE_ENV = "MLPIPE_WARM_TRACE"  # 1: each child prints the modules it imported after the fork
HELPER_MODULE = "mlpipe.pipeline.warm.helper"  # `python -m` this: the helper process
PACKAGE = "steps"
DRIVER = "steps.main"  # not handed over: it starts the helper
MAX_REQUEST = 1 << 22


def project_root() -> str:
    """The project folder this code is imported from (the one holding `mlpipe/` and `steps/`):
    `mlpipe.config.PROJECT_ROOT`, without importing that module's Hydra and OmegaConf."""
    here = os.path.realpath(__file__)  # <root>/mlpipe/pipeline/warm/__init__.py
    for _ in range(4):
        here = os.path.dirname(here)
    return here


def send(conn: socket.socket, message: dict) -> None:
    """One JSON message to a launcher; nothing when it is gone (nobody to tell)."""
    try:
        conn.send(json.dumps(message).encode())
    except OSError:
        pass
