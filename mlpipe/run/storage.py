"""Where a run's artifacts live: probe before writing, retry with backoff, fall back to local disk.

`conf/storage` picks `local` (the tracking store's own artifact location: a local folder for a
SQLite store, the server's artifact store for a tracking server) or `s3` (bucket/prefix, any
S3-compatible endpoint). Before a step writes anything, `prepare` probes the place its run's
artifact URI names, with short timeouts and tenacity retries (exponential backoff + jitter):

- an outage (no connection, timeouts, 5xx) that outlasts the retries: with `storage.fallback=true`
  the run is re-pointed at a local folder (its artifact URI in the tracking store is changed, so
  the run says where its artifacts really are), tagged `storage.fallback=true` with the reason,
  and a loud warning is printed once; with `storage.fallback=false` the step fails (StorageError);
- a configuration error (bad credentials, no such bucket, access denied) fails at once: retrying
  or falling back would only hide it.

Re-pointing a run needs a SQL tracking store (SQLite, PostgreSQL, MySQL): MLflow has no API that
changes a run's artifact URI, so this module updates that one column through MLflow's own
SQLAlchemy session. Against a tracking server (REST) a failed probe is an error, never a fallback.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlparse

from mlpipe.errors import ConfigError, StorageError, one_line
from mlpipe.run.outputs import FALLBACK_REASON_TAG, FALLBACK_TAG, ORIGINAL_URI_TAG


# S3 error codes that no retry can fix: the configuration is wrong.
PERMANENT_CODES = frozenset({
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidClientTokenId", "ExpiredToken",
    "NoSuchBucket", "AllAccessDisabled", "InvalidBucketName", "AuthorizationHeaderMalformed", "403", "404",
})
# OSError numbers that mean the local disk cannot take the artifacts (full, read-only, denied).
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
# The process-wide state a step needs after `prepare`: where logged models go when it fell back.
_FALLBACK_ROOT: Path | None = None


# -- settings ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: wait min(initial * 2**n + U(0, jitter), max_wait)."""

    attempts: int
    initial_wait: float
    max_wait: float
    jitter: float

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "RetryPolicy":
        """`storage.retry` (ranges checked when composed: mlpipe/schema/)."""
        return cls(int(cfg["attempts"]), float(cfg["initial_wait"]), float(cfg["max_wait"]), float(cfg["jitter"]))

    def call(self, fn: Callable[[], Any], retry_if: Callable[[BaseException], bool],
             sleep: Callable[[float], None] = time.sleep) -> Any:
        """fn() until it succeeds, raises an error `retry_if` rejects, or attempts run out
        (then the last error is raised)."""
        import tenacity

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=tenacity.wait_exponential_jitter(initial=self.initial_wait, max=self.max_wait, jitter=self.jitter),
            retry=tenacity.retry_if_exception(retry_if), reraise=True, sleep=sleep,
        )
        return retrying(fn)


def s3_location(cfg: Mapping[str, Any]) -> str:
    """`s3://<bucket>/<prefix>/<experiment>`: the artifact location of the pipeline's experiment."""
    bucket = cfg.get("bucket")
    if not bucket or len(str(bucket)) < 3:
        raise ConfigError(f"storage=s3 needs storage.bucket (3+ characters), got {bucket!r}; "
                          "set it: overrides=\"storage=s3 storage.bucket=<bucket>\" (or MLPIPE_S3_BUCKET)")
    parts = [str(bucket), *(p for p in str(cfg.get("prefix") or "").strip("/").split("/") if p), str(cfg["experiment"])]
    return "s3://" + "/".join(parts)


def apply_client_settings(cfg: Mapping[str, Any]) -> None:
    """Timeouts and retries for every network call MLflow makes in this process and its children:
    HTTP to a tracking server (MLflow's own variables) and S3 (boto3's default client config)."""
    http = cfg["http"]
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(http["timeout"]))
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(int(http["max_retries"]))
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = str(int(http["backoff_factor"]))
    if cfg.get("endpoint_url"):
        os.environ["MLFLOW_S3_ENDPOINT_URL"] = str(cfg["endpoint_url"])
    s3 = cfg["s3_client"]
    import logging

    import boto3
    import botocore.session
    from botocore.config import Config

    session = botocore.session.get_session()
    session.set_default_client_config(Config(
        connect_timeout=float(s3["connect_timeout"]), read_timeout=float(s3["read_timeout"]),
        retries={"max_attempts": int(s3["max_attempts"]), "mode": "standard"},
    ))
    boto3.setup_default_session(botocore_session=session)
    logging.getLogger("botocore").setLevel(logging.WARNING)


# -- what an error means ------------------------------------------------------------------------
def error_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
    return None


def is_transient(exc: BaseException) -> bool:
    """True for an outage worth retrying (no connection, timeouts, throttling, 5xx); False for a
    configuration error (credentials, bucket, permissions), which no retry can fix."""
    from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

    if isinstance(exc, (NoCredentialsError, PartialCredentialsError, ConfigError)):
        return False
    if isinstance(exc, ClientError):
        code = error_code(exc) or ""
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return code not in PERMANENT_CODES and (status >= 500 or status in (408, 429) or code in ("SlowDown", "RequestTimeout"))
    return True  # connection refused/reset, timeouts, DNS: the endpoint is (for now) unreachable


def describe(exc: BaseException) -> str:
    text = one_line(exc)
    return f"{type(exc).__name__}: {text}"


# -- probes ------------------------------------------------------------------------------------
def s3_client(connect_timeout: float | None = None, read_timeout: float | None = None,
              max_attempts: int | None = None):
    """The one S3 client factory: at MLFLOW_S3_ENDPOINT_URL (or AWS), with the timeouts and
    attempts of `storage.s3_client` (boto3's default config, set by `apply_client_settings`)
    unless given here (the probe's shorter ones)."""
    import boto3
    from botocore.config import Config

    settings = {key: value for key, value in (("connect_timeout", connect_timeout), ("read_timeout", read_timeout))
                if value is not None}
    if max_attempts is not None:
        settings["retries"] = {"max_attempts": int(max_attempts), "mode": "standard"}
    return boto3.client("s3", endpoint_url=os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None,
                        config=Config(**settings) if settings else None)


def _probe_client(cfg: Mapping[str, Any]):
    probe = cfg["probe"]
    return s3_client(float(probe["connect_timeout"]), float(probe["read_timeout"]), max_attempts=1)


def split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


def probe_s3(uri: str, cfg: Mapping[str, Any], policy: RetryPolicy) -> None:
    """Write, read back and delete a small object under `uri`; retried on outages."""
    bucket, key = split_s3(uri)
    client = _probe_client(cfg)
    probe_key = f"{key.rstrip('/')}/.mlpipe-probe-{uuid.uuid4().hex}"

    def once() -> None:
        client.put_object(Bucket=bucket, Key=probe_key, Body=b"ok")
        client.head_object(Bucket=bucket, Key=probe_key)
        client.delete_object(Bucket=bucket, Key=probe_key)

    policy.call(once, is_transient)


def check_local_dir(path: Path, min_free_mb: float, what: str) -> None:
    """A folder we can create, write and fsync a file in, with `min_free_mb` free."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".mlpipe-probe-{uuid.uuid4().hex}"
        with probe.open("wb") as fh:
            fh.write(b"ok")
            fh.flush()
            os.fsync(fh.fileno())
        probe.unlink()
    except OSError as exc:
        raise StorageError(f"{what} {path} is not writable: {exc.strerror or exc}") from exc
    free_mb = shutil.disk_usage(path).free / 2**20
    if free_mb < min_free_mb:
        raise StorageError(f"{what} {path} has {free_mb:.1f} MB free, below storage.min_free_mb={min_free_mb:g}")


def local_path(uri: str) -> Path | None:
    """The folder a local artifact URI names (file:// or a plain path), else None."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(parsed.path)
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return Path(uri)
    return None


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///` tracking URI (relative paths resolved), else None."""
    prefix = "sqlite:///"
    return Path(tracking_uri[len(prefix):]).resolve() if tracking_uri.startswith(prefix) else None


# -- fallback ----------------------------------------------------------------------------------
def fallback_root(cfg: Mapping[str, Any], tracking_uri: str) -> Path:
    """`storage.fallback_dir`, else a folder beside a SQLite database, else ~/.mlpipe/fallback."""
    if cfg.get("fallback_dir"):
        return Path(str(cfg["fallback_dir"])).expanduser().resolve()
    database = sqlite_path(tracking_uri)
    if database:
        return database.parent / "mlruns-fallback"
    return Path("~/.mlpipe/fallback").expanduser()


def fallback_run_dir(root: Path, experiment_id: str, run_id: str) -> Path:
    """The same layout MLflow uses for a local experiment: <root>/<experiment>/<run>/artifacts."""
    return root / str(experiment_id) / run_id / "artifacts"


def _sql_store(client):
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = client._tracking_client.store
    return store if isinstance(store, SqlAlchemyStore) else None


def repoint_run(client, run_id: str, uri: str) -> None:
    """Change the artifact URI the tracking store holds for this run (SQL stores only)."""
    from mlflow.store.tracking.dbmodels.models import SqlRun

    store = _sql_store(client)
    if store is None:
        raise StorageError("a local fallback needs a SQL tracking store (sqlite, postgresql, mysql): a tracking "
                           "server cannot be told that a run's artifacts moved")
    if len(uri) > 200:
        raise StorageError(f"fallback artifact URI is {len(uri)} characters; MLflow stores at most 200: "
                           "choose a shorter storage.fallback_dir")
    with store.ManagedSessionMaker() as session:
        session.query(SqlRun).filter(SqlRun.run_uuid == run_id).update({SqlRun.artifact_uri: uri})


def repoint_model(client, model_id: str, uri: str) -> None:
    from mlflow.store.tracking.dbmodels.models import SqlLoggedModel

    store = _sql_store(client)
    with store.ManagedSessionMaker() as session:
        session.query(SqlLoggedModel).filter(SqlLoggedModel.model_id == model_id).update(
            {SqlLoggedModel.artifact_location: uri})


def masked_url(url: str) -> str:
    """The URL as it may be printed: a password in it (`user:password@`, `?password=`) replaced
    by ***; anything that is not a URL as it is."""
    import re
    from urllib.parse import urlsplit

    if "://" not in url:
        return url
    password = urlsplit(url).password  # the last `@` ends it, as for any URL parser
    if password is not None:
        url = url.replace(f":{password}@", ":***@", 1)
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", url, flags=re.I)  # the rest left as written


def log_model(log_fn: Callable[..., Any], **kwargs: Any):
    """`mlflow.<flavor>.log_model(**kwargs)`, stored beside the run when the run fell back.

    A logged model's artifact location comes from its experiment (on S3 here), not from its run,
    so after a fallback the model is created first and re-pointed at the local folder."""
    if _FALLBACK_ROOT is None:
        return log_fn(**kwargs)
    import mlflow

    run = mlflow.active_run()
    model = mlflow.initialize_logged_model(name=kwargs.get("name"), source_run_id=run.info.run_id)
    target = _FALLBACK_ROOT / str(run.info.experiment_id) / "models" / model.model_id / "artifacts"
    target.mkdir(parents=True, exist_ok=True)
    repoint_model(mlflow.MlflowClient(), model.model_id, target.as_uri())
    return log_fn(model_id=model.model_id, **kwargs)


def banner(step: str, run_id: str, uri: str, reason: str, target: str) -> str:
    line = "!" * 78
    return "\n".join([
        line,
        f"warning: STORAGE FALLBACK ({step}, run {run_id}): {uri} is unreachable ({reason}).",
        f"warning: this run's artifacts are stored locally at {target}",
        f"warning: the run is tagged {FALLBACK_TAG}=true; later pipelines do not reuse it, so its step",
        "warning: reruns onto S3 once S3 is back. Set storage.fallback=false to fail instead.",
        line,
    ])


def prepare(client, run, cfg: Mapping[str, Any], step: str, tracking_uri: str) -> bool:
    """Probe the run's artifact location before anything is written; fall back or fail.
    True when the run was re-pointed at the local fallback folder."""
    global _FALLBACK_ROOT
    uri = run.info.artifact_uri
    policy = RetryPolicy.from_config(cfg["retry"])
    min_free = float(cfg["min_free_mb"])
    local = local_path(uri)
    if local is not None:
        check_local_dir(local.parent if not local.exists() else local, min_free, "artifact folder")
        return False
    if not uri.startswith("s3://"):
        # A tracking server's proxied store (mlflow-artifacts:/, http): probe through the server.
        try:
            policy.call(lambda: client.list_artifacts(run.info.run_id), lambda exc: True)
        except Exception as exc:
            raise StorageError(f"artifact store {uri} is not answering: {describe(exc)}") from exc
        return False
    started = time.monotonic()
    try:
        probe_s3(uri, cfg, policy)
        return False
    except Exception as exc:  # noqa: BLE001 - classified below
        reason = describe(exc)
        if not is_transient(exc):
            raise StorageError(f"S3 refused {uri} ({error_code(exc) or type(exc).__name__}): {reason}; "
                               "check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY), "
                               "storage.bucket and its permissions") from exc
        reason = f"{reason}; {policy.attempts} attempt(s) over {time.monotonic() - started:.1f} s"
        if not cfg["fallback"]:
            raise StorageError(f"S3 is unreachable for {uri}: {reason} (storage.fallback=false)") from exc
    root = fallback_root(cfg, tracking_uri)
    target = fallback_run_dir(root, run.info.experiment_id, run.info.run_id)
    check_local_dir(root, min_free, "fallback folder (storage.fallback_dir)")
    target.mkdir(parents=True, exist_ok=True)
    repoint_run(client, run.info.run_id, target.as_uri())
    client.set_tag(run.info.run_id, FALLBACK_TAG, "true")
    client.set_tag(run.info.run_id, FALLBACK_REASON_TAG, reason[:5000])
    client.set_tag(run.info.run_id, ORIGINAL_URI_TAG, uri)
    _FALLBACK_ROOT = root
    print(banner(step, run.info.run_id, uri, reason, target.as_uri()), file=sys.stderr)
    return True


def dataset_source(artifact_uri: str, tracking_uri: str) -> str:
    """A URI MLflow accepts as a dataset source for a run artifact. A tracking server's proxied
    `mlflow-artifacts:/<path>` (no source resolver exists for it) becomes the server's HTTP URL
    for the same file."""
    prefix = "mlflow-artifacts:"
    if not artifact_uri.startswith(prefix):
        return artifact_uri
    path = urlparse(artifact_uri).path.lstrip("/")
    return f"{tracking_uri.rstrip('/')}/api/2.0/mlflow-artifacts/artifacts/{path}"


# -- the pipeline's experiment ------------------------------------------------------------------
def ensure_experiment(client, cfg: Mapping[str, Any]) -> str | None:
    """With storage=s3: the id of `storage.experiment`, created with its S3 artifact location on
    first use. An existing experiment elsewhere is an error, never silently used. None for local."""
    if cfg["kind"] != "s3":
        return None
    from mlflow.exceptions import MlflowException

    name, location = str(cfg["experiment"]), s3_location(cfg)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException:  # created meanwhile by a concurrent pipeline
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage != "active":
        raise ConfigError(f"experiment {name!r} is deleted; restore it or choose another storage.experiment")
    if experiment.artifact_location.rstrip("/") != location:
        raise ConfigError(f"experiment {name!r} stores artifacts at {experiment.artifact_location}, not {location}; "
                          "choose another storage.experiment")
    return experiment.experiment_id


def check_run_location(run, cfg: Mapping[str, Any]) -> None:
    """A step run with storage=s3 must be in an experiment on the configured bucket/prefix."""
    if cfg["kind"] != "s3":
        return
    location = s3_location(cfg)
    if not run.info.artifact_uri.startswith(location.rsplit("/", 1)[0] + "/"):
        raise ConfigError(
            f"storage=s3 ({location}) but this run's artifacts go to {run.info.artifact_uri}; run the step in "
            f"experiment {cfg['experiment']!r}: mlflow run . -e <step> --experiment-name {cfg['experiment']} "
            f"(main creates it; or: mlflow experiments create -n {cfg['experiment']} -l {location})"
        )
