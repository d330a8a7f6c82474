"""The Starlette app of one server process: `ServingApp` holds its variants, router, batchers and
records, and each route is one of its methods.

Parsing, content types, schema enforcement and the JSON answer are MLflow's own
(`mlflow.pyfunc.scoring_server.invocations` and `predictions_to_json`): each request is parsed by
`invocations` with a capturing model, and the real model predicts batches of parsed frames
(serving/batching.py).
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
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from mlflow.pyfunc.scoring_server import predictions_to_json
from mlflow.version import VERSION
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import Route

from mlpipe.serving import abtest, batching, capture, feedback
from mlpipe.serving.records import writer
from mlpipe.serving.spec import SPEC_ENV, ServeSpec
from mlpipe.serving.variants import CANARY, LiveVariant, canary_uri, load_variants, refresh_aliases

VARIANT_HEADER, VERSION_HEADER, URI_HEADER, REQUEST_ID_HEADER = (
    "X-Variant", "X-Model-Version", "X-Model-Uri", "X-Request-Id")


class _TooLarge(Exception):
    pass


class _Timeout(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def answer_json(predictions: Any) -> str:
    """MLflow's `predictions_to_json`: for a 1-D array of numbers or strings (what a scikit-learn
    or ONNX model answers) the same text written directly, else MLflow's own function."""
    if isinstance(predictions, np.ndarray) and predictions.ndim == 1 and predictions.dtype.kind in "iuf":
        return json.dumps({"predictions": predictions.tolist()})
    if isinstance(predictions, np.ndarray) and predictions.ndim == 1 and predictions.dtype.kind == "O" and \
            all(type(v) is str for v in predictions):
        return json.dumps({"predictions": predictions.tolist()})
    out = io.StringIO()
    predictions_to_json(predictions, out)
    return out.getvalue()


def _labels(label: Any, rows: int, max_chars: int) -> Any:
    """The label set as stored: as sent (one value, or a list of one per row), once checked."""
    feedback.labels_for(label, rows, max_chars)
    return label


def _json_error(status: int, code: str, message: str, headers: dict | None = None):
    return Response(json.dumps({"error_code": code, "message": message}), status, media_type="application/json",
                    headers=headers)


class ServingApp:
    """One server process: its variants (loaded here unless the step process passes them in),
    the router, one micro-batcher per variant, the record store, and the routes."""

    def __init__(self, spec: ServeSpec, variants: list[LiveVariant] | None = None):
        self.spec = spec
        self.variants = variants
        self.by_name: dict[str, LiveVariant] = {}
        self.store: writer.RecordStore | None = None
        self.bandit: tuple[list[int], list[int]] = ([], [])  # (good, bad) feedback per variant, for thompson
        self.secret = b""  # serve.feedback.secret_file's: X-Feedback-Token's key
        self.rng, self.nprng = random.Random(spec.seed), np.random.default_rng(spec.seed)
        self.max_body = int(float(spec.limits["max_body_mb"]) * 1024 * 1024)
        self.body_timeout = float(spec.limits["body_timeout_s"])
        self.request_timeout = float(spec.limits["request_timeout_s"])

    # -- life ---------------------------------------------------------------------------------
    @asynccontextmanager
    async def lifespan(self, app):
        self._start()
        tasks = []
        if self.spec.refresh_seconds > 0 and any("@" in v.model_uri for v in self.variants):
            tasks.append(asyncio.create_task(refresh_aliases(self.variants, self.spec)))
        if self.spec.policy == "thompson":
            tasks.append(asyncio.create_task(self._refresh_bandit()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for v in self.variants:
                v.batcher.close()
            self.store.close()

    def _start(self) -> None:
        spec = self.spec
        if self.variants is None:
            self.variants = load_variants(spec)
        self.by_name = {v.name: v for v in self.variants}
        self.store = writer.RecordStore(spec.records, spec.flush_ms, spec.records_timeout_s, shared=spec.workers > 1,
                                        max_mb=float(spec.limits["max_records_mb"]))
        self.secret = feedback.load_secret(spec.feedback["secret_file"])
        self.inputs, self.inputs_rng = capture.Policy.from_config(spec.inputs), random.Random(spec.seed)
        canary = [{"name": CANARY, "model_uri": canary_uri(spec), "weight": spec.canary["weight"]}] if spec.canary else []
        self.store.record_experiment(spec.experiment, spec.variants + canary, spec.control)
        self.bandit = ([0] * len(self.variants), [0] * len(self.variants))
        schema = self.variants[0].model.metadata.get_input_schema()
        for v in self.variants:
            v.batcher = batching.MicroBatcher(v, schema, spec.batching)
            v.batcher.start()
        # Start-up leaves millions of long-lived objects (MLflow, scikit-learn, pandas, the models);
        # a full collection scanning them paused every request for 200-250 ms, which was most of
        # the p99 at 50 clients (docs/serving.md). Out of the collector's reach from now on; what
        # requests allocate is still collected.
        gc.collect()
        gc.freeze()

    async def _refresh_bandit(self) -> None:
        names = [v.name for v in self.variants]
        while True:
            try:
                self.bandit = await asyncio.to_thread(self.store.feedback_counts, self.spec.experiment, names)
            except Exception as exc:  # noqa: BLE001
                print(f"[mlpipe] serve: cannot read feedback for thompson routing: {exc}", file=sys.stderr, flush=True)
            await asyncio.sleep(self.spec.thompson_refresh_seconds)

    # -- requests -----------------------------------------------------------------------------
    def choose(self, request) -> tuple[LiveVariant | None, tuple[int, str] | None, bool]:
        """(the variant that answers, else (status, why), whether the override header chose it): the
        override header's (only with serve.routing.allow_override), the only one, or the router's pick."""
        spec, live = self.spec, self.variants
        forced = request.headers.get(spec.override_header)
        if forced is not None:
            if not spec.allow_override:
                return None, (403, f"{spec.override_header} is off (serve.routing.allow_override=false): a client "
                                   "does not choose its variant"), True
            variant = self.by_name.get(forced)
            if variant is None:
                return None, (400, f"{spec.override_header}: no variant {forced!r}; variants: "
                                   f"{', '.join(self.by_name)}"), True
            if variant.model is None:
                return None, (400, f"{spec.override_header}: variant {forced!r} is off (no model at "
                                   f"{variant.model_uri} now)"), True
            return variant, None, True
        if len(live) == 1 or live[-1].model is None:  # one model, or the canary off (serve.canary)
            return live[0], None, False
        if spec.policy == "thompson":
            good, bad = self.bandit
            return live[abtest.thompson(good, bad, self.nprng)], None, False
        key = request.headers.get(spec.key_header)
        # the canary's weight is its share of requests (serve.canary); variants' weights are relative
        weights = [1.0 - live[-1].weight, live[-1].weight] if spec.canary else [v.weight for v in live]
        return live[abtest.assign(weights, spec.experiment, key, self.rng)], None, False

    async def read_body(self, request, what: str, limit: int | None = None) -> bytes:
        """The whole body: _TooLarge over serve.limits.max_body_mb, a 408 _Timeout when it has not
        arrived within serve.limits.body_timeout_s. asyncio.timeout, not wait_for: on Python 3.11
        wait_for wraps its awaitable in a task of its own, on every request."""
        limit = self.max_body if limit is None else limit
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise _TooLarge()
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.body_timeout):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise _TooLarge()
                    chunks.append(chunk)
        except TimeoutError:
            raise _Timeout(408, f"{what} body not received within serve.limits.body_timeout_s={self.body_timeout}")
        return b"".join(chunks)

    async def invocations(self, request):
        started = time.perf_counter()
        request_id = uuid.uuid4().hex
        variant, problem, overridden = self.choose(request)
        headers = {REQUEST_ID_HEADER: request_id}
        if variant is None:
            status, message = problem
            return _json_error(status, "BAD_REQUEST" if status == 400 else "PERMISSION_DENIED", message, headers)
        headers |= {VARIANT_HEADER: variant.name, VERSION_HEADER: variant.version, URI_HEADER: variant.model_uri,
                    feedback.TOKEN_HEADER: feedback.token(self.secret, request_id)}
        response, answer, body_json = await self._answer(request, variant, headers)
        ok = response.status_code == 200
        rows, keys = (answer.rows, ",".join(answer.keys or ())) if ok else (0, "")
        kept = capture.Pending(answer.frame, self.inputs, answer.body) if ok and answer.frame is not None and \
            self.inputs.draw(self.inputs_rng) else ""  # encoded by the records' writer thread
        self.store.append({"request_id": request_id, "ts": time.time(), "experiment": self.spec.experiment,
                           "variant": variant.name, "model_uri": variant.model_uri,
                           "model_version": headers[VERSION_HEADER], "author": variant.author,
                           "status": response.status_code, "latency_ms": (time.perf_counter() - started) * 1000,
                           "rows": rows, "row_keys": keys, "overridden": int(overridden), "predictions": body_json,
                           "inputs": kept})
        return response

    async def _answer(self, request, variant: LiveVariant, headers: dict) -> tuple[Any, batching.Answer, str | None]:
        """(the response, the batcher's answer, the JSON predictions) for one request."""
        body_json, answer = None, batching.Answer()
        try:
            body = await self.read_body(request, "request")
            try:
                async with asyncio.timeout(self.request_timeout):
                    answer = await variant.batcher.submit(body, request.headers.get("content-type"))
            except TimeoutError:
                raise _Timeout(504, f"prediction took over serve.limits.request_timeout_s={self.request_timeout}")
            headers[VERSION_HEADER] = answer.version or variant.version
            if answer.error is not None:
                raise answer.error
            if answer.http is not None:
                status, content, mimetype = answer.http
                return Response(content, status, media_type=mimetype, headers=headers), answer, None
            body_json = answer_json(answer.predictions)
            return Response(body_json, 200, media_type="application/json", headers=headers), answer, body_json
        except _TooLarge:
            return _json_error(413, "REQUEST_TOO_LARGE", f"request body over serve.limits.max_body_mb="
                               f"{self.spec.limits['max_body_mb']}", headers), answer, None
        except _Timeout as exc:
            return _json_error(exc.status, "TIMEOUT", exc.message, headers), answer, None
        except ClientDisconnect:
            return Response(b"", 499, headers=headers), answer, None
        except Exception as exc:  # noqa: BLE001 - MLflow's status and message for bad input
            status, content = batching.error_payload(exc)
            return Response(content, status, media_type="application/json", headers=headers), answer, None

    async def feedback(self, request):
        """One label set for one answer: with the answer's token, once, one label per request row
        (serving/feedback.py); 403 without the token, 409 the second time, 413 over
        serve.feedback.max_body_kb, 507 when the record store is full."""
        fcfg = self.spec.feedback
        limit = int(float(fcfg["max_body_kb"]) * 1024)
        try:
            payload = json.loads(await self.read_body(request, "feedback", limit))
            request_id, token, label = feedback.parse(payload, request.headers.get(feedback.TOKEN_HEADER))
            feedback.check_token(self.secret, request_id, token)
            outcome = await asyncio.to_thread(self.store.add_feedback, request_id,
                                              lambda rows: _labels(label, rows, int(fcfg["max_label_chars"])))
        except _TooLarge:
            return _json_error(413, "REQUEST_TOO_LARGE", f"feedback body over serve.feedback.max_body_kb="
                                                         f"{fcfg['max_body_kb']}")
        except _Timeout as exc:
            return _json_error(exc.status, "TIMEOUT", exc.message)
        except feedback.Refused as exc:
            return _json_error(exc.status, exc.code, exc.message)
        except ValueError:
            return _json_error(400, "BAD_REQUEST", "the feedback body is not JSON")
        refused = {"unknown": (404, "NOT_FOUND", f"no recorded request {request_id!r}"),
                   "answered": (409, "ALREADY_EXISTS", f"request {request_id!r} has its labels already: one label "
                                                       "set per answer"),
                   "full": (507, "RESOURCE_EXHAUSTED", "the serving records are over serve.limits.max_records_mb: "
                                                       "feedback is not recorded")}.get(outcome)
        if refused:
            return _json_error(*refused)
        return Response(json.dumps({"request_id": request_id, "recorded": True}), 200, media_type="application/json")

    # -- views --------------------------------------------------------------------------------
    async def ping(self, request):
        return Response("\n", 200, media_type="application/json")

    async def version(self, request):
        return Response(VERSION, 200, media_type="application/json")

    async def metrics(self, request):
        text = writer.prometheus(await asyncio.to_thread(self.store.aggregates), self.store.dropped)
        return Response(text, 200, media_type="text/plain; version=0.0.4")

    async def variants_view(self, request):
        view = [{"name": v.name, "model_uri": v.model_uri, "model_version": v.version, "weight": v.weight,
                 "batches": v.batcher.batches if v.batcher else 0, "requests": v.batcher.requests if v.batcher else 0,
                 "waits": v.batcher.waits if v.batcher else 0} for v in self.variants]
        return Response(json.dumps({"experiment": self.spec.experiment, "policy": self.spec.policy, "variants": view}),
                        200, media_type="application/json")

    def routes(self) -> list:
        return [Route("/invocations", self.invocations, methods=["POST"]), Route("/ping", self.ping, methods=["GET"]),
                Route("/health", self.ping, methods=["GET"]), Route("/version", self.version, methods=["GET"]),
                Route("/metrics", self.metrics, methods=["GET"]), Route("/variants", self.variants_view, methods=["GET"]),
                Route("/feedback", self.feedback, methods=["POST"])]


def create_app(spec: ServeSpec, variants: list[LiveVariant] | None = None):
    """The Starlette app. Variants already loaded (the step process checked them) are reused;
    worker processes load their own."""
    served = ServingApp(spec, variants)
    app = Starlette(routes=served.routes(), lifespan=served.lifespan)
    app.state.mlpipe = served
    return app


def app_from_env():
    """uvicorn factory for worker processes (serve.workers > 1): the spec comes from SPEC_ENV."""
    return create_app(ServeSpec.from_json(os.environ[SPEC_ENV]))
