"""Compose the pipeline configuration with Hydra's compose API, flatten it for logging."""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mlpipe.errors import ConfigError, one_line

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = PROJECT_ROOT / "conf"


def _source_stem(source: str) -> str:
    """`sklearn:wine` -> `wine`; `s3://b/data/train.csv` -> `train`."""
    source = str(source)
    if source.startswith("sklearn:"):
        return source.split(":", 1)[1]
    name = source.rstrip("/").rsplit("/", 1)[-1]
    return name.split(".", 1)[0] or "data"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("source_stem"):
        OmegaConf.register_new_resolver("source_stem", _source_stem)


register_resolvers()


def split_overrides(overrides: str | None) -> list[str]:
    """Split the `overrides` entry-point parameter the way a POSIX shell would."""
    if not overrides:
        return []
    try:
        return shlex.split(overrides)
    except ValueError as exc:
        raise ConfigError(f"cannot parse overrides {overrides!r}: {exc}") from exc


def compose(overrides: list[str]) -> DictConfig:
    """Compose conf/config.yaml with Hydra overrides; every error becomes a ConfigError."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if "-m" in overrides or "--multirun" in overrides:
        raise ConfigError(
            "a sweep (-m) can only be run by the driver: mlflow run . -e main -P overrides=\"-m ...\""
        )
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            cfg = hydra_compose(config_name="config", overrides=overrides)
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise ConfigError(f"missing required value(s) {', '.join(missing)}; set them in overrides")
        OmegaConf.resolve(cfg)
    except ConfigError:
        raise
    except Exception as exc:  # Hydra raises several unrelated types for bad overrides
        raise ConfigError(f"invalid configuration: {_hydra_message(exc)}") from exc
    finally:
        GlobalHydra.instance().clear()
    return cfg


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain dicts, without Hydra's own `hydra` node."""
    data = OmegaConf.to_container(cfg, resolve=True)
    data.pop("hydra", None)
    return data


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{"model": {"n_estimators": 100}} -> {"model.n_estimators": "100"} (params for MLflow)."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, type(None))) else str(value)
    return flat


def select(data: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """The part of a resolved config that a step uses (top-level keys)."""
    return {key: data.get(key) for key in sorted(keys)}


def digest(obj: Any) -> str:
    """A stable sha256 of any JSON-able object."""
    payload = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def _hydra_message(exc: BaseException) -> str:
    text = one_line(exc)
    # Hydra appends its search path to "Could not find" errors: noise for a user.
    text = text.split(" Config search path:")[0]
    return text or type(exc).__name__


def validate_cli(args: list[str]) -> None:
    """Compose a Hydra command line (sweeps included: each sweep's first value) or raise ConfigError."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from hydra._internal.utils import get_args_parser

    try:
        # Hydra's own argument parser separates flags (--cfg job, -cn x, -m) from overrides.
        overrides = get_args_parser().parse_args(args).overrides
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:
        raise ConfigError(f"invalid override: {_hydra_message(exc)}") from exc
    concrete = []
    for override, text in zip(parsed, overrides, strict=True):
        if override.is_hydra_override():
            continue
        if override.is_sweep_override():
            try:
                first = next(iter(override.sweep_string_iterator()))
            except Exception:  # glob() sweeps need Hydra's config loader: Hydra checks those itself
                continue
            concrete.append(f"{override.get_key_element()}={first}")
        else:
            concrete.append(text)
    compose(concrete)
