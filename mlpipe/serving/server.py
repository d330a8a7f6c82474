"""The model server: one or more variants behind one `/invocations`, wire-compatible with
`mlflow models serve`, with A/B routing, request records, micro-batching and alias pick-up.

Parsing, content types, schema enforcement and the JSON answer are MLflow's own
(`mlflow.pyfunc.scoring_server.invocations` and `predictions_to_json`): each request is parsed by
`invocations` with a capturing model, and the real model predicts batches of parsed frames.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlpipe.errors import ConfigError, ServingError, one_line
from mlpipe.serving import abtest, records

SPEC_ENV = "MLPIPE_SERVE_SPEC"
VARIANT_HEADER, VERSION_HEADER, URI_HEADER, REQUEST_ID_HEADER = (
    "X-Variant", "X-Model-Version", "X-Model-Uri", "X-Request-Id")


# -- loading ------------------------------------------------------------------------------------

def load_model(model_uri: str, variant: str, spec: "ServeSpec"):
    """The variant's model, loaded only past the trust boundary (`serialization`,
    `skops_trusted_types`: training/model_io.load_model)."""
    from mlpipe.training import model_io

    try:
        return model_io.load_model(model_uri, spec.serialization, spec.trusted_types)
    except Exception as exc:  # noqa: BLE001 - any load failure stops start-up with its reason
        raise ServingError(f"variant {variant!r}: cannot load model {model_uri}: {one_line(exc)}"
                           ) from exc


def resolve_version(model_uri: str) -> str:
    """The registry version a URI points at now (`models:/name@alias`, `models:/name/3`), else
    `run:<id>` for a `runs:/` URI, else `unregistered`."""
    from mlflow import MlflowClient

    from mlpipe.registry.versions import parse_model_uri

    parsed = parse_model_uri(model_uri)
    if parsed is not None:
        name, alias, ref = parsed
        if alias is not None:
            return str(MlflowClient().get_model_version_by_alias(name, alias).version)
        if ref is not None and ref.isdigit():
            return ref
        if ref in (None, "latest"):
            latest = MlflowClient().search_model_versions(f"name='{name}'", order_by=["version_number DESC"],
                                                          max_results=1)
            return str(latest[0].version) if latest else "unregistered"
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
    batcher: "MicroBatcher | None" = None


# -- parsing with MLflow's own code ------------------------------------------------------------

class _Capture:
    """Stands in for the model in `scoring_server.invocations`: MLflow parses the body (content
    type, JSON/CSV/Parquet, schema-guided types) and hands the result to `predict`, which keeps it."""

    def __init__(self, metadata):
        self.metadata = metadata
        self.data = self.params = None

    def predict(self, data, params=None):
        self.data, self.params = data, params
        return []


def parse(body: bytes, content_type: str | None, metadata, input_schema) -> tuple[Any, Any] | tuple[None, tuple]:
    """(data, params) or (None, (status, text, mimetype)) for what MLflow answers without predicting."""
    from mlflow.pyfunc import scoring_server

    capture = _Capture(metadata)
    result = scoring_server.invocations(body, content_type or "", capture, input_schema)
    if result.status != 200:
        return None, (result.status, result.response, result.mimetype)
    return capture.data, capture.params


def error_payload(exc: BaseException) -> tuple[int, str]:
    """What MLflow's server answers for an exception raised while parsing or predicting."""
    import traceback

    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import BAD_REQUEST

    if not isinstance(exc, MlflowException):
        exc = MlflowException(
            "Encountered an unexpected error while evaluating the model. Verify that the serialized input "
            f"Dataframe is compatible with the model for inference. Error: {type(exc).__name__}: {exc}",
            error_code=BAD_REQUEST, stack_trace="".join(traceback.format_exception(exc)))
    return exc.get_http_status_code(), exc.serialize_as_json()


# -- micro-batching -----------------------------------------------------------------------------

MERGEABLE = ("dataframe_records", "dataframe_split")


def merge_key(body: bytes, content_type: str | None) -> tuple[tuple, list] | None:
    """For a plain JSON `dataframe_records` / `dataframe_split` body whose rows all have the same
    columns: ((format, columns), rows). Requests with the same key can be parsed as one payload.
    Anything else (CSV, Parquet, instances/inputs, params, ragged rows, bad JSON) returns None and
    is parsed alone, by MLflow, exactly as `mlflow models serve` would."""
    if not content_type:
        return None
    mime, _, rest = content_type.partition(";")
    if mime.strip().lower() != "application/json" or (rest and rest.strip().lower() != "charset=utf-8"):
        return None
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(payload, dict) or len(payload) != 1:
        return None
    fmt, value = next(iter(payload.items()))
    if fmt == "dataframe_records":
        if not isinstance(value, list) or not value or not all(isinstance(r, dict) for r in value):
            return None
        columns = tuple(value[0])
        if any(tuple(r) != columns for r in value):
            return None
        return (fmt, columns), value
    if fmt == "dataframe_split":
        if not isinstance(value, dict) or set(value) - {"columns", "data", "index"} or \
                not isinstance(value.get("columns"), list) or not isinstance(value.get("data"), list):
            return None
        columns, rows = tuple(value["columns"]), value["data"]
        if not rows or not all(isinstance(r, list) and len(r) == len(columns) for r in rows):
            return None
        return (fmt, columns), rows
    return None


def merged_payload(key: tuple, parts: list[list]) -> dict:
    fmt, columns = key
    rows = [row for part in parts for row in part]
    return {fmt: rows} if fmt == "dataframe_records" else {fmt: {"columns": list(columns), "data": rows}}


def split_predictions(raw: Any, sizes: list[int]) -> list[Any]:
    """One batch's predictions cut back into the requests' parts, in order."""
    import pandas as pd

    total = sum(sizes)
    if isinstance(raw, (pd.DataFrame, pd.Series)):
        if len(raw) != total:
            raise ValueError(f"{len(raw)} predictions for {total} rows")
        raw = raw.reset_index(drop=True)
        cut = lambda a, b: raw.iloc[a:b].reset_index(drop=True)  # noqa: E731
    elif isinstance(raw, (np.ndarray, list)):
        if len(raw) != total:
            raise ValueError(f"{len(raw)} predictions for {total} rows")
        cut = lambda a, b: raw[a:b]  # noqa: E731
    else:
        raise ValueError(f"cannot split predictions of type {type(raw).__name__}")
    parts, start = [], 0
    for n in sizes:
        parts.append(cut(start, start + n))
        start += n
    return parts


@dataclass
class Answer:
    """One request's outcome: predictions and their row count, MLflow's own non-200 answer
    (status, text, mimetype), or the exception to report."""

    predictions: Any = None
    rows: int = 0
    version: str | None = None
    http: tuple | None = None
    error: BaseException | None = None


@dataclass
class _Item:
    body: bytes
    content_type: str | None
    future: asyncio.Future


def _predict_one(model, input_schema, body: bytes, content_type: str | None) -> Answer:
    """Exactly what `mlflow models serve` does for one request: MLflow parses, the model predicts."""
    import inspect

    try:
        data, params = parse(body, content_type, model.metadata, input_schema)
        if data is None:
            return Answer(http=params)
        if params and "params" in inspect.signature(model.predict).parameters:
            raw = model.predict(data, params=params)
        else:
            raw = model.predict(data)
        return Answer(raw, len(data) if hasattr(data, "__len__") else 0)
    except Exception as exc:  # noqa: BLE001 - the request's own error
        return Answer(error=exc)


def predict_batch(model, input_schema, requests: list[tuple[bytes, str | None]], max_rows: int) -> list[Answer]:
    """Runs in the predict thread. Same-shaped JSON frames (see merge_key) are merged into one
    payload, parsed once by MLflow (`infer_and_parse_data` with the model's schema) and predicted
    once, at most `max_rows` rows per call; everything else, and every request of a merged call
    that failed, is answered alone by `_predict_one`, so one bad request never fails the others
    and each gets the error MLflow would give it."""
    from mlflow.pyfunc.scoring_server import infer_and_parse_data

    answers: list[Answer | None] = [None] * len(requests)
    groups: dict[tuple, list[tuple[int, list]]] = {}
    mergeable = input_schema is not None and len(requests) > 1
    for i, (body, content_type) in enumerate(requests):
        found = merge_key(body, content_type) if mergeable else None
        if found is not None:
            groups.setdefault(found[0], []).append((i, found[1]))
    for key, members in groups.items():
        chunk: list[tuple[int, list]] = []
        for member in members + [None]:
            if member is not None and (not chunk or sum(len(r) for _, r in chunk) + len(member[1]) <= max_rows):
                chunk.append(member)
                continue
            if len(chunk) > 1:
                try:
                    frame = infer_and_parse_data(merged_payload(key, [rows for _, rows in chunk]), input_schema)
                    parts = split_predictions(model.predict(frame), [len(rows) for _, rows in chunk])
                    for (i, rows), part in zip(chunk, parts):
                        answers[i] = Answer(part, len(rows))
                except Exception as exc:  # noqa: BLE001 - answered one by one below, each with its own error
                    print(f"[mlpipe] serve: a merged predict call of {len(chunk)} requests failed "
                          f"({type(exc).__name__}: {one_line(exc)[:200]}); answering them one by one",
                          file=sys.stderr, flush=True)
            chunk = [member] if member is not None else []
    for i, (body, content_type) in enumerate(requests):
        if answers[i] is None:
            answers[i] = _predict_one(model, input_schema, body, content_type)
    return answers


class MicroBatcher:
    """Merges concurrent requests to one variant into one predict call.

    A batch starts with the first waiting request and takes whatever else is waiting, up to
    `max_rows` requests (and rows per predict call), waiting at most `max_wait_ms` for more; while
    the model predicts (in a worker thread), new requests queue, so batches grow with the load
    and shrink to one request when it is quiet. enabled=false: one request per call."""

    def __init__(self, variant: LiveVariant, input_schema, max_rows: int, max_wait_ms: float, enabled: bool = True):
        self.variant, self.input_schema = variant, input_schema
        self.max_rows, self.max_wait = max(1, int(max_rows)), max_wait_ms / 1000
        self.limit = self.max_rows if enabled else 1
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"predict-{variant.name}")
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.batches = 0
        self.requests = 0

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def submit(self, body: bytes, content_type: str | None) -> Answer:
        item = _Item(body, content_type, asyncio.get_running_loop().create_future())
        await self.queue.put(item)
        return await item.future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.limit:
                try:
                    batch.append(self.queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except (asyncio.TimeoutError, TimeoutError):
                    break
            batch = [item for item in batch if not item.future.done()]  # timed out meanwhile
            if not batch:
                continue
            self.batches += 1
            self.requests += len(batch)
            # One model for the whole batch, even if an alias moves meanwhile.
            model, version = self.variant.model, self.variant.version
            try:
                answers = await loop.run_in_executor(
                    self.executor, predict_batch, model, self.input_schema,
                    [(item.body, item.content_type) for item in batch], self.max_rows)
            except Exception as exc:  # noqa: BLE001 - delivered to every waiting request
                answers = [Answer(error=exc) for _ in batch]
            for item, answer in zip(batch, answers):
                answer.version = version
                if not item.future.done():
                    item.future.set_result(answer)

    def close(self) -> None:
        if self.task:
            self.task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)


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
    seed: int | None = None  # tests: a seeded router

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
                   control=_control(scfg, variants))

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
        model = load_model(v["model_uri"], v["name"], spec)
        try:
            version = resolve_version(v["model_uri"])
        except Exception as exc:  # noqa: BLE001
            raise ServingError(f"variant {v['name']!r}: cannot resolve {v['model_uri']}: {exc}") from exc
        loaded.append(LiveVariant(v["name"], v["model_uri"], float(v["weight"]), model, version))
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
        state["store"] = records.RecordStore(spec.records, spec.flush_ms)
        state["store"].record_experiment(spec.experiment, spec.variants, spec.control)
        state["bandit"] = ([0] * len(live), [0] * len(live))
        for v in live:
            v.batcher = MicroBatcher(v, state["schema"], spec.batching["max_rows"], spec.batching["max_wait_ms"],
                                     bool(spec.batching["enabled"]))
            v.batcher.start()
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

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_body:
            raise _TooLarge()
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body:
                raise _TooLarge()
            chunks.append(chunk)
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
        body_json, answer = None, Answer()
        try:
            try:
                body = await asyncio.wait_for(read_body(request), body_timeout)
            except (asyncio.TimeoutError, TimeoutError):
                raise _Timeout(408, f"request body not received within serve.limits.body_timeout_s={body_timeout}")
            try:
                answer = await asyncio.wait_for(variant.batcher.submit(body, request.headers.get("content-type")),
                                                request_timeout)
            except (asyncio.TimeoutError, TimeoutError):
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
            status, content = error_payload(exc)
            response = Response(content, status, media_type="application/json", headers=headers)
        latency = (time.perf_counter() - started) * 1000
        rows = answer.rows if response.status_code == 200 else 0
        state["store"].append({"request_id": request_id, "ts": time.time(), "experiment": spec.experiment,
                               "variant": variant.name, "model_uri": variant.model_uri, "model_version": headers[VERSION_HEADER],
                               "status": response.status_code, "latency_ms": latency, "rows": rows,
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
                 "requests": v.batcher.requests if v.batcher else 0} for v in state["variants"]]
        return Response(json.dumps({"experiment": spec.experiment, "policy": spec.policy, "variants": view}), 200,
                        media_type="application/json")

    async def feedback(request: Request) -> Response:
        try:
            payload = json.loads(await asyncio.wait_for(read_body(request), body_timeout))
            request_id, label = payload["request_id"], payload["label"]
            if not isinstance(request_id, str):
                raise TypeError("request_id must be a string")
        except _TooLarge:
            return _json_error(413, "REQUEST_TOO_LARGE", "feedback body too large")
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
    """Every `every` seconds, re-resolve `models:/name@alias` variants; a moved alias loads the
    new version and swaps it in (requests in flight finish on the old one)."""
    from mlpipe.registry.versions import parse_model_uri

    while True:
        await asyncio.sleep(spec.refresh_seconds)
        for v in live:
            if "@" not in v.model_uri:
                continue
            try:
                version = await asyncio.to_thread(resolve_version, v.model_uri)
                if version == v.version:
                    continue
                name = parse_model_uri(v.model_uri)[0]
                model = await asyncio.to_thread(load_model, f"models:/{name}/{version}", v.name, spec)
                if schema_of(model) != schema_of(v.model):
                    print(f"[mlpipe] serve: {v.model_uri} moved to version {version}, whose input schema differs; "
                          f"still serving version {v.version}", file=sys.stderr, flush=True)
                    continue
                old = v.version
                v.model, v.version = model, version
                print(f"[mlpipe] serve: variant {v.name!r}: {v.model_uri} moved, version {old} -> {version}",
                      file=sys.stderr, flush=True)
            except Exception as exc:  # noqa: BLE001 - keep serving the loaded model
                print(f"[mlpipe] serve: cannot refresh {v.model_uri}: {one_line(exc)}",
                      file=sys.stderr, flush=True)


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
    except Exception as exc:  # noqa: BLE001 - sqlite3 and OS errors alike
        raise ServingError(f"cannot open the serving records at {spec.records}: {exc}; set serve.records to a "
                           "writable file") from None


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
        for s, handler in old.items():
            signal.signal(s, handler)
    return stopped.signal
