"""Model registry operations (the MLflow edge of register): versions, aliases, lineage tags."""

from __future__ import annotations

import re

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlpipe.errors import AccessDeniedError, StorageError, one_line

LOGGED_MODEL = re.compile(r"^models:/(m-[0-9a-f]{32})$")


def _absent(exc: MlflowException) -> bool:
    """The model, the version or the alias does not exist: the one lookup failure that means "none"."""
    if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
        return True
    # a missing alias of an existing model (SQL store and server alike)
    text = str(exc)
    return exc.error_code == "INVALID_PARAMETER_VALUE" and "alias" in text and "not found" in text


def denied(exc: MlflowException) -> bool:
    """The server refused this user's permission (HTTP 403 from MLflow's basic-auth app)."""
    return exc.error_code == "PERMISSION_DENIED" or "error code 403" in str(exc)


def access_denied(action: str, resource: str, needed: str, done: str) -> AccessDeniedError:
    """'user bob may not move wine_model@champion: it needs EDIT on registered model wine_model ...'"""
    import os

    user = os.environ.get("MLFLOW_TRACKING_USERNAME") or "(no login)"
    return AccessDeniedError(f"user {user!r} may not {action}: it needs {needed} on {resource}, which the tracking "
                             f"server did not grant (HTTP 403); {done}")


def lookup(what: str, fn):
    """`fn()`, None when what it looks up does not exist; any other failure (a server error, a
    timeout, a refused login, no connection: after MLflow's HTTP retries) is a StorageError,
    never "none", so nothing is promoted or compared on a registry that did not answer."""
    try:
        return fn()
    except MlflowException as exc:
        if _absent(exc):
            return None
        if denied(exc):
            raise access_denied(f"read {what}", what, "READ", "no alias was moved") from exc
        raise StorageError(f"the model registry did not answer the lookup of {what} ({exc.error_code}): "
                           f"{one_line(exc)[:300]}; no alias was moved") from exc


def current(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version holding `alias`, or None when the model or the alias does not exist."""
    return lookup(f"{name}@{alias}", lambda: client.get_model_version_by_alias(name, alias))


def all_of(client: MlflowClient, name: str) -> list[ModelVersion]:
    """Every version of `name` (none when the model does not exist)."""
    return lookup(name, lambda: client.search_model_versions(f"name = '{name}'")) or []


def latest(client: MlflowClient, name: str) -> ModelVersion | None:
    """The highest version of `name` (`models:/<name>`, `models:/<name>/latest`), or None."""
    found = lookup(f"the latest version of {name}", lambda: client.search_model_versions(
        f"name='{name}'", order_by=["version_number DESC"], max_results=1))
    return found[0] if found else None


def version_metric(version: ModelVersion, metric: str) -> float | None:
    raw = (version.tags or {}).get(f"qa.{metric}")
    try:
        return float(raw) if raw not in (None, "") else None
    except ValueError:
        return None


def register(model_uri: str, name: str, tags: dict[str, str]) -> ModelVersion:
    """A new version of `name` from a `models:/m-...` URI; the version links to the train run."""
    import mlflow
    from mlflow.utils import logging_utils

    # register_model prints "Successfully registered model ..." past the log level; quiet under
    # main.log=quiet (MLFLOW_LOGGING_LEVEL=ERROR), where register's own summary says it
    quiet = logging_utils.get_mlflow_log_level() == "ERROR"
    if quiet:
        logging_utils.disable_logging()
    try:
        return mlflow.register_model(model_uri, name, tags=tags)
    except MlflowException as exc:
        if denied(exc):
            raise access_denied(f"register a version of {name}", f"registered model {name}", "EDIT",
                                "nothing registered") from exc
        raise StorageError(f"cannot register {model_uri} as {name!r}: {exc.message}") from exc
    finally:
        if quiet:
            logging_utils.enable_logging()


def promotion_lock(name: str, timeout: float):
    """Held from reading the champion to moving it, so two pipelines registering the same model at
    once cannot both promote on a stale comparison. A file lock: it orders pipelines on one
    machine; MLflow's registry has no compare-and-set for aliases across machines."""
    import mlflow

    from mlpipe.config import digest
    from mlpipe.run.locks import LOCK_DIR, bounded_lock

    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    path = LOCK_DIR / f"registry-{digest([mlflow.get_registry_uri(), name])[:32]}.lock"
    return bounded_lock(path, timeout, f"another register or A/B promotion of {name!r} on this machine",
                        "registry.lock_timeout_s", "nothing was registered and no alias moved")


def copy_version(client: MlflowClient, source: ModelVersion, name: str, tags: dict[str, str],
                 description: str) -> ModelVersion:
    """A new version of `name` with the same files (source), train run and tags as `source`
    plus `tags`: how a member's version becomes the team model's (lineage kept, nothing copied
    or re-uploaded, so qa's digest of the files still holds)."""
    try:
        return client.create_model_version(name, source.source, run_id=source.run_id,
                                           tags=dict(source.tags or {}) | tags, description=description,
                                           model_id=logged_model_id(source.source) or source.model_id)
    except MlflowException as exc:
        if denied(exc):
            raise access_denied(f"add a version to {name}", f"registered model {name}", "EDIT",
                                "nothing was copied and no alias moved") from exc
        raise


def logged_model_id(uri: str | None) -> str | None:
    """`m-...` of a logged model's URI `models:/m-...`, else None."""
    found = LOGGED_MODEL.match(uri or "")
    return found.group(1) if found else None


def set_alias(client: MlflowClient, name: str, alias: str, version: str) -> None:
    try:
        client.set_registered_model_alias(name, alias, version)
    except MlflowException as exc:
        if denied(exc):
            raise access_denied(f"move {name}@{alias}", f"registered model {name}", "EDIT",
                                "the alias was not moved") from exc
        raise


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None] | None:
    """(name, alias, reference) of a registry URI, or None for any other URI:
    `models:/<name>@<alias>` -> (name, alias, None); `models:/<name>/<ref>` (a version number,
    `latest` or a stage) -> (name, None, ref); `models:/<name>` -> (name, None, None)."""
    if not uri.startswith("models:/"):
        return None
    ref = uri[len("models:/"):]
    name, sep, alias = ref.partition("@")
    if sep:
        return name, alias, None
    name, _, version = ref.rpartition("/")
    return (name, None, version) if name else (version, None, None)


def version_for_uri(client: MlflowClient, model_uri: str) -> ModelVersion | None:
    """The registry version behind `models:/<name>/<version>` or `models:/<name>@<alias>`."""
    parsed = parse_model_uri(model_uri)
    if parsed is None:
        return None
    name, alias, ref = parsed
    if alias is not None:
        return current(client, name, alias)
    return lookup(model_uri, lambda: client.get_model_version(name, ref)) if ref and ref.isdigit() else None


def champion_marker(client: MlflowClient, cfg, candidate_model_uri: str | None) -> str | None:
    """Which other model a qa run compares with (part of its cache key), or None.

    None when there is no champion or the champion is the candidate itself, so a re-run after
    the candidate became champion still finds its qa run cached."""
    if not cfg.qa.champion.enabled:
        return None
    version = current(client, cfg.registry.model_name, cfg.registry.champion_alias)
    if version is None or not candidate_model_uri:
        return None
    candidate_id = candidate_model_uri.rsplit("/", 1)[-1]
    if version.source == candidate_model_uri or getattr(version, "model_id", None) == candidate_id:
        return None
    return f"champion={cfg.registry.model_name}/{version.version}"
