"""Real servers for end-to-end tests, on 127.0.0.1, each stopped by PID: moto's S3 server, a TCP
proxy that can cut an endpoint and bring it back, and `mlflow server`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

BIN = Path(sys.executable).parent
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"server exited {proc.returncode} before listening on {port}")
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")
            time.sleep(0.2)


def wait_group_gone(pgid: int, timeout: float) -> None:
    """Until every process of the group has exited: `mlflow run` exits at once on SIGTERM, while
    the step it launched is still draining and writing."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError(f"processes of group {pgid} still running after {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group (servers spawn workers), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=15)


class MotoS3:
    """`moto_server` in its own process: a real S3 endpoint over HTTP. `auth=True` checks
    credentials (no user exists, so every key is invalid)."""

    def __init__(self, log: Path, auth: bool = False):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, **CREDENTIALS}
        if auth:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
        self.log = log.open("w")
        self.proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        wait_for_port(self.port, self.proc)

    def client(self, url: str | None = None):
        import boto3

        return boto3.client("s3", endpoint_url=url or self.url, **{
            "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"], "region_name": "us-east-1"})

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def stop(self) -> None:
        stop(self.proc)
        self.log.close()


class TcpProxy:
    """127.0.0.1:<port> -> target port. `down()` closes the listener and every connection (the
    endpoint is gone: connections are refused); `up()` listens again on the same port."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.up()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def down(self) -> None:
        if self._listener is not None:
            # shutdown first: close() alone leaves a thread blocked in accept() on a socket that
            # still takes connections (Linux), so the endpoint would not be gone
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self._sockets.clear()


class MlflowServer:
    """`mlflow server` with a SQLite backend, proxying artifacts to `artifacts_destination`."""

    def __init__(self, workdir: Path, artifacts_destination: str, env: dict[str, str]):
        self.workdir, self.destination, self.env = workdir, artifacts_destination, env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.starts = 0
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.starts += 1
        log = (self.workdir / f"server-{self.starts}.log").open("w")
        self.proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.workdir / 'server.db'}",
             "--artifacts-destination", self.destination, "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir, start_new_session=True)
        wait_for_port(self.port, self.proc, timeout=120)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


# No usage reports, and no token authentication: a local `ray.init` elsewhere turns it on and
# leaves ~/.ray/auth_token behind, which a cluster started later would then demand.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


class RayNode:
    """`ray start --block` (a head, or a node joining `address`) with one CPU, in its own process
    group, with no AWS or MLflow settings of its own; stopped with the whole group (Ray's
    processes hold no state a test needs)."""

    def __init__(self, name: str, temp_dir: Path, address: str | None = None):
        self.name, self.port, self.temp_dir = name, free_port(), temp_dir
        cmd = [str(BIN / "ray"), "start", "--block", "--num-cpus=1", "--node-ip-address=127.0.0.1",
               "--disable-usage-stats"]
        cmd += ["--head", f"--port={self.port}", "--include-dashboard=false", f"--temp-dir={temp_dir}"] \
            if address is None else [f"--address={address}"]
        self.address = address or f"127.0.0.1:{self.port}"
        self.log = (temp_dir.parent / f"{name}.log").open("w")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "MLPIPE_"))}
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env={**env, **RAY_ENV},
                                     start_new_session=True)

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=15)
        wait_group_gone(self.proc.pid, 30)
        self.log.close()


def tracking_server_on_s3(workdir: Path, bucket: str) -> tuple[MlflowServer, MotoS3]:
    """moto's S3 server with `bucket`, and an `mlflow server` whose artifacts it proxies there
    (clients need no AWS credentials). Stop both: server first, then S3."""
    s3 = MotoS3(workdir / "moto.log")
    s3.client().create_bucket(Bucket=bucket)
    env = {**os.environ, **CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": s3.url, "MLFLOW_DISABLE_TELEMETRY": "true",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return MlflowServer(workdir, f"s3://{bucket}/artifacts", env), s3


def tracking_server_fixture(bucket: str):
    """A module-scoped fixture `server`: (the mlflow server, moto S3) from tracking_server_on_s3,
    both stopped after the module. In a test module: `server = tracking_server_fixture(BUCKET)`."""
    import pytest

    @pytest.fixture(scope="module")
    def server(tmp_path_factory):
        mlflow_server, s3 = tracking_server_on_s3(tmp_path_factory.mktemp("server"), bucket)
        yield mlflow_server, s3
        mlflow_server.stop()
        s3.stop()

    return server
