"""Compose the pipeline configuration with Hydra's compose API, flatten it for logging.

May import: `mlpipe.errors`, `mlpipe.schema`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mlpipe import schema
from mlpipe.errors import ConfigError, one_line

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TEAM_ENV = "MLPIPE_TEAM"  # set by `python -m mlpipe.team as <member>`: compose adds team=<name>
CONF_DIR = PROJECT_ROOT / "conf"


def _source_stem(source: str) -> str:
    """`sklearn:wine` -> `wine`; `s3://b/data/train.csv` -> `train`."""
    source = str(source)
    if source.startswith("sklearn:"):
        return source.split(":", 1)[1]
    name = source.rstrip("/").rsplit("/", 1)[-1]
    return name.split(".", 1)[0] or "data"


def _member_suffix(team: str | None, member: str | None) -> str:
    """`.<member>` when a team member runs the pipeline (their own model `<model>.<member>`), else ""."""
    return f".{member}" if team and member else ""


def register_resolvers() -> None:
    """The `source_stem` and `member_suffix` resolvers and the config schema (mlpipe/schema/) in
    Hydra's ConfigStore."""
    if not OmegaConf.has_resolver("source_stem"):
        OmegaConf.register_new_resolver("source_stem", _source_stem)
    if not OmegaConf.has_resolver("member_suffix"):
        OmegaConf.register_new_resolver("member_suffix", _member_suffix)
    schema.register()


register_resolvers()


def split_overrides(overrides: str | None) -> list[str]:
    """Split the `overrides` entry-point parameter the way a POSIX shell would."""
    if not overrides:
        return []
    try:
        return shlex.split(overrides)
    except ValueError as exc:
        raise ConfigError(f"cannot parse overrides {overrides!r}: {exc}") from exc


def shell_unquoted(args: list[str]) -> list[str]:
    """Arguments as a shell would have handed them over. MLflow's Kubernetes backend starts an
    entry point's command without a shell, each word still quoted (`'--overrides=a b'`): a word
    that is one single-quoted shell word is unquoted; every other argument is kept as it is."""
    out = []
    for arg in args:
        if len(arg) > 1 and arg[0] == arg[-1] == "'":
            try:
                words = shlex.split(arg)
            except ValueError:
                words = []
            if len(words) == 1:
                arg = words[0]
        out.append(arg)
    return out


def with_team(overrides: list[str]) -> list[str]:
    """`team=<MLPIPE_TEAM>` added at the end of the overrides unless they choose a team: what a
    member's commands compose (`python -m mlpipe.team as <member>` sets MLPIPE_TEAM). The driver
    (under Hydra's app too) and every step compose through this, so their configs, and so the
    cache keys the driver looks up and the steps write, are the same."""
    team = os.environ.get(TEAM_ENV)
    if team and not any(o.lstrip("+~").startswith("team=") for o in overrides):
        return [*overrides, f"team={team}"]
    return list(overrides)


def compose(overrides: list[str]) -> DictConfig:
    """Compose conf/config.yaml with Hydra overrides; every error becomes a ConfigError."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if "-m" in overrides or "--multirun" in overrides:
        raise ConfigError(
            "a sweep (-m) can only be run by the driver: mlflow run . -e main -P overrides=\"-m ...\""
        )
    overrides = with_team(overrides)
    # A Hydra app (the driver under @hydra.main) has set Hydra up already; initialize_config_dir
    # refuses that, and on leaving restores the state it found: clear, from here on.
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            cfg = hydra_compose(config_name="config", overrides=overrides)
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise ConfigError(f"missing required value(s) {', '.join(missing)}; set them in overrides")
        OmegaConf.resolve(cfg)
        OmegaConf.to_object(cfg)  # builds mlpipe/schema/'s dataclasses: ranges and choices
        unknown = schema.unknown_keys(to_container(cfg))
        if unknown:
            raise ConfigError(_suggest(unknown[0], overrides))
        check_team(cfg)
        check_no_passwords(cfg)
    except ConfigError:
        raise
    except Exception as exc:  # Hydra raises several unrelated types for bad overrides
        raise ConfigError(_unknown_key_message(exc, overrides) or _unknown_option_message(exc)
                          or f"invalid configuration: {_hydra_message(exc)}") from exc
    return cfg


def _unknown_key_message(exc: BaseException, overrides: list[str]) -> str | None:
    """"unknown config key model.n_estimator; did you mean model.n_estimators?" for an override
    of a key that does not exist, with the closest key of the config it was meant for."""
    import re

    text = one_line(exc)
    found = re.search(r"full_key: ([\w.]+)", text) if "not in struct" in text else None
    found = found or re.search(r"Could not override '([\w.]+)'", text)
    if not found:
        return None
    return _suggest(found.group(1), overrides)


def _unknown_option_message(exc: BaseException) -> str | None:
    """"model=gradient_boostin: no such option in conf/model/; did you mean gradient_boosting?"
    for a config group option that does not exist, with every option when none is close."""
    import difflib
    import re

    text = one_line(exc)
    found = re.search(r"Could not find '([\w/]+)/([^']+)'", text)
    options = re.search(r"Available options in '[\w/]+':\s*(.*?)\s*(Config search path|$)", text)
    if not found or not options:
        return None
    group, name, choices = found.group(1), found.group(2), options.group(1).split()
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    hint = f"did you mean {group}={close[0]}?" if close else f"options: {', '.join(choices)}"
    return f"{group}={name}: no such option in conf/{group}/; {hint}"  # data/validation=...: Hydra's group syntax


def _suggest(key: str, overrides: list[str]) -> str:
    import difflib

    rest = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] != key]
    try:
        keys = list(flatten(to_container(compose(rest))))
    except ConfigError:  # another override is bad too: suggest from the defaults
        keys = list(flatten(to_container(compose([]))))
    # the keys and the nodes above them: `modle=...` was meant for the group `model`
    nodes = {".".join(k.split(".")[:depth]) for k in keys for depth in range(1, k.count(".") + 1)}
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6) or \
        difflib.get_close_matches(key, sorted(nodes), n=1, cutoff=0.75)  # closer: short names match loosely
    if close:
        return f"unknown config key {key}; did you mean {close[0]}?"
    parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
    children = sorted({k[len(parent):].split(".", 1)[0] for k in keys if k.startswith(parent)})
    return f"unknown config key {key}; {parent.rstrip('.') or 'the config'} has {', '.join(children) or 'no keys'}"


def check_team(cfg: DictConfig) -> None:
    """Under a team (team=<name>), the member running the pipeline is one of conf/team/<name>.yaml's."""
    team = cfg.team
    if not team.name:
        return
    names = [str(m["name"]) for m in team.members]
    if team.lead not in names:
        raise ConfigError(f"team.lead={team.lead!r} is not a member of team {team.name} (conf/team/{team.name}.yaml): "
                          f"{', '.join(names)}")
    if not team.member:
        raise ConfigError(f"team {team.name}: who is running? log in as a member (MLFLOW_TRACKING_USERNAME, or "
                          f"python -m mlpipe.team as <member> -- ...) or set team.member=<name>; members: "
                          f"{', '.join(names)}")
    if team.reader.user and team.reader.user in names:
        raise ConfigError(f"team.reader.user={team.reader.user!r} is also a member of team {team.name} "
                          f"(conf/team/{team.name}.yaml): the READ-only identity needs a name of its own")
    if team.member not in names and team.member != team.reader.user:
        raise ConfigError(f"team.member={team.member!r} is not a member of team {team.name} "
                          f"(conf/team/{team.name}.yaml): {', '.join(names)}")


# What the team's READ-only identity runs (docs/team.md#who-can-run-code-where), and what only it runs.
READER_STEPS = ("serve", "report")


def check_identity(step: str, cfg: DictConfig) -> None:
    """Under a team, the READ-only identity (team.reader) runs the team's serving and report and
    nothing else, and they run only as it: they load every member's model, and a member's login
    would let a member's code that ran there act as that member."""
    team = cfg.team
    if not team.name or not team.reader.user:
        return
    as_reader = team.member == team.reader.user
    if as_reader and step not in READER_STEPS:
        raise ConfigError(f"team.member={team.member!r} is the team's READ-only identity (team.reader.user): it runs "
                          f"only {' and '.join(READER_STEPS)}; run {step} as a member (python -m mlpipe.team as "
                          "<member> -- ...)")
    shared = "the team report" if step == "report" else \
        "serve.team_variants=true" if step == "serve" and cfg.serve.team_variants else None
    if shared and not as_reader:
        raise ConfigError(f"{shared} loads every member's model: run it as the team's READ-only identity, not as "
                          f"{team.member!r}: python -m mlpipe.team as {team.reader.user} -- mlflow run . -e {step} ... "
                          "(team.reader, docs/team.md#who-can-run-code-where)")


def check_no_passwords(cfg: DictConfig) -> None:
    """A database URL in config must not hold a password: the config is logged with every run.
    libpq reads PGPASSWORD or ~/.pgpass instead."""
    from urllib.parse import parse_qs, urlsplit

    for key, value in (("serve.records", cfg.serve.records),):
        parts = urlsplit(str(value or ""))
        if value and parts.scheme.startswith("postgres") and (parts.password or "password" in parse_qs(parts.query)):
            raise ConfigError(f"{key} holds a password, and the config is logged with every run; drop it from the "
                              "URL and give it in PGPASSWORD or ~/.pgpass (read by PostgreSQL's client), and change "
                              "it: `mlflow run` has already recorded the command line's overrides with this run")


def check_model_params(model: dict[str, Any]) -> None:
    """Every `model.<key>` is a constructor argument of `model._target_` (a `+model.x=...`
    override passes Hydra, whose model group has no fixed keys), with the closest as a hint."""
    import difflib
    import inspect

    from hydra.utils import get_class

    target = model.get("_target_")
    try:
        params = inspect.signature(get_class(str(target))).parameters
    except Exception:  # noqa: BLE001 - a class that cannot be imported is said by train, which builds it
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    for key in model:
        if key != "_target_" and key not in params:
            close = difflib.get_close_matches(key, list(params), n=1, cutoff=0.6)
            raise ConfigError(f"unknown config key model.{key}: {target} takes no argument {key!r}"
                              + (f"; did you mean model.{close[0]}?" if close else
                                 f"; it takes {', '.join(params)}"))


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
    if exc.__cause__ is not None and text.startswith("Error merging override"):
        # Hydra's own line names the override; its cause says what is wrong with the value
        text += ": " + one_line(exc.__cause__).split(" full_key:")[0]
    # Hydra appends its search path to "Could not find" errors: noise for a user.
    text = text.split(" Config search path:")[0]
    return text or type(exc).__name__


def validate_cli(args: list[str]) -> tuple[DictConfig, bool]:
    """Compose a Hydra command line (sweeps included: each sweep's first value) or raise
    ConfigError. Returns the composed config and whether the command line is plain: one
    pipeline, no Hydra flag (-m, --cfg, -cn...), no sweep and no Hydra key (hydra.*, hydra/...),
    so that the config composed here is the one to run."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from hydra._internal.utils import get_args_parser

    try:
        # Hydra's own argument parser separates flags (--cfg job, -cn x, -m) from overrides.
        known = get_args_parser().parse_args(args)
        overrides = known.overrides
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:
        raise ConfigError(f"invalid override: {_hydra_message(exc)}") from exc
    flags = {key: value for key, value in vars(known).items() if key != "overrides"}
    plain = not any(flags.values()) and not any(o.is_hydra_override() or o.is_sweep_override() for o in parsed)
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
    # Only for a command line that sets the model: the check imports scikit-learn (1.4 s of the
    # driver's start), and the config files' own model keys are checked by train when it builds it.
    cfg = compose(concrete)
    if any(text.lstrip("+~").split("=")[0].split(".")[0] == "model" for text in concrete):
        check_model_params(to_container(cfg)["model"])
    return cfg, plain
