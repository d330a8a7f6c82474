"""The team's `mlflow server --app-name basic-auth`: started detached with its files in
`team.server.state_dir` (mode 0700: the auth config, the Flask secret, the credentials file, the
log, the PID), stopped by PID, found again by `status`."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mlpipe.errors import ConfigError, StorageError
from mlpipe.run.processes import exited, stop_group

ADMIN = "admin"


@dataclass(frozen=True)
class Paths:
    root: Path

    @property
    def credentials(self) -> Path:  # {"admin": "...", "alice": "..."}: passwords, mode 0600
        return self.root / "credentials.json"

    @property
    def auth_ini(self) -> Path:
        return self.root / "basic_auth.ini"

    @property
    def pid(self) -> Path:
        return self.root / "server.pid"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    @property
    def address(self) -> Path:  # the URL the running server was started at
        return self.root / "server.address"

    @property
    def secret(self) -> Path:
        return self.root / "flask_secret"


def paths(scfg) -> Paths:
    root = Path(str(scfg.state_dir)).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    return Paths(root)


def url(scfg) -> str:
    return f"http://{scfg.host}:{scfg.port}"


def write_private(path: Path, text: str) -> None:
    """A file only its owner can read, never readable by others even for a moment."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    path.chmod(0o600)


def credentials(where: Paths) -> dict[str, str]:
    return json.loads(where.credentials.read_text()) if where.credentials.exists() else {}


def save_credentials(where: Paths, creds: dict[str, str]) -> None:
    write_private(where.credentials, json.dumps(creds, indent=1, sort_keys=True))


def _secret(path: Path) -> str:
    if not path.exists():
        write_private(path, secrets.token_urlsafe(32))
    return path.read_text().strip()


def command(scfg, where: Paths) -> tuple[list[str], dict[str, str]]:
    """The server's command line and the environment it adds. The backend store's URL (which may
    hold a PostgreSQL password) goes by environment, out of the process list; MLflow's job runner
    (GenAI scorers, trace archival: nothing this project uses) is off, so the server is one
    process group of its own workers."""
    backend = scfg.backend_store_uri or f"sqlite:///{where.root / 'mlflow.db'}"
    artifacts = scfg.artifacts_destination or str(where.root / "artifacts")
    cmd = [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--artifacts-destination", artifacts,
           "--host", str(scfg.host), "--port", str(scfg.port), "--workers", str(scfg.workers)]
    return cmd, {"MLFLOW_BACKEND_STORE_URI": backend, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                 "MLFLOW_AUTH_CONFIG_PATH": str(where.auth_ini),
                 "MLFLOW_FLASK_SERVER_SECRET_KEY": _secret(where.secret)}


def running_pid(where: Paths) -> int | None:
    if not where.pid.exists():
        return None
    pid = int(where.pid.read_text())
    return None if exited(pid) else pid


def start(scfg) -> tuple[Paths, bool]:
    """Starts the server unless it runs already; (its paths, whether it was started now). The
    first start writes the auth config with a generated admin password (MLflow creates the admin
    user from it on an empty user store)."""
    where = paths(scfg)
    if running_pid(where):
        if recorded_url(where) not in (None, url(scfg)):
            raise ConfigError(f"team server: the server of {where.root} runs at {recorded_url(where)}, not at "
                              f"{url(scfg)}; stop it first, or give a second server its own "
                              "team.server.state_dir=<folder>")
        return where, False
    creds = credentials(where)
    if ADMIN not in creds:
        creds[ADMIN] = secrets.token_urlsafe(18)
        save_credentials(where, creds)
    write_private(where.auth_ini, "[mlflow]\ndefault_permission = READ\n"
                                  f"database_uri = sqlite:///{where.root / 'basic_auth.db'}\n"
                                  f"admin_username = {ADMIN}\nadmin_password = {creds[ADMIN]}\n"
                                  "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                                  # a checked login is remembered for 60 s: without it every request
                                  # (each tag, metric, artifact) pays a PBKDF2 hash of the password
                                  "auth_cache_ttl_seconds = 60\n")
    cmd, extra = command(scfg, where)
    env = {**os.environ, **extra}
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(key, None)
    _check_port_free(scfg)
    with where.log.open("ab") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    where.pid.write_text(str(proc.pid))
    where.address.write_text(url(scfg))
    _wait_healthy(scfg, proc, where)
    return where, True


def _unhealthy(address: str, timeout: float) -> str | None:
    """None when the server at `address` answers GET /health with 200 within `timeout`; else why not."""
    try:
        with urllib.request.urlopen(f"{address}/health", timeout=timeout) as resp:
            return None if resp.status == 200 else f"HTTP {resp.status}"
    except OSError as exc:
        return str(getattr(exc, "reason", None) or exc)


def recorded_url(where: Paths) -> str | None:
    """The address the server of this state dir was started at (None: never started here)."""
    return where.address.read_text().strip() if where.address.exists() else None


def probe(scfg, address: str | None = None) -> None:
    """One GET /health of the server (or of `address`), bounded by team.server.probe_timeout_s:
    a server that does not answer is a StorageError naming the address and the keys, in seconds."""
    address, timeout = address or url(scfg), float(scfg.probe_timeout_s)
    reason = _unhealthy(address, timeout)
    if reason is None:
        return
    raise StorageError(f"no MLflow server answers at {address} ({reason}; waited at most "
                       f"team.server.probe_timeout_s={timeout:g} s): start it (python -m mlpipe.team start) or set "
                       "team.server.host / team.server.port to where it runs")


def _check_port_free(scfg) -> None:
    import socket

    with socket.socket() as sock:
        # as the server itself binds: a port whose old connections linger in TIME_WAIT (a server
        # stopped a moment ago) is free; only a listener makes it taken
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((str(scfg.host), int(scfg.port)))
        except OSError as exc:
            raise ConfigError(f"team server: {scfg.host}:{scfg.port} is taken ({exc.strerror}); stop what uses it or "
                              "set team.server.port=<port>") from None


def _wait_healthy(scfg, proc: subprocess.Popen, where: Paths) -> None:
    deadline = time.monotonic() + float(scfg.start_timeout_s)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StorageError(f"team server exited with code {proc.returncode} at start; see {where.log}")
        if _unhealthy(url(scfg), 2) is None:
            return
        time.sleep(0.5)
    stop(scfg)
    raise StorageError(f"team server did not answer {url(scfg)}/health within team.server.start_timeout_s="
                       f"{scfg.start_timeout_s:g} s; see {where.log}")


def stop(scfg) -> bool:
    """SIGTERM to the server's process group (its workers too), SIGKILL to what lingers
    `team.server.stop_timeout_s` later; returns once no process of the group is left."""
    where = paths(scfg)
    pid = running_pid(where)
    if pid is None:
        where.pid.unlink(missing_ok=True)
        return False
    stop_group(pid, float(scfg.stop_timeout_s))
    where.pid.unlink(missing_ok=True)
    where.address.unlink(missing_ok=True)
    return True
