"""The driver's side of the warm helper: started once per driver process (every job of a sweep
shares it), its pid for the step timer, stopped at exit (standard library only at import)."""

from __future__ import annotations

import os
import sys

from mlpipe.pipeline.warm import HELPER_MODULE, PACKAGE, SOCKET_ENV, project_root

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
    process = subprocess.Popen([sys.executable, "-m", HELPER_MODULE, path, *modules], cwd=project_root(), env=env,
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
