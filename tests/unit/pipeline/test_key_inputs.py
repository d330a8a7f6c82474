"""mlpipe/pipeline/key_inputs.py: what enters ingest's and qa's cache keys beyond config, code and upstream."""

from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from mlpipe.errors import DataError
from mlpipe.pipeline import key_inputs
from mlpipe.run.outputs import TrainOutput


@pytest.fixture
def client(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def cfg(tmp_path, **data):
    return OmegaConf.create({
        "data": {"source": str(tmp_path / "d.csv"), "schema": None, "append": [], **data.get("data", {})},
        "qa": {"data_source": data.get("batch"), "champion": {"enabled": True}},
        "registry": {"model_name": "m", "champion_alias": "champion"}})


def train_run(uri="models:/m-1"):
    """A train run as the train step leaves it: its typed hand-off."""
    tags = TrainOutput(model_uri=uri, task="classification", model_class="X", preprocess_run_id="p").tags()
    return SimpleNamespace(info=SimpleNamespace(run_id="t"), data=SimpleNamespace(tags=tags))


def test_only_ingest_and_qa_have_key_inputs(client, tmp_path):
    assert set(key_inputs.KEY_INPUTS) == {"ingest", "qa"}
    assert key_inputs.key_input("train", client, cfg(tmp_path), None) is None


def test_ingest_key_follows_the_data_and_the_schema_file(client, tmp_path):
    (tmp_path / "d.csv").write_text("a,b\n1,2\n")
    plain = key_inputs.key_input("ingest", client, cfg(tmp_path), None)
    schema = tmp_path / "s.yaml"
    schema.write_text("columns: {}\n")
    with_schema = key_inputs.key_input("ingest", client, cfg(tmp_path, data={"schema": str(schema)}), None)
    assert with_schema.startswith(plain + ";schema=")
    assert key_inputs.data_digest(with_schema) == key_inputs.data_digest(plain) == plain
    schema.write_text("columns: {a: {}}\n")
    assert key_inputs.key_input("ingest", client, cfg(tmp_path, data={"schema": str(schema)}), None) != with_schema
    (tmp_path / "d.csv").write_text("a,b\n1,3\n")
    assert key_inputs.key_input("ingest", client, cfg(tmp_path), None) != plain


def test_ingest_key_follows_each_appended_files_content(client, tmp_path):
    (tmp_path / "d.csv").write_text("a,b\n1,2\n")
    (tmp_path / "served.csv").write_text("a,b\n3,4\n")
    plain = key_inputs.key_input("ingest", client, cfg(tmp_path), None)
    appended = key_inputs.key_input("ingest", client, cfg(tmp_path, data={"append": [str(tmp_path / "served.csv")]}),
                                    None)
    assert appended.startswith(plain + "+") and key_inputs.data_digest(appended) == appended
    (tmp_path / "served.csv").write_text("a,b\n3,5\n")  # new served rows: a new ingest
    assert key_inputs.key_input("ingest", client, cfg(tmp_path, data={"append": [str(tmp_path / "served.csv")]}),
                                None) != appended


def test_ingest_key_of_unreadable_data_raises_the_data_error(client, tmp_path):
    with pytest.raises(DataError):
        key_inputs.key_input("ingest", client, cfg(tmp_path), None)


def test_qa_key_names_the_drift_batch_content(client, tmp_path):
    assert key_inputs.key_input("qa", client, cfg(tmp_path), train_run()) is None  # no champion, no batch
    batch = tmp_path / "batch.csv"
    batch.write_text("a\n1\n")
    first = key_inputs.key_input("qa", client, cfg(tmp_path, batch=str(batch)), train_run())
    assert first.startswith("batch=")
    batch.write_text("a\n2\n")
    assert key_inputs.key_input("qa", client, cfg(tmp_path, batch=str(batch)), train_run()) != first
