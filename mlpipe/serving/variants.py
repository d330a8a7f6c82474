"""The served variants: each model loaded past the trust boundary with the version it is and its
author, one input schema for all, and the alias pick-up that swaps in a version an alias moved
to (only a validated one with the same input)."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlpipe.errors import PipelineError, ServingError, one_line
from mlpipe.run.outputs import MEMBER_TAG
from mlpipe.serving.spec import ServeSpec

if TYPE_CHECKING:
    from mlpipe.serving.batching import MicroBatcher


def load_model(model_uri: str, variant: str, spec: ServeSpec) -> tuple[Any, str]:
    """The variant's model and the version it is, loaded only past the trust boundary: a model
    qa validated, its files unchanged since (registry/provenance.py; `serve.allow_unvalidated`
    skips that), under `serve.runtime`: its ONNX conversion (training/model_io.load_onnx), or
    the scikit-learn model in the configured format (`serialization`, `skops_trusted_types`:
    training/model_io.load_model). An alias is pinned to its version before anything is read."""
    from mlflow import MlflowClient

    from mlpipe.registry import provenance
    from mlpipe.registry.versions import parse_model_uri
    from mlpipe.training import model_io

    def load(uri: str, digest: str | None):
        if spec.runtime == "onnx":  # model.onnx, onnx.json and the MLmodel's signature: nothing unpickled
            return model_io.load_onnx(uri, digest, *spec.onnx_threads)[0]
        return model_io.load_model(uri, spec.serialization, spec.trusted_types, expect_digest=digest)[0]

    try:
        if spec.allow_unvalidated:
            version = resolve_version(model_uri)
            parsed = parse_model_uri(model_uri)
            pinned = f"models:/{parsed[0]}/{version}" if parsed and parsed[1] is not None else model_uri
            return load(pinned, None), version
        proof = provenance.validated(MlflowClient(), model_uri,
                                     "serve a version qa validated, or set serve.allow_unvalidated=true",
                                     spec.keyring(), spec.gate_experiment)
        return load(proof.load_uri, proof.digest), proof.version or resolve_version(model_uri)
    except Exception as exc:  # noqa: BLE001 - any load failure stops start-up with its reason
        # a refused model (UntrustedModelError), a store that said no (AccessDeniedError)... keep
        # their class and exit code; anything else is the server's ServingError
        kind = type(exc) if isinstance(exc, PipelineError) else ServingError
        raise kind(f"variant {variant!r}: cannot load model {model_uri}: {one_line(exc)}") from exc


def author_of(model_uri: str, version: str) -> str:
    """The `team.member` tag of the registered version a variant serves ("" for anything else):
    every request record carries it, so the A/B report can say whose model answered."""
    from mlflow import MlflowClient

    from mlpipe.registry.versions import parse_model_uri

    parsed = parse_model_uri(model_uri)
    if not parsed or not str(version).isdigit():
        return ""
    try:
        return MlflowClient().get_model_version(parsed[0], str(version)).tags.get(MEMBER_TAG, "")
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
    batcher: "MicroBatcher | None" = None
    author: str = ""  # the team member whose version this is (its `team.member` tag), else ""


CANARY = "canary"  # the canary arm's variant name (serve.canary)


def canary_uri(spec: ServeSpec) -> str | None:
    """`models:/<the served model>@<serve.canary.alias>`, or None without a canary."""
    from mlpipe.registry.versions import parse_model_uri

    if not spec.canary:
        return None
    return f"models:/{parse_model_uri(spec.variants[0]['model_uri'])[0]}@{spec.canary['alias']}"


def load_canary(spec: ServeSpec) -> LiveVariant | None:
    """The canary arm: serving its alias's version at serve.canary.weight, or off (no model,
    weight 0) while the alias does not exist or its version is refused (said on stderr)."""
    uri = canary_uri(spec)
    if uri is None:
        return None
    arm = LiveVariant(CANARY, uri, 0.0, None, "")
    line = refresh_canary(arm, spec, set(), None)
    if line:
        print(f"[mlpipe] serve: {line}", file=sys.stderr, flush=True)
    return arm


def refresh_canary(arm: LiveVariant, spec: ServeSpec, refused: set, schema: Any) -> str | None:
    """One look at the canary's alias (blocking): on at its version when the alias exists and
    the version loads past the trust boundary with `schema` (the served model's input), off
    when the alias is gone. Returns the line to log, or None when nothing changed."""
    try:
        version = resolve_version(arm.model_uri)
    except Exception:  # noqa: BLE001 - no such alias (MLflow's RESOURCE_DOES_NOT_EXIST): the canary is off
        version = None
    if version is None or (arm.model_uri, version) in refused:
        if arm.model is None:
            return None
        arm.model, arm.version, arm.weight = None, "", 0.0
        return f"canary: {arm.model_uri} is gone: the canary arm is off (weight 0)"
    if version == arm.version:
        return None
    try:
        model, version = load_model(arm.model_uri, CANARY, spec)
    except PipelineError as exc:
        refused.add((arm.model_uri, version))
        return f"canary: {arm.model_uri} (version {version}) refused: {one_line(exc)}; the canary arm stays off"
    if schema is not None and schema_of(model) != schema:
        refused.add((arm.model_uri, version))
        return f"canary: {arm.model_uri} (version {version}) takes another input schema; the canary arm stays off"
    arm.model, arm.version, arm.weight = model, version, float(spec.canary["weight"])
    arm.author = author_of(arm.model_uri, version)
    return f"canary: {arm.model_uri} is version {version}: it answers {arm.weight:.0%} of requests"


def load_variants(spec: ServeSpec) -> list[LiveVariant]:
    """Loads every variant (a failure names the variant and the URI) and checks their schemas.
    Serving a team's members (`spec.gate_experiment`), a member's model the team gate has not
    passed is left out and said on stderr, so that one member cannot stop the others' arms;
    with none left, the first refusal stops start-up."""
    from mlpipe.errors import UntrustedModelError

    loaded, refused = [], []
    for v in spec.variants:
        try:
            model, version = load_model(v["model_uri"], v["name"], spec)
        except UntrustedModelError as exc:
            if spec.gate_experiment is None:
                raise
            refused.append(exc)
            print(f"[mlpipe] serve: {one_line(exc)}; that arm is not served", file=sys.stderr, flush=True)
            continue
        loaded.append(LiveVariant(v["name"], v["model_uri"], float(v["weight"]), model, version,
                                  author=author_of(v["model_uri"], version)))
    if not loaded:
        raise refused[0]
    check_schemas([(v.name, v.model) for v in loaded])
    canary = load_canary(spec)
    if canary is not None and canary.model is not None and schema_of(canary.model) != schema_of(loaded[0].model):
        print(f"[mlpipe] serve: canary: {canary.model_uri} takes another input schema; the canary arm stays off",
              file=sys.stderr, flush=True)
        canary.model, canary.version, canary.weight = None, "", 0.0
    return loaded + ([canary] if canary is not None else [])


async def refresh_aliases(live: list[LiveVariant], spec: ServeSpec) -> None:
    """Every `refresh_seconds`, re-resolve `models:/name@alias` variants (refresh_variant)."""
    refused: set[tuple[str, str]] = set()
    while True:
        await asyncio.sleep(spec.refresh_seconds)
        for v in live:
            if v.name == CANARY and spec.canary:
                line = await asyncio.to_thread(refresh_canary, v, spec, refused, schema_of(live[0].model))
                if line:
                    print(f"[mlpipe] serve: {line}", file=sys.stderr, flush=True)
                continue
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


def refresh_variant(v: LiveVariant, spec: ServeSpec, refused: set) -> tuple[str | None, Any, str]:
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
    except PipelineError as exc:
        refused.add((v.model_uri, version))
        return f"{v.model_uri} moved to version {version}, refused: {one_line(exc)}; still serving version " \
               f"{v.version}", None, version
    if schema_of(model) != schema_of(v.model):
        refused.add((v.model_uri, version))
        return (f"{v.model_uri} moved to version {version}, whose input schema differs; still serving version "
                f"{v.version}"), None, version
    return f"variant {v.name!r}: {v.model_uri} moved, version {v.version} -> {version}", model, version
