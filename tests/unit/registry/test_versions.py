"""mlpipe/registry/versions.py: reading registry URIs (the pure part; the rest is MLflow's registry)."""

from __future__ import annotations

import pytest

from mlpipe.registry.versions import parse_model_uri


@pytest.mark.parametrize(("uri", "expected"), [
    ("models:/wine@champion", ("wine", "champion", None)),
    ("models:/wine/3", ("wine", None, "3")),
    ("models:/wine/latest", ("wine", None, "latest")),
    ("models:/wine/Production", ("wine", None, "Production")),
    ("models:/wine", ("wine", None, None)),
    ("models:/m-0123abcd", ("m-0123abcd", None, None)),
    ("runs:/0123abcd/model", None),
    ("/tmp/model", None),
])
def test_parse_model_uri(uri, expected):
    assert parse_model_uri(uri) == expected


# -- lookups against a real registry: only "does not exist" means none ------------------------
def test_a_missing_model_alias_or_version_is_none(registry):
    from mlpipe.registry import versions

    registry = registry.client
    assert str(versions.current(registry, "m", "champion").version) == "1"
    assert versions.current(registry, "m", "challenger") is None  # the model exists, the alias does not
    assert versions.current(registry, "no_such_model", "champion") is None
    assert versions.version_for_uri(registry, "models:/m/7") is None
    assert str(versions.version_for_uri(registry, "models:/m@champion").version) == "1"


def test_a_registry_that_does_not_answer_is_a_storage_error_never_no_champion(monkeypatch):
    """A connection refused (a stopped tracking server) after MLflow's HTTP retries: an error that
    names the lookup, so register cannot promote with no comparison."""
    import socket

    from mlflow import MlflowClient

    from mlpipe.errors import StorageError
    from mlpipe.registry import versions

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = MlflowClient(f"http://127.0.0.1:{port}", registry_uri=f"http://127.0.0.1:{port}")
    for call in (lambda: versions.current(client, "m", "champion"),
                 lambda: versions.version_for_uri(client, "models:/m/3")):
        with pytest.raises(StorageError) as info:
            call()
        message = str(info.value)
        assert message.startswith("the model registry did not answer the lookup of m")
        assert "no alias was moved" in message and "\n" not in message


def test_the_champion_enters_qa_s_cache_key_unless_it_is_the_candidate(registry):
    """qa's key input: a qa result is stale once another model is champion, and reused once the
    candidate itself became champion."""
    from omegaconf import OmegaConf

    from mlpipe.registry import versions

    cfg = OmegaConf.create({"qa": {"champion": {"enabled": True}},
                            "registry": {"model_name": "m", "champion_alias": "champion"}})
    assert versions.champion_marker(registry.client, cfg, "models:/m-another") == "champion=m/1"
    assert versions.champion_marker(registry.client, cfg, registry.model_uri) is None
    registry.client.delete_registered_model_alias("m", "champion")
    assert versions.champion_marker(registry.client, cfg, "models:/m-another") is None
    cfg.qa.champion.enabled = False
    registry.client.set_registered_model_alias("m", "champion", "1")
    assert versions.champion_marker(registry.client, cfg, "models:/m-another") is None
