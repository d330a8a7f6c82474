"""Running an app (server.py) in a background thread for a smoke test, and the smoke test:
real HTTP requests on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request

from mlpipe.errors import ServingError


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class BackgroundServer:
    """uvicorn in a daemon thread; `with BackgroundServer(app, host, ...) as url:` stops it on exit.
    It must answer /ping within `startup_timeout` seconds (serve.startup_timeout); on exit it
    finishes requests in flight for at most `shutdown_timeout` (serve.limits.graceful_shutdown_s)."""

    def __init__(self, app, host: str, *, startup_timeout: float, shutdown_timeout: float, log_level: str,
                 port: int = 0):
        import uvicorn

        self.host, self.port = host, port or free_port(host)
        self.server = uvicorn.Server(uvicorn.Config(app, host=self.host, port=self.port, log_level=log_level,
                                                    timeout_graceful_shutdown=shutdown_timeout))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.startup_timeout, self.shutdown_timeout = startup_timeout, shutdown_timeout

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while (remaining := deadline - time.monotonic()) > 0:
            if self.server.started:
                try:
                    status, _ = request(f"{self.url}/ping", None, timeout=remaining)
                    if status == 200:
                        return self.url
                except OSError:
                    pass
            if not self.thread.is_alive():
                break
            time.sleep(0.05)
        self.__exit__(None, None, None)
        raise ServingError(f"scoring server on {self.url} did not answer /ping within {self.startup_timeout} s")

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=self.shutdown_timeout + self.startup_timeout)  # its drain, then its lifespan's end


def request(url: str, payload: dict | None, timeout: float) -> tuple[int, bytes]:
    """A real HTTP request: GET without payload, POST JSON with it. Returns (status, body)."""
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def smoke(url: str, frame, timeout: float) -> dict:
    """POST rows as `dataframe_split`; the server must answer 200 with one prediction per row."""
    payload = {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}
    started = time.perf_counter()
    status, body = request(f"{url}/invocations", payload, timeout)
    latency_ms = (time.perf_counter() - started) * 1000
    if status != 200:
        raise ServingError(f"POST {url}/invocations answered {status}: {body[:300]!r}")
    predictions = json.loads(body).get("predictions")
    if not isinstance(predictions, list) or len(predictions) != len(frame):
        raise ServingError(f"POST {url}/invocations returned {predictions!r} for {len(frame)} rows")
    return {"status": status, "rows": len(frame), "latency_ms": round(latency_ms, 2), "predictions": predictions}


def smoke_test(app, scfg: dict, rows) -> dict:
    """serve.mode=smoke: the app on a free port in this process, `rows` sent over HTTP, stopped
    (`serve.host`, `startup_timeout`, `smoke_request_timeout`, `log_level`)."""
    with BackgroundServer(app, scfg["host"], startup_timeout=scfg["startup_timeout"], log_level=scfg["log_level"],
                          shutdown_timeout=scfg["limits"]["graceful_shutdown_s"]) as url:
        return smoke(url, rows, scfg["smoke_request_timeout"])


def test_rows(client, model_uri: str, n: int):
    """Rows from the test split of the model's pipeline, else the model's own input example."""
    import mlflow
    from mlflow.models import Model

    from mlpipe.registry import versions
    from mlpipe.run import handoff, outputs

    version = versions.version_for_uri(client, model_uri)
    preprocess_run_id = (version.tags or {}).get("lineage.preprocess_run_id") if version else None
    if preprocess_run_id:
        spec = handoff.read_json(client, preprocess_run_id, outputs.FEATURE_SPEC_ARTIFACT)
        test = handoff.read_frame(client, preprocess_run_id, outputs.split_artifact("test"))
        return test[spec["numeric"] + spec["categorical"]].head(n)
    example = Model.load(model_uri).load_input_example(mlflow.artifacts.download_artifacts(model_uri))
    return example.head(n)
