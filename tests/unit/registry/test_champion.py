"""mlpipe/registry/champion.py: the champion qa compares with, against a real SQLite registry
(the rules that leave nothing to compare, what makes it incompatible, the trust boundary, a
registry that does not answer)."""

from __future__ import annotations

import pandas as pd
import pytest

from mlpipe.quality import model_checks
from mlpipe.registry import champion

TEST = pd.DataFrame({"x0": [0.0, 1.0], "y": [0, 1]})  # the registry fixture's champion takes x0


def find(client, candidate="models:/m-new", task="classification", test=TEST, tcfg=None):
    return champion.find(client, "m", "champion", candidate, task, test, "y", ("cloudpickle", []), tcfg)


def test_no_champion_is_a_note(registry):
    registry.client.delete_registered_model_alias("m", "champion")
    found = find(registry.client, tcfg=registry.tcfg)
    assert (found.info, found.model, found.reason) == ({"note": "no m@champion yet: nothing to compare"}, None, None)
    assert model_checks.champion_checks({}, found, ["accuracy"], 0.05, "fail") == ([], found.info)


def test_a_champion_of_another_task_fails_qa_unless_replacing_is_allowed(registry):
    registry.client.set_model_version_tag("m", registry.version.version, "qa.metric", "r2")
    found = find(registry.client, tcfg=registry.tcfg)
    assert found.model is None and found.reason == "the champion was validated on r2, not a classification metric"
    (check,), info = model_checks.champion_checks({}, found, ["accuracy"], 0.05, "fail")
    assert (check.name, check.passed, check.expected) == ("champion.compatible", False, "a champion this data can score")
    assert check.note == ("the champion was validated on r2, not a classification metric; "
                          "to let this model take over: qa.champion.on_incompatible=replace")
    assert info["replaced"] is False and str(info["version"]) == "1"
    (check,), info = model_checks.champion_checks({}, found, ["accuracy"], 0.05, "replace")
    assert check.passed and info["replaced"] is True
    assert check.note == "replaced: the champion was validated on r2, not a classification metric " \
                         "(qa.champion.on_incompatible=replace)"


def test_a_champion_needing_columns_this_data_lacks_is_incompatible(registry):
    """The registry's champion takes one column `x0` (a DummyClassifier fitted on [[0], [1]])."""
    found = find(registry.client, tcfg=registry.tcfg, test=pd.DataFrame({"other": [1.0, 2.0], "y": [0, 1]}))
    assert found.model is None and "input schema needs columns this data lacks: ['x0']" in found.reason


def test_a_champion_this_data_can_score_is_loaded(registry):
    found = find(registry.client, tcfg=registry.tcfg)
    assert found.reason is None and str(found.version) == "1"
    assert list(found.model.predict(TEST[["x0"]])) == [0, 0]


def test_a_champion_no_qa_run_vouches_for_is_refused_not_loaded(registry):
    """Moving the alias to a version with the champion's tags copied onto it fails qa; the
    champion's files changed after qa fail it too."""
    from pathlib import Path

    from mlpipe.errors import UntrustedModelError

    info = registry.log_model([1, 1])
    other = registry.client.create_model_version("m", info.model_uri, model_id=info.model_id, tags=registry.version.tags)
    registry.client.set_registered_model_alias("m", "champion", other.version)
    with pytest.raises(UntrustedModelError, match=r"models:/m/2 \(version 2 of m\): its source models:/m-\w+ is not the "
                                                  r"model qa run \w+ validated .*; refused, nothing loaded; move "
                                                  r"m@champion to a version qa validated"):
        find(registry.client, tcfg=registry.tcfg)
    registry.client.set_registered_model_alias("m", "champion", registry.version.version)
    mlmodel = Path(registry.client.get_model_version_download_uri("m", "1")) / "MLmodel"
    mlmodel.write_text(mlmodel.read_text() + "# swapped\n")
    with pytest.raises(UntrustedModelError, match="models:/m/1: its files changed since qa validated them"):
        find(registry.client, tcfg=registry.tcfg)


def test_the_candidate_itself_is_not_compared(registry):
    found = find(registry.client, tcfg=registry.tcfg, candidate=registry.model_uri)
    assert found.model is None and found.info["note"] == "the candidate is the champion"


def test_a_registry_that_does_not_answer_fails_the_champion_lookup(monkeypatch):
    import socket

    from mlflow import MlflowClient

    from mlpipe.errors import StorageError

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(StorageError, match="the model registry did not answer the lookup of m@champion"):
        find(MlflowClient(f"http://127.0.0.1:{port}", registry_uri=f"http://127.0.0.1:{port}"))
