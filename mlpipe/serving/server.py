"""The model server: one or more variants behind one `/invocations`, wire-compatible with
`mlflow models serve`, with A/B routing, request records, micro-batching and alias pick-up.

Parsing, content types, schema enforcement and the JSON answer are MLflow's own
(`mlflow.pyfunc.scoring_server.invocations` and `predictions_to_json`): each request is parsed by
`invocations` with a capturing model, and the real model predicts batches of parsed frames.
"""

from __future__ import annotations

import asyncio
import gc
import io
import json
import os
import random
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlpipe.errors import ConfigError, ServingError, one_line
from mlpipe.serving import abtest, batching, records

SPEC_ENV = "MLPIPE_SERVE_SPEC"
VARIANT_HEADER, VERSION_HEADER, URI_HEADER, REQUEST_ID_HEADER = (
    "X-Variant", "X-Model-Version", "X-Model-Uri", "X-Request-Id")


# -- loading ------------------------------------------------------------------------------------

def load_model(model_uri: str, variant: str, spec: "ServeSpec") -> tuple[Any, str]:
    """The variant's model and the version it is, loaded only past the trust boundary: a model
    qa validated, its files unchanged since (registry/provenance.py; `serve.allow_unvalidated`
    skips that), in the configured format (`serialization`, `skops_trusted_types`:
    training/model_io.load_model). An alias is pinned to its version before anything is read."""
    from mlflow import MlflowClient

    from mlpipe.registry import provenance
    from mlpipe.registry.versions import parse_model_uri
    from mlpipe.training import model_io

    try:
        if spec.allow_unvalidated:
            version = resolve_version(model_uri)
            parsed = parse_model_uri(model_uri)
            pinned = f"models:/{parsed[0]}/{version}" if parsed and parsed[1] is not None else model_uri
            return model_io.load_model(pinned, spec.serialization, spec.trusted_types)[0], version
        proof = provenance.validated(MlflowClient(), model_uri,
                                     "serve a version qa validated, or set serve.allow_unvalidated=true")
        model, _ = model_io.load_model(proof.load_uri, spec.serialization, spec.trusted_types,
                                       expect_digest=proof.digest)
        return model, proof.version or resolve_version(model_uri)
    except Exception as exc:  # noqa: BLE001 - any load failure stops start-up with its reason
        raise ServingError(f"variant {variant!r}: cannot load model {model_uri}: {one_line(exc)}"
                           ) from exc


def author_of(model_uri: str, version: str) -> str:
    """The `team.member` tag of the registered version a variant serves ("" for anything else):
    every request record carries it, so the A/B report can say whose model answered."""
    from mlflow import MlflowClient

    from mlpipe.registry.versions import parse_model_uri

    parsed = parse_model_uri(model_uri)
    if not parsed or not str(version).isdigit():
        return ""
    try:
        return MlflowClient().get_model_version(parsed[0], str(version)).tags.get("team.member", "")
    except Exception:  # noqa: BLE001 - the author is a label; serving does not depend on it
        return ""


def resolve_version(model_uri: str) -> str:
    """The registry version a URI points at now (`models:/name@alias`, `models:/name/3`), else
    `run:<id>` for a `runs:/` URI, else `unregistered`."""
    from mlflow import MlflowClient

    from mlpipe.registry import versions

    parsed = versions.parse_model_uri(model_uri)
    if parsed is not None:
        name, alias, ref = parsed
        if alias is not None:
            return str(MlflowClient().get_model_version_by_alias(name, alias).version)
        if ref is not None and ref.isdigit():
            return ref
        if ref in (None, "latest"):
            latest = versions.latest(MlflowClient(), name)
            return str(latest.version) if latest else "unregistered"
    if model_uri.startswith("runs:/"):
        return "run:" + model_uri[len("runs:/"):].split("/")[0]
    return "unregistered"


def schema_of(model) -> dict | None:
    schema = model.metadata.get_input_schema()
    return None if schema is None else schema.to_dict()


def check_schemas(loaded: list[tuple[str, Any]]) -> None:
    """Every variant must take the same input: the first variant's schema is the reference."""
    first_name, first = loaded[0][0], schema_of(loaded[0][1])
    for name, model in loaded[1:]:
        other = schema_of(model)
        if other != first:
            raise ServingError(f"variants {first_name!r} and {name!r} take different inputs: "
                               f"{_schema_text(first)} vs {_schema_text(other)}; all variants must share one "
                               "input schema")


def _schema_text(schema: list | None) -> str:
    if not schema:
        return "(no signature)"
    return "[" + ", ".join(f"{c.get('name', '?')}:{c.get('type', '?')}" for c in schema) + "]"


@dataclass
class LiveVariant:
    name: str
    model_uri: str
    weight: float
    model: Any
    version: str
    batcher: "batching.MicroBatcher | None" = None
    author: str = ""  # the team member whose version this is (its `team.member` tag), else ""


# -- the app -------------------------------------------------------------------------------------

@dataclass
class ServeSpec:
    """Everything a server process needs, JSON-able (worker processes read it from SPEC_ENV)."""

    variants: list[dict]
    experiment: str
    records: str
    policy: str
    key_header: str
    override_header: str
    batching: dict
    limits: dict
    refresh_seconds: float
    flush_ms: float
    thompson_refresh_seconds: float
    # the variant the A/B report compares the others with (serve.ab.control, else the first)
    control: str
    # the trust boundary for model files (top-level `serialization`, `skops_trusted_types`)
    serialization: str
    trusted_types: list[str]
    # serve.allow_unvalidated: load models no passing qa run vouches for (registry/provenance.py)
    allow_unvalidated: bool = False
    seed: int | None = None  # tests: a seeded router
    workers: int = 1  # serve.workers: processes writing the same records

    @classmethod
    def from_config(cls, scfg: dict, default_uri: str, records_path: str, serialization: str,
                    trusted_types: list[str]) -> "ServeSpec":
        variants = abtest.parse_variants(abtest.configured_variants(scfg), default_uri)
        # types and ranges were checked when the config was composed (mlpipe/schema.py)
        routing, limits = scfg["routing"], scfg["limits"]
        return cls(variants=[v.__dict__ for v in variants], experiment=str(scfg["experiment"]),
                   records=records_path, policy=routing["policy"], key_header=routing["key_header"],
                   override_header=routing["override_header"], batching=dict(scfg["batching"]),
                   limits=dict(limits), refresh_seconds=float(scfg["refresh_seconds"]),
                   flush_ms=float(scfg["records_flush_ms"]),
                   thompson_refresh_seconds=float(routing["thompson_refresh_seconds"]),
                   serialization=serialization, trusted_types=list(trusted_types),
                   allow_unvalidated=bool(scfg["allow_unvalidated"]), control=_control(scfg, variants),
                   workers=int(scfg["workers"]))

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> "ServeSpec":
        return cls(**json.loads(text))


def _control(scfg: dict, variants) -> str:
    names = [v.name for v in variants]
    control = scfg["ab"]["control"] or names[0]
    if control not in names:
        raise ConfigError(f"serve.ab.control={control!r} is not a served variant; variants: {', '.join(names)}")
    return control


def load_variants(spec: ServeSpec) -> list[LiveVariant]:
    """Loads every variant (a failure names the variant and the URI) and checks their schemas."""
    loaded = []
    for v in spec.variants:
        model, version = load_model(v["model_uri"], v["name"], spec)
        loaded.append(LiveVariant(v["name"], v["model_uri"], float(v["weight"]), model, version,
                                  author=author_of(v["model_uri"], version)))
    check_schemas([(v.name, v.model) for v in loaded])
    return loaded


def create_app(spec: ServeSpec, variants: list[LiveVariant] | None = None):
    """The Starlette app. Variants already loaded (the step process checked them) are reused;
    worker processes load their own."""
    from contextlib import asynccontextmanager

    from mlflow.pyfunc.scoring_server import predictions_to_json
    from mlflow.version import VERSION
    from starlette.applications import Starlette
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import Response
    from starlette.routing import Route

    state: dict[str, Any] = {"variants": variants}
    rng = random.Random(spec.seed)
    nprng = np.random.default_rng(spec.seed)
    max_body = int(float(spec.limits["max_body_mb"]) * 1024 * 1024)
    body_timeout, request_timeout = float(spec.limits["body_timeout_s"]), float(spec.limits["request_timeout_s"])

    @asynccontextmanager
    async def lifespan(app):
        if state["variants"] is None:
            state["variants"] = load_variants(spec)
        live: list[LiveVariant] = state["variants"]
        state["by_name"] = {v.name: v for v in live}
        state["weights"] = [v.weight for v in live]
        state["schema"] = live[0].model.metadata.get_input_schema()
        state["store"] = records.RecordStore(spec.records, spec.flush_ms, shared=spec.workers > 1)
        state["store"].record_experiment(spec.experiment, spec.variants, spec.control)
        state["bandit"] = ([0] * len(live), [0] * len(live))
        for v in live:
            v.batcher = batching.MicroBatcher(v, state["schema"], spec.batching["max_rows"], spec.batching["max_wait_ms"],
                                              bool(spec.batching["enabled"]), bool(spec.batching["adaptive"]))
            v.batcher.start()
        # Start-up leaves millions of long-lived objects (MLflow, scikit-learn, pandas, the models);
        # a full collection scanning them paused every request for 200-250 ms, which was most of
        # the p99 at 50 clients (docs/serving.md). Out of the collector's reach from now on; what
        # requests allocate is still collected.
        gc.collect()
        gc.freeze()
        tasks = []
        if spec.refresh_seconds > 0 and any("@" in v.model_uri for v in live):
            tasks.append(asyncio.create_task(_refresh_aliases(live, spec, state)))
        if spec.policy == "thompson":
            tasks.append(asyncio.create_task(_refresh_bandit(state, spec)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for v in live:
                v.batcher.close()
            state["store"].close()

    def choose(request: Request) -> tuple[LiveVariant | None, str | None]:
        live = state["variants"]
        forced = request.headers.get(spec.override_header)
        if forced is not None:
            variant = state["by_name"].get(forced)
            if variant is None:
                return None, f"{spec.override_header}: no variant {forced!r}; variants: {', '.join(state['by_name'])}"
            return variant, None
        if len(live) == 1:
            return live[0], None
        if spec.policy == "thompson":
            good, bad = state["bandit"]
            return live[abtest.thompson(good, bad, nprng)], None
        return live[abtest.assign(state["weights"], spec.experiment, request.headers.get(spec.key_header), rng)], None

    async def read_body(request: Request, what: str) -> bytes:
        """The whole body: _TooLarge over serve.limits.max_body_mb, a 408 _Timeout when it has not
        arrived within serve.limits.body_timeout_s. asyncio.timeout, not wait_for: on Python 3.11
        wait_for wraps its awaitable in a task of its own, on every request."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_body:
            raise _TooLarge()
        chunks, size = [], 0
        try:
            async with asyncio.timeout(body_timeout):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > max_body:
                        raise _TooLarge()
                    chunks.append(chunk)
        except TimeoutError:
            raise _Timeout(408, f"{what} body not received within serve.limits.body_timeout_s={body_timeout}")
        return b"".join(chunks)

    async def invocations(request: Request) -> Response:
        started = time.perf_counter()
        request_id = uuid.uuid4().hex
        variant, problem = choose(request)
        headers = {REQUEST_ID_HEADER: request_id}
        if variant is None:
            return Response(json.dumps({"error_code": "BAD_REQUEST", "message": problem}), 400,
                            media_type="application/json", headers=headers)
        headers |= {VARIANT_HEADER: variant.name, VERSION_HEADER: variant.version, URI_HEADER: variant.model_uri}
        body_json, answer = None, batching.Answer()
        try:
            body = await read_body(request, "request")
            try:
                async with asyncio.timeout(request_timeout):
                    answer = await variant.batcher.submit(body, request.headers.get("content-type"))
            except TimeoutError:
                raise _Timeout(504, f"prediction took over serve.limits.request_timeout_s={request_timeout}")
            headers[VERSION_HEADER] = answer.version or variant.version
            if answer.error is not None:
                raise answer.error
            if answer.http is not None:
                status, content, mimetype = answer.http
                response = Response(content, status, media_type=mimetype, headers=headers)
            else:
                out = io.StringIO()
                predictions_to_json(answer.predictions, out)
                body_json = out.getvalue()
                response = Response(body_json, 200, media_type="application/json", headers=headers)
        except _TooLarge:
            response = _json_error(413, "REQUEST_TOO_LARGE",
                                   f"request body over serve.limits.max_body_mb={spec.limits['max_body_mb']}", headers)
        except _Timeout as exc:
            response = _json_error(exc.status, "TIMEOUT", exc.message, headers)
        except ClientDisconnect:
            response = Response(b"", 499, headers=headers)
        except Exception as exc:  # noqa: BLE001 - MLflow's status and message for bad input
            status, content = batching.error_payload(exc)
            response = Response(content, status, media_type="application/json", headers=headers)
        latency = (time.perf_counter() - started) * 1000
        rows = answer.rows if response.status_code == 200 else 0
        state["store"].append({"request_id": request_id, "ts": time.time(), "experiment": spec.experiment,
                               "variant": variant.name, "model_uri": variant.model_uri, "model_version": headers[VERSION_HEADER],
                               "author": variant.author, "status": response.status_code, "latency_ms": latency, "rows": rows,
                               "predictions": body_json})
        return response

    async def ping(request: Request) -> Response:
        return Response("\n", 200, media_type="application/json")

    async def version(request: Request) -> Response:
        return Response(VERSION, 200, media_type="application/json")

    async def metrics(request: Request) -> Response:
        text = records.prometheus(await asyncio.to_thread(state["store"].aggregates))
        return Response(text, 200, media_type="text/plain; version=0.0.4")

    async def variants_view(request: Request) -> Response:
        view = [{"name": v.name, "model_uri": v.model_uri, "model_version": v.version, "weight": v.weight,
                 "batches": v.batcher.batches if v.batcher else 0,
                 "requests": v.batcher.requests if v.batcher else 0,
                 "waits": v.batcher.waits if v.batcher else 0} for v in state["variants"]]
        return Response(json.dumps({"experiment": spec.experiment, "policy": spec.policy, "variants": view}), 200,
                        media_type="application/json")

    async def feedback(request: Request) -> Response:
        try:
            payload = json.loads(await read_body(request, "feedback"))
            request_id, label = payload["request_id"], payload["label"]
            if not isinstance(request_id, str):
                raise TypeError("request_id must be a string")
        except _TooLarge:
            return _json_error(413, "REQUEST_TOO_LARGE", "feedback body too large")
        except _Timeout as exc:
            return _json_error(exc.status, "TIMEOUT", exc.message)
        except (ValueError, KeyError, TypeError) as exc:
            return _json_error(400, "BAD_REQUEST",
                               f'expected JSON {{"request_id": "<X-Request-Id of a response>", "label": ...}}: {exc}')
        if not await asyncio.to_thread(state["store"].add_feedback, request_id, label):
            return _json_error(404, "NOT_FOUND", f"no recorded request {request_id!r}")
        return Response(json.dumps({"request_id": request_id, "recorded": True}), 200, media_type="application/json")

    routes = [Route("/invocations", invocations, methods=["POST"]), Route("/ping", ping, methods=["GET"]),
              Route("/health", ping, methods=["GET"]), Route("/version", version, methods=["GET"]),
              Route("/metrics", metrics, methods=["GET"]), Route("/variants", variants_view, methods=["GET"]),
              Route("/feedback", feedback, methods=["POST"])]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.mlpipe = state
    return app


class _TooLarge(Exception):
    pass


class _Timeout(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _json_error(status: int, code: str, message: str, headers: dict | None = None):
    from starlette.responses import Response

    return Response(json.dumps({"error_code": code, "message": message}), status, media_type="application/json",
                    headers=headers)


async def _refresh_aliases(live: list[LiveVariant], spec: "ServeSpec", state: dict) -> None:
    """Every `refresh_seconds`, re-resolve `models:/name@alias` variants (refresh_variant)."""
    refused: set[tuple[str, str]] = set()
    while True:
        await asyncio.sleep(spec.refresh_seconds)
        for v in live:
            if "@" not in v.model_uri:
                continue
            try:
                line, model, version = await asyncio.to_thread(refresh_variant, v, spec, refused)
            except Exception as exc:  # noqa: BLE001 - keep serving the loaded model
                line, model = f"cannot refresh {v.model_uri}: {one_line(exc)}; still serving version {v.version}", None
            if model is not None:  # swapped in on the event loop: requests in flight finish on the old one
                author = await asyncio.to_thread(author_of, v.model_uri, version)
                v.model, v.version, v.author = model, version, author
            if line:
                print(f"[mlpipe] serve: {line}", file=sys.stderr, flush=True)


def refresh_variant(v: LiveVariant, spec: "ServeSpec", refused: set) -> tuple[str | None, Any, str]:
    """One look at where a variant's alias points (blocking: run in a thread). A moved alias whose
    new version loads (past the trust boundary) and takes the same input is returned to swap in;
    one that does not is said once and remembered in `refused`, and the variant keeps serving
    its version. Returns (the line to log or None, the new model or None, its version)."""
    from mlpipe.registry.versions import parse_model_uri

    version = resolve_version(v.model_uri)
    if version == v.version or (v.model_uri, version) in refused:
        return None, None, version
    name = parse_model_uri(v.model_uri)[0]
    try:
        model, version = load_model(f"models:/{name}/{version}", v.name, spec)
    except ServingError as exc:
        refused.add((v.model_uri, version))
        return f"{v.model_uri} moved to version {version}, refused: {one_line(exc)}; still serving version " \
               f"{v.version}", None, version
    if schema_of(model) != schema_of(v.model):
        refused.add((v.model_uri, version))
        return (f"{v.model_uri} moved to version {version}, whose input schema differs; still serving version "
                f"{v.version}"), None, version
    return f"variant {v.name!r}: {v.model_uri} moved, version {v.version} -> {version}", model, version


async def _refresh_bandit(state: dict, spec: ServeSpec) -> None:
    names = [v.name for v in state["variants"]]
    while True:
        try:
            state["bandit"] = await asyncio.to_thread(state["store"].feedback_counts, spec.experiment, names)
        except Exception as exc:  # noqa: BLE001
            print(f"[mlpipe] serve: cannot read feedback for thompson routing: {exc}", file=sys.stderr, flush=True)
        await asyncio.sleep(spec.thompson_refresh_seconds)


def app_from_env():
    """uvicorn factory for worker processes (serve.workers > 1): the spec comes from SPEC_ENV."""
    return create_app(ServeSpec.from_json(os.environ[SPEC_ENV]))


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
        records.connect(spec.records).close()
    except Exception as exc:  # noqa: BLE001 - sqlite3, psycopg and OS errors alike
        raise ServingError(f"cannot open the serving records at {records.display(spec.records)}: {one_line(exc)}; "
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
            uvicorn.run("mlpipe.serving.server:app_from_env", factory=True, workers=workers, **uvicorn_config(scfg))
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
