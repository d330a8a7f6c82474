"""The storage core: retry policy, error classes, locations, local checks, the S3 experiment."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, ReadTimeoutError

from mlpipe.config import compose, to_container
from mlpipe.errors import ConfigError, StorageError
from mlpipe.run import storage


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "PutObject")


def s3_cfg(**over) -> dict:
    cfg = to_container(compose(["storage=s3", "storage.bucket=team-bucket"]))["storage"]
    cfg.update(over)
    return cfg


class Flaky:
    """Fails `failures` times with `error`, then returns 'done'."""

    def __init__(self, failures: int, error: BaseException):
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "done"


def test_retry_recovers_from_an_outage_shorter_than_its_attempts():
    sleeps: list[float] = []
    fn = Flaky(3, EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert storage.RetryPolicy(4, 0.5, 5, 0.5).call(fn, storage.is_transient, sleep=sleeps.append) == "done"
    assert fn.calls == 4 and len(sleeps) == 3


def test_retry_waits_grow_exponentially_with_bounded_jitter_and_a_cap():
    sleeps: list[float] = []
    fn = Flaky(10, EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    with pytest.raises(EndpointConnectionError):
        storage.RetryPolicy(6, 0.5, 3.0, 0.25).call(fn, storage.is_transient, sleep=sleeps.append)
    assert fn.calls == 6 and len(sleeps) == 5
    jitters = []
    for n, wait in enumerate(sleeps):
        base = min(0.5 * 2**n, 3.0)
        assert base <= wait <= min(base + 0.25, 3.0) or wait == 3.0
        if 0.5 * 2**n + 0.25 < 3.0:  # below the cap, the jitter shows
            jitters.append(wait - base)
    # U(0, 0.25) each time: three zeros would mean no jitter at all (probability 0)
    assert len(jitters) == 3 and any(j > 0 for j in jitters)


def test_a_configuration_error_is_not_retried():
    sleeps: list[float] = []
    fn = Flaky(5, client_error("InvalidAccessKeyId", 403))
    with pytest.raises(ClientError):
        storage.RetryPolicy(4, 0.5, 5, 0.5).call(fn, storage.is_transient, sleep=sleeps.append)
    assert fn.calls == 1 and sleeps == []


@pytest.mark.parametrize("exc, transient", [
    (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), True),
    (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), True),
    (ConnectionResetError(), True),
    (client_error("InternalError", 500), True),
    (client_error("SlowDown", 503), True),
    (client_error("InvalidAccessKeyId", 403), False),
    (client_error("SignatureDoesNotMatch", 403), False),
    (client_error("NoSuchBucket", 404), False),
    (client_error("AccessDenied", 403), False),
    (client_error("InvalidRequest", 400), False),
    (NoCredentialsError(), False),
])
def test_outages_are_transient_and_configuration_errors_are_not(exc, transient):
    assert storage.is_transient(exc) is transient


def test_the_s3_location_joins_bucket_prefix_and_experiment():
    assert storage.s3_location(s3_cfg()) == "s3://team-bucket/mlpipe/mlpipe"
    assert storage.s3_location(s3_cfg(prefix="/a/b/", experiment="e")) == "s3://team-bucket/a/b/e"
    assert storage.s3_location(s3_cfg(prefix="")) == "s3://team-bucket/mlpipe"


def test_s3_storage_without_a_bucket_says_how_to_set_it():
    with pytest.raises(ConfigError, match=r"storage=s3 needs storage.bucket .*storage.bucket=<bucket>"):
        storage.s3_location(s3_cfg(bucket=None))


def test_the_fallback_root_sits_beside_a_sqlite_database_unless_configured(tmp_path):
    assert storage.fallback_root(s3_cfg(), f"sqlite:///{tmp_path}/mlflow.db") == tmp_path / "mlruns-fallback"
    assert storage.fallback_root(s3_cfg(fallback_dir=str(tmp_path / "fb")), "sqlite:///x.db") == tmp_path / "fb"
    assert storage.fallback_run_dir(tmp_path, "3", "abc") == tmp_path / "3" / "abc" / "artifacts"


def test_local_artifact_uris_are_recognised():
    assert str(storage.local_path("file:///tmp/a/b")) == "/tmp/a/b"
    assert str(storage.local_path("/tmp/a")) == "/tmp/a"
    assert storage.local_path("s3://b/k") is None
    assert storage.local_path("mlflow-artifacts:/1/x") is None


def test_a_writable_folder_passes_the_local_check(tmp_path):
    storage.check_local_dir(tmp_path / "new", 0, "fallback folder")
    assert (tmp_path / "new").is_dir() and list((tmp_path / "new").iterdir()) == []


def test_a_folder_under_a_file_is_not_writable(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match=r"fallback folder .*/file/sub is not writable"):
        storage.check_local_dir(tmp_path / "file" / "sub", 0, "fallback folder")


def test_too_little_free_space_is_refused(tmp_path):
    with pytest.raises(StorageError, match=r"MB free, below storage.min_free_mb=1e\+12"):
        storage.check_local_dir(tmp_path, 1e12, "fallback folder")


def test_a_step_run_outside_the_s3_experiment_is_refused_with_the_fix():
    run = SimpleNamespace(info=SimpleNamespace(artifact_uri="/work/mlruns/0/abc/artifacts"))
    with pytest.raises(ConfigError, match="--experiment-name mlpipe"):
        storage.check_run_location(run, s3_cfg())
    inside = SimpleNamespace(info=SimpleNamespace(artifact_uri="s3://team-bucket/mlpipe/mlpipe/abc/artifacts"))
    storage.check_run_location(inside, s3_cfg())
    storage.check_run_location(run, to_container(compose([]))["storage"])  # local: anything goes


def test_the_s3_experiment_is_created_once_with_its_location(tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    first = storage.ensure_experiment(client, s3_cfg())
    assert client.get_experiment(first).artifact_location == "s3://team-bucket/mlpipe/mlpipe"
    assert storage.ensure_experiment(client, s3_cfg()) == first
    assert storage.ensure_experiment(client, to_container(compose([]))["storage"]) is None
    client.create_experiment("elsewhere", artifact_location=str(tmp_path / "x"))
    with pytest.raises(ConfigError, match="experiment 'elsewhere' stores artifacts at"):
        storage.ensure_experiment(client, s3_cfg(experiment="elsewhere"))


def test_the_fallback_banner_names_the_run_the_reason_and_the_folder():
    text = storage.banner("train", "r1", "s3://b/p", "EndpointConnectionError: x", "file:///fb/1/r1/artifacts")
    assert "STORAGE FALLBACK (train, run r1)" in text and "EndpointConnectionError" in text
    assert "file:///fb/1/r1/artifacts" in text and "storage.fallback=false" in text


def test_a_proxied_artifact_becomes_the_servers_http_url_as_a_dataset_source():
    assert storage.dataset_source("mlflow-artifacts:/0/r1/artifacts/data/raw.parquet", "http://127.0.0.1:5000/") == (
        "http://127.0.0.1:5000/api/2.0/mlflow-artifacts/artifacts/0/r1/artifacts/data/raw.parquet")
    assert storage.dataset_source("s3://b/p/r1/artifacts/x.parquet", "sqlite:///x.db") == "s3://b/p/r1/artifacts/x.parquet"
    assert storage.dataset_source("/tmp/mlruns/0/r1/artifacts/x", "sqlite:///x.db") == "/tmp/mlruns/0/r1/artifacts/x"
