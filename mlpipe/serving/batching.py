"""Parsing and micro-batching for the server: each request body goes through MLflow's own
`scoring_server.invocations` (content type, JSON/CSV/Parquet, the model's schema) with a
capturing stand-in model; concurrent same-shaped JSON frames are merged into one predict call.
Under serve.runtime=onnx a JSON frame whose values all fit the signature's types as they are
goes straight to onnxruntime as arrays (`direct`), without a DataFrame; anything else is parsed
by MLflow as above, with its conversions and its errors.
No HTTP here: the app (app.py) hands bodies in and gets `Answer`s back."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mlpipe.errors import one_line

if TYPE_CHECKING:
    from mlpipe.serving.variants import LiveVariant


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
    elif (cause := schema_cause(exc)) is not None:
        exc = MlflowException.invalid_parameter_value(f"the request does not fit the model's input schema: {cause}",
                                                      error_class=getattr(exc, "error_class", None))
    return exc.get_http_status_code(), exc.serialize_as_json()


def schema_cause(exc: BaseException) -> str | None:
    """MLflow's schema enforcement failure says "Failed to enforce schema of data '<every row>'
    with schema '<every column>'. Error: <cause>": the cause alone (missing and extra columns, a
    type that does not convert), without the payload and the schema; None for other errors."""
    from mlflow.exceptions import MlflowException

    if not isinstance(exc, MlflowException) or not exc.message.startswith("Failed to enforce schema of data"):
        return None
    cause = exc.__context__
    if cause is None:
        return None
    return cause.message if isinstance(cause, MlflowException) else str(cause)


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


def row_keys(columns: tuple, rows: list) -> list[str]:
    """One digest per row of a JSON frame (as merge_key returns it): the same values under the same
    column names give the same key, in either format and any column order. The A/B report counts
    each distinct labelled row once (serve.ab.repeats)."""
    def key(row: Any) -> str:
        values = row if isinstance(row, dict) else dict(zip(columns, row))
        text = json.dumps(values, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()

    return [key(row) for row in rows]


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


def direct(model, frame: tuple[tuple, list] | None):
    """The predictions of a model that takes JSON frame rows as they are (the ONNX runtime's
    `predict_rows`), or None: then MLflow parses the body and the model predicts the DataFrame."""
    fast = getattr(model, "predict_rows", None)
    return None if fast is None or frame is None else fast(frame[0][1], frame[1])


@dataclass
class Answer:
    """One request's outcome: predictions and their row count, MLflow's own non-200 answer
    (status, text, mimetype), or the exception to report."""

    predictions: Any = None
    rows: int = 0
    keys: list[str] | None = None  # row_keys of a JSON frame; None for other inputs
    frame: tuple | None = None  # the request's JSON frame, merge_key's ((format, columns), rows); None for others
    body: bytes | None = None  # the request's body as it came (what serve.inputs keeps when it keeps every column)
    version: str | None = None
    http: tuple | None = None
    error: BaseException | None = None


@dataclass
class _Item:
    body: bytes
    content_type: str | None
    future: asyncio.Future


def _predict_one(model, input_schema, body: bytes, content_type: str | None,
                 frame: tuple[tuple, list] | None) -> Answer:
    """What `mlflow models serve` does for one request: MLflow parses, the model predicts (or the
    frame's rows go straight to the model: `direct`). `frame`: the body's merge_key (its row keys
    come from it)."""
    import inspect

    try:
        raw = direct(model, frame)
        if raw is not None:
            return Answer(raw, len(frame[1]), row_keys(frame[0][1], frame[1]))
        data, params = parse(body, content_type, model.metadata, input_schema)
        if data is None:
            return Answer(http=params)
        if params and "params" in inspect.signature(model.predict).parameters:
            raw = model.predict(data, params=params)
        else:
            raw = model.predict(data)
        keys = row_keys(frame[0][1], frame[1]) if frame else None
        return Answer(raw, len(data) if hasattr(data, "__len__") else 0, keys)
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
    frames = [merge_key(body, content_type) for body, content_type in requests]  # also each request's row keys
    groups: dict[tuple, list[tuple[int, list]]] = {}
    if input_schema is not None and len(requests) > 1:
        for i, found in enumerate(frames):
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
                    raw = direct(model, (key, [row for _, rows in chunk for row in rows]))
                    if raw is None:
                        raw = model.predict(infer_and_parse_data(merged_payload(key, [rows for _, rows in chunk]),
                                                                 input_schema))
                    parts = split_predictions(raw, [len(rows) for _, rows in chunk])
                    for (i, rows), part in zip(chunk, parts):
                        answers[i] = Answer(part, len(rows), row_keys(key[1], rows))
                except Exception as exc:  # noqa: BLE001 - answered one by one below, each with its own error
                    print(f"[mlpipe] serve: a merged predict call of {len(chunk)} requests failed "
                          f"({type(exc).__name__}: {one_line(exc)[:200]}); answering them one by one",
                          file=sys.stderr, flush=True)
            chunk = [member] if member is not None else []
    for i, (body, content_type) in enumerate(requests):
        if answers[i] is None:
            answers[i] = _predict_one(model, input_schema, body, content_type, frames[i])
        answers[i].frame, answers[i].body = frames[i], requests[i][0]  # what serve.inputs keeps (serving/capture.py)
    return answers


class ArrivalWindow:
    """Whether a batch should wait for more requests, learned from the traffic itself.

    Each time a batch takes its first request, a window of `max_wait` seconds opens, and closes
    early when the batch's answers go out; the requests that arrive inside it are the ones that
    could have joined the batch had it waited (whether it did or not). Their moving average
    (weight `smoothing` on the newest window: serve.batching.adaptive_smoothing) is the number of
    requests a wait is expected to bring; the next batch waits only when that is at least
    `threshold` (serve.batching.adaptive_threshold). One client that sends its
    next request after its answer brings nobody: no wait. Fifty clients whose answers went out
    together send a burst: wait."""

    def __init__(self, max_wait: float, smoothing: float, threshold: float):
        self.max_wait, self.smoothing, self.threshold = max_wait, smoothing, threshold
        self.expected = 0.0
        self.window_end: float | None = None
        self.count = 0

    def arrived(self, now: float) -> None:
        if self.window_end is not None and now <= self.window_end:
            self.count += 1

    def should_wait(self) -> bool:
        """Folds the last window in; call once per batch, before `opened`."""
        if self.window_end is not None:
            self.expected += self.smoothing * (self.count - self.expected)
            self.window_end = None
        return self.max_wait > 0 and self.expected >= self.threshold

    def opened(self, now: float) -> None:
        self.window_end, self.count = now + self.max_wait, 0

    def answered(self, now: float) -> None:
        """The batch's answers went out: what arrives from now on could not have joined it."""
        if self.window_end is not None:
            self.window_end = min(self.window_end, math.nextafter(now, -math.inf))


class MicroBatcher:
    """Merges concurrent requests to one variant into one predict call.

    A batch starts as soon as the predictor is free, with the first waiting request, and takes
    whatever else is waiting, up to `max_rows` requests (and rows per predict call). While the
    model predicts (in a worker thread), new requests queue, so batches grow with the load and
    shrink to one request when it is quiet. An ONNX model (serve.runtime=onnx) predicts on the
    event loop itself: a batch costs tens of microseconds there, less than handing it to a thread
    and back; requests that arrive meanwhile wait in the socket buffers and form the next batch.
    A batch then waits up to `max_wait_ms` for more, unless adaptive (the default) and
    `ArrivalWindow` expects nobody to come: a lone client is not held. enabled=false: one
    request per call. `settings` is `serve.batching`."""

    def __init__(self, variant: LiveVariant, input_schema, settings: dict[str, Any]):
        self.variant, self.input_schema = variant, input_schema
        self.max_rows, self.max_wait = max(1, int(settings["max_rows"])), float(settings["max_wait_ms"]) / 1000
        enabled = bool(settings["enabled"])
        self.limit = self.max_rows if enabled else 1
        self.window = ArrivalWindow(self.max_wait, float(settings["adaptive_smoothing"]),
                                    float(settings["adaptive_threshold"])) if settings["adaptive"] and enabled else None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"predict-{variant.name}")
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.batches = 0
        self.requests = 0
        self.waits = 0  # batches that waited for more requests

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def submit(self, body: bytes, content_type: str | None) -> Answer:
        loop = asyncio.get_running_loop()
        if self.window is not None:
            self.window.arrived(loop.time())
        item = _Item(body, content_type, loop.create_future())
        await self.queue.put(item)
        return await item.future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            now = loop.time()
            deadline = now + self.max_wait
            if self.window is not None:
                if not self.window.should_wait():
                    deadline = now
                self.window.opened(now)
            waited = False
            while len(batch) < self.limit:
                try:
                    batch.append(self.queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                waited = True
                try:  # wait_for, not asyncio.timeout: measured, the latter cost ~15% req/s at 50 clients here
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except (asyncio.TimeoutError, TimeoutError):
                    break
            batch = [item for item in batch if not item.future.done()]  # timed out meanwhile
            if not batch:
                if self.window is not None:
                    self.window.answered(loop.time())
                continue
            self.waits += waited
            self.batches += 1
            self.requests += len(batch)
            # One model for the whole batch, even if an alias moves meanwhile.
            model, version = self.variant.model, self.variant.version
            requests = [(item.body, item.content_type) for item in batch]
            try:
                if getattr(model, "predict_rows", None) is not None:  # onnxruntime: tens of microseconds
                    answers = predict_batch(model, self.input_schema, requests, self.max_rows)
                else:
                    answers = await loop.run_in_executor(self.executor, predict_batch, model, self.input_schema,
                                                         requests, self.max_rows)
            except Exception as exc:  # noqa: BLE001 - delivered to every waiting request
                answers = [Answer(error=exc) for _ in batch]
            if self.window is not None:
                self.window.answered(loop.time())
            for item, answer in zip(batch, answers):
                answer.version = version
                if not item.future.done():
                    item.future.set_result(answer)

    def close(self) -> None:
        if self.task:
            self.task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)
