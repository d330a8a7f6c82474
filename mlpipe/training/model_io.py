"""Saving fitted scikit-learn objects: cloudpickle (fast) or skops (safe to load), by config."""

from __future__ import annotations

import json
from pathlib import Path

from mlpipe.errors import ConfigError, UpstreamError

FORMATS = ("cloudpickle", "skops")
TRUSTED_PREFIXES = ("sklearn.", "numpy.", "builtins.", "collections.", "scipy.")
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


def trusted_types(obj) -> list[str]:
    """The types skops will not load by default that `obj` needs: scikit-learn/numpy ones only."""
    import skops.io as sio

    untrusted = sio.get_untrusted_types(data=sio.dumps(obj))
    return [t for t in untrusted if t.startswith(TRUSTED_PREFIXES)]


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


def load_transformer(client, run_id: str, name: str, workdir: Path):
    from mlpipe.run.handoff import download

    meta = json.loads(download(client, run_id, f"{name}.json", str(workdir)).read_text())
    path = download(client, run_id, meta["file"], str(workdir))
    if meta["format"] == "cloudpickle":
        import cloudpickle

        return cloudpickle.loads(path.read_bytes())
    import skops.io as sio

    untrusted = sio.get_untrusted_types(file=path)
    foreign = [t for t in untrusted if not t.startswith(TRUSTED_PREFIXES)]
    if foreign:
        raise UpstreamError(f"run {run_id}: {meta['file']} holds types outside scikit-learn/numpy: {foreign}")
    return sio.load(path, trusted=untrusted)
