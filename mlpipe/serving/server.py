"""The model server process: the checks before it starts, and uvicorn serving the app
(serving/app.py) in the foreground until SIGINT or SIGTERM, in one process or several workers."""

from __future__ import annotations

import os
from typing import Any

from mlpipe.errors import ConfigError, ServingError, one_line
from mlpipe.serving.records import db
from mlpipe.serving.app import create_app
from mlpipe.serving.spec import SPEC_ENV, ServeSpec
from mlpipe.serving.variants import LiveVariant


def uvicorn_config(scfg: dict) -> dict[str, Any]:
    limits = scfg["limits"]
    return {"host": scfg["host"], "port": int(scfg["port"]), "log_level": scfg.get("log_level", "warning"),
            "limit_concurrency": int(limits["max_connections"]), "backlog": int(limits["backlog"]),
            "timeout_keep_alive": int(limits["keep_alive_s"]),
            "timeout_graceful_shutdown": float(limits["graceful_shutdown_s"])}


class _Stopped:
    signal: str | None = None


def check_startable(spec: ServeSpec, scfg: dict) -> None:
    """What would stop uvicorn after the models are loaded, said as one clear error first: the
    port is taken, the records file cannot be opened, workers is not a positive number."""
    import socket

    if int(scfg["workers"]) < 1:
        raise ConfigError(f"serve.workers={scfg['workers']!r}; expected 1 or more")
    with socket.socket() as sock:
        try:
            sock.bind((scfg["host"], int(scfg["port"])))
        except OSError as exc:
            raise ServingError(f"cannot listen on {scfg['host']}:{scfg['port']}: {exc.strerror or exc}; "
                               "choose another serve.port") from None
    try:
        db.connect(spec.records, spec.records_timeout_s).close()
    except Exception as exc:  # noqa: BLE001 - sqlite3, psycopg and OS errors alike
        raise ServingError(f"cannot open the serving records at {db.display(spec.records)}: {one_line(exc)}; "
                           "set serve.records to a writable file or a reachable postgresql:// URL") from None


def serve(spec: ServeSpec, variants: list[LiveVariant], scfg: dict) -> str | None:
    """Serves in the foreground until SIGINT/SIGTERM, draining requests in flight first.
    Returns the name of the signal that stopped it."""
    import signal

    import uvicorn

    check_startable(spec, scfg)
    stopped = _Stopped()

    def note(signum, frame):  # uvicorn re-raises the signal after its shutdown; we just note it
        stopped.signal = signal.Signals(signum).name

    old = {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        workers = int(scfg["workers"])
        if workers > 1:
            os.environ[SPEC_ENV] = spec.to_json()
            uvicorn.run("mlpipe.serving.app:app_from_env", factory=True, workers=workers, **uvicorn_config(scfg))
        else:
            server = uvicorn.Server(uvicorn.Config(create_app(spec, variants), **uvicorn_config(scfg)))
            server.run()
            if not server.started and stopped.signal is None:
                raise ServingError(f"the server on {scfg['host']}:{scfg['port']} did not start (see the lines above)")
    except SystemExit as exc:  # uvicorn exits the process when it cannot start
        raise ServingError(f"the server on {scfg['host']}:{scfg['port']} did not start (exit {exc.code}; "
                           "see the lines above)") from None
    finally:
        # Once stopped by a signal, later ones are only noted: Ctrl-C reaches `mlflow run` too, which
        # then sends SIGTERM, and that must not kill this process between its drain and the end of
        # its run (the run would be left for `mlflow run` to mark FAILED).
        if stopped.signal is None:
            for s, handler in old.items():
                signal.signal(s, handler)
    return stopped.signal
