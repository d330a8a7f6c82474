"""Saving fitted scikit-learn objects: cloudpickle (fast) or skops (safe to load), by config."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mlpipe import signing
from mlpipe.errors import ConfigError, UntrustedModelError, UpstreamError

FORMATS = ("cloudpickle", "skops")
# What a logged model needs to load and predict. Pinned to the versions running now:
# MLflow's own inference runs the model in a subprocess and costs about 10 s a step.
MODEL_PACKAGES = ("mlflow", "scikit-learn", "numpy", "pandas", "scipy", "cloudpickle")


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"serialization={fmt!r}; expected one of {', '.join(FORMATS)}")
    return fmt


def pip_requirements(fmt: str) -> list[str]:
    from importlib.metadata import version

    names = MODEL_PACKAGES + (("skops",) if fmt == "skops" else ())
    return [f"{name}=={version(name)}" for name in names]


def untrusted(types, allowed) -> list[str]:
    """The `types` (skops names) that are not in the exact allow-list `skops_trusted_types`."""
    return sorted(set(types) - set(allowed))


def trusted_types(obj, allowed) -> list[str]:
    """The types outside skops's own safe set that `obj` needs, each checked to be on the
    allow-list (`skops_trusted_types`, exact names: a prefix such as `builtins.` would admit
    `builtins.eval`); what the logged model lists for skops to load it."""
    import skops.io as sio

    needed = sio.get_untrusted_types(data=sio.dumps(obj))
    refused = untrusted(needed, allowed)
    if refused:
        raise ConfigError(f"the fitted model holds types outside skops_trusted_types: {', '.join(refused)}; "
                          "add them to skops_trusted_types in conf/config.yaml if you trust them")
    return sorted(needed)


def save_transformer(obj, workdir: Path, name: str, fmt: str) -> list[Path]:
    """A fitted transformer as `<name>.<fmt>` plus `<name>.json` saying how to load it, in
    `workdir`; the step logs both files."""
    path = workdir / f"{name}.{fmt}"
    if check_format(fmt) == "skops":
        import skops.io as sio

        sio.dump(obj, path)
    else:
        import cloudpickle

        path.write_bytes(cloudpickle.dumps(obj))
    meta = workdir / f"{name}.json"
    meta.write_text(json.dumps({"format": fmt, "file": path.name}))
    return [path, meta]


SEAL_TAG, SEAL_SIGNATURE_TAG = "pipeline.artifacts_seal", "pipeline.artifacts_seal_signature"


def seal_tags(files: list[Path], run, tcfg) -> dict[str, str]:
    """A step's artifacts that a later step unpickles, sealed: their sha256 signed with
    `trust.signing_key` for this run (mlpipe/signing.py); the tags to hand over with the step's output."""
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    statement, signature = signing.seal(run.info.run_id, digests, signing.now(),
                                        signing.gate_key(tcfg, run.data.tags.get("pipeline.step", "step")))
    return {SEAL_TAG: statement, SEAL_SIGNATURE_TAG: signature}


def _sealed(run, tcfg) -> dict[str, str]:
    """The artifact digests a trusted key sealed for `run`, else an UntrustedModelError."""
    run_id, tags = run.info.run_id, run.data.tags
    try:
        if not tags.get(SEAL_TAG) or not tags.get(SEAL_SIGNATURE_TAG):
            raise signing.VerdictError(f"it has no {SEAL_TAG} (made before artifacts were sealed)")
        return signing.unseal(tags[SEAL_TAG], tags[SEAL_SIGNATURE_TAG], signing.keyring(tcfg), run_id)
    except signing.VerdictError as exc:
        raise UntrustedModelError(f"run {run_id}: its artifacts have no seal signed by a trusted key: {exc}; refused, "
                                  "nothing loaded; rerun preprocess (main.force=[preprocess])") from None


def _check_sealed(path: Path, sealed: dict[str, str], run_id: str) -> Path:
    found = hashlib.sha256(path.read_bytes()).hexdigest()
    if sealed.get(path.name) != found:
        raise UntrustedModelError(f"run {run_id}: {path.name} changed since the run sealed it (sha256 {found[:12]}, "
                                  f"sealed {str(sealed.get(path.name))[:12]}): refused, nothing loaded; rerun "
                                  "preprocess (main.force=[preprocess])")
    return path


def load_transformer(client, run, name: str, workdir: Path, fmt: str, allowed, tcfg):
    """The transformer a run logged, loaded the way `serialization` (fmt) says, never the way the
    artifact says, and only the very files the run sealed (`seal_tags`, checked against the keys
    of `tcfg`, the `trust` group): with skops nothing is unpickled, and a file holding a type
    outside `skops_trusted_types` is refused before it is loaded."""
    from mlpipe.run.handoff import download

    run_id, sealed = run.info.run_id, _sealed(run, tcfg)
    meta = json.loads(_check_sealed(download(client, run_id, f"{name}.json", str(workdir)), sealed, run_id).read_text())
    if meta.get("format") != check_format(fmt) or meta.get("file") != f"{name}.{fmt}":
        raise UpstreamError(f"run {run_id}: {meta.get('file')} is a {meta.get('format')} file but serialization={fmt}: "
                            "refused, nothing loaded; rerun preprocess with this serialization")
    path = _check_sealed(download(client, run_id, meta["file"], str(workdir)), sealed, run_id)
    if fmt == "cloudpickle":
        import cloudpickle

        return cloudpickle.loads(path.read_bytes())
    import skops.io as sio

    needed = sio.get_untrusted_types(file=path)
    refused = untrusted(needed, allowed)
    if refused:
        raise UntrustedModelError(f"run {run_id}: {meta['file']} holds types outside skops_trusted_types: "
                            f"{', '.join(refused)}; refused, nothing loaded")
    return sio.load(path, trusted=needed)


# MLflow's client writes this file into every download of a `models:/` URI (name and version of
# the download, never read back as code); it is not part of the model's files.
DOWNLOAD_META = frozenset({"registered_model_meta"})


def files_digest(root: Path) -> str:
    """sha256 over a model folder's files (relative path and content of each), what qa records as
    the model it validated and what serve, register and qa's champion load compare with."""
    outer = hashlib.sha256()
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if relative in DOWNLOAD_META:
            continue
        outer.update(f"{relative}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return "sha256:" + outer.hexdigest()


def download_model(model_uri: str, dst: str) -> Path:
    import mlflow

    return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=dst))


def model_digest(model_uri: str) -> str:
    """The digest of the files at `model_uri` now (downloaded to a scratch folder)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mlpipe-model-") as tmp:
        return files_digest(download_model(model_uri, tmp))


def load_model(model_uri: str, fmt: str, allowed, expect_digest: str | None = None):
    """A logged scikit-learn model as MLflow's pyfunc and the digest of its files, loaded from the
    very files that were checked: with `expect_digest`, the files' digest must be that one (the
    model qa validated: mlpipe/registry/provenance.py); in the configured format
    (`serialization`); and with skops every type the file holds, and every type its MLmodel
    tells skops to trust, on the allow-list (MLflow loads a skops file trusting what its MLmodel
    lists, and the MLmodel is as writable as the model). A refusal names the model, the file
    and the types; nothing is loaded."""
    import tempfile

    import mlflow
    import yaml

    with tempfile.TemporaryDirectory(prefix="mlpipe-model-") as tmp:
        local, digest = _download_checked(model_uri, tmp, expect_digest)
        mlmodel = yaml.safe_load((local / "MLmodel").read_text()) or {}
        flavor = mlmodel.get("flavors", {}).get("sklearn")
        if flavor is None:
            raise UntrustedModelError(f"{model_uri} is not a scikit-learn model (no sklearn flavor in its MLmodel): refused")
        found, name = flavor.get("serialization_format"), flavor.get("pickled_model")
        if fmt == "skops" and found != "skops":
            raise UntrustedModelError(f"{model_uri}: {name} is a {found} file but serialization=skops: refused, "
                                      "nothing unpickled")
        if found == "skops":
            import skops.io as sio

            refused = untrusted(set(flavor.get("skops_trusted_types") or [])
                                | set(sio.get_untrusted_types(file=local / name)), allowed)
            if refused:
                raise UntrustedModelError(f"{model_uri}: {name} holds or trusts types outside skops_trusted_types: "
                                          f"{', '.join(refused)}; refused, nothing loaded")
        check_loader(mlmodel, local, model_uri)  # MLflow's own loader, nothing else the directory names
        # serialization=cloudpickle: a pickle is loaded, as configured (docs/quality.md, the trust model)
        return mlflow.pyfunc.load_model(str(local), suppress_warnings=True), digest


PYFUNC_LOADER = "mlflow.sklearn"
# python_function keys that make mlflow.pyfunc.load_model run code from the model directory
CODE_KEYS = ("python_model", "model_code_path", "artifacts")


def check_loader(mlmodel: dict, local: Path, where: str) -> None:
    """An UntrustedModelError unless loading the model directory at `local` can run nothing but
    MLflow's scikit-learn loader on the model file: `mlflow.pyfunc.load_model` obeys the MLmodel's
    python_function flavor (its loader module, code folder, python_model, model code), which is as
    writable as the model, so any of those, or a Python file anywhere in the directory, is refused."""
    refused = "refused, nothing loaded"
    flavors = mlmodel.get("flavors") or {}
    pyfunc = flavors.get("python_function") or {}
    loader = pyfunc.get("loader_module")
    if loader != PYFUNC_LOADER:
        raise UntrustedModelError(f"{where}: its MLmodel names loader module {loader!r} (expected {PYFUNC_LOADER}); "
                                  f"{refused}")
    for name in ("python_function", "sklearn"):
        code = (flavors.get(name) or {}).get("code")
        if code:
            raise UntrustedModelError(f"{where}: its MLmodel names a code folder (flavors.{name}.code: {code!r}); "
                                      f"{refused}")
    named = [key for key in CODE_KEYS if pyfunc.get(key)]
    if named:
        raise UntrustedModelError(f"{where}: its MLmodel names {', '.join(named)} (code MLflow would load); {refused}")
    python = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.suffix in (".py", ".pyc", ".so"))
    if python:
        raise UntrustedModelError(f"{where}: it holds Python files ({', '.join(python[:5])}): {refused}")


def _download_checked(model_uri: str, dst: str, expect_digest: str | None) -> tuple[Path, str]:
    """The model's files downloaded to `dst` and their digest, which must be `expect_digest` when given."""
    local = download_model(model_uri, dst)
    digest = files_digest(local)
    if expect_digest is not None and digest != expect_digest:
        raise UntrustedModelError(f"{model_uri}: its files changed since qa validated them (digest {digest[:19]}, "
                                  f"qa recorded {expect_digest[:19]}): refused, nothing loaded")
    return local, digest


def load_onnx(model_uri: str, expect_digest: str | None = None, intra_op_threads: int = 1, inter_op_threads: int = 1):
    """The logged model's ONNX conversion under onnxruntime and the digest of its files, from the
    very files checked against `expect_digest` (as load_model); only model.onnx, onnx.json and
    the MLmodel are read (training/onnx_model.py): nothing is unpickled or imported."""
    import tempfile

    from mlpipe.training import onnx_model

    with tempfile.TemporaryDirectory(prefix="mlpipe-model-") as tmp:
        local, digest = _download_checked(model_uri, tmp, expect_digest)
        return onnx_model.load(local, model_uri, intra_op_threads, inter_op_threads), digest


def answer_serving_input(model, model_uri: str, served=None) -> tuple[int | None, int | None, str | None]:
    """The serving payload built from the model's input example, answered by the model loaded from
    its URI as a scoring server would (mlflow.models.validate_serving_input), or by `served` (the
    ONNX model, as our server parses and predicts under serve.runtime=onnx): (predictions,
    example rows, None), or (None, example rows, the error); (None, None, None) without an example."""
    import warnings

    import mlflow

    from mlpipe.errors import one_line

    example = model.input_example
    if example is None:
        example = model.metadata.load_input_example(model_uri)
    if example is None:
        return None, None, None
    payload = mlflow.models.convert_input_example_to_serving_input(example)
    try:
        if served is not None:
            from mlflow.pyfunc.scoring_server import _parse_json_data

            parsed = _parse_json_data(payload, served.metadata, served.input_schema)
            predictions = served.predict(parsed.data, params=parsed.params)
        else:
            with warnings.catch_warnings():  # deprecated for mlflow.models.predict, which builds a new environment
                warnings.simplefilter("ignore", FutureWarning)
                predictions = mlflow.models.validate_serving_input(model_uri, payload)
    except Exception as exc:  # noqa: BLE001 - any failure to load or predict is the finding
        return None, len(example), one_line(exc)
    return len(predictions), len(example), None
