"""serve.runtime=onnx: the server reads model.onnx, onnx.json and the MLmodel's signature, and
nothing else of the model directory. The attack: a model directory whose pickle and whose
python_function loader module write a marker file when loaded. Under runtime=sklearn the marker
appears (the attack works: that runtime trusts the directory); under onnx the same directory
serves its predictions and the marker never appears."""

from __future__ import annotations

import json
import pickle

import numpy as np
import onnx
import pytest
import yaml
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from mlpipe.config import compose, to_container
from mlpipe.errors import ServingError, UntrustedModelError
from mlpipe.serving import app, smoke, variants
from mlpipe.serving.spec import ServeSpec
from mlpipe.training import onnx_model
from tests.unit.serving.conftest import save_served_model


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'a').write('pickle ran\\n')",))


@pytest.fixture()
def booby_trapped(tmp_path):
    """A genuine model (predictions and ONNX conversion) whose pickle and loader module run code."""
    X, y = load_iris(return_X_y=True, as_frame=True)
    path, marker = tmp_path / "model", tmp_path / "ran.txt"
    save_served_model(path, LogisticRegression(max_iter=500), X, y)
    (path / "model.pkl").write_bytes(pickle.dumps(_Payload(str(marker))))
    (path / "code").mkdir()
    (path / "code" / "trap_loader.py").write_text(f"open({str(marker)!r}, 'a').write('loader module ran\\n')\n"
                                                  "def _load_pyfunc(path):\n    raise RuntimeError('trap')\n")
    mlmodel = yaml.safe_load((path / "MLmodel").read_text())
    mlmodel["flavors"]["python_function"] |= {"loader_module": "trap_loader", "code": "code"}
    (path / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    return path, marker, X


def _spec(tmp_path, path, runtime: str) -> ServeSpec:
    # allow_unvalidated: no qa run vouches for a folder; the digest check (test_variants.py) is not what is tested here
    scfg = to_container(compose([f"serve.variants=[{{name: a, model_uri: '{path}'}}]", "serve.allow_unvalidated=true",
                                 f"serve.runtime={runtime}"]))["serve"]
    return ServeSpec.from_config(scfg, "unused", str(tmp_path / "records.db"), "cloudpickle", [])


def test_under_sklearn_a_foreign_loader_is_refused_and_a_pickle_still_runs(tmp_path, booby_trapped):
    """The scikit-learn runtime refuses a loader module or code folder the MLmodel names
    (training/model_io.check_loader), but with serialization=cloudpickle it unpickles model.pkl,
    as configured: the attack works where the runtime trusts pickles."""
    import shutil

    path, marker, _ = booby_trapped
    with pytest.raises(UntrustedModelError, match="its MLmodel names loader module 'trap_loader'"):
        variants.load_variants(_spec(tmp_path, path, "sklearn"))
    assert not marker.exists()
    mlmodel = yaml.safe_load((path / "MLmodel").read_text())
    mlmodel["flavors"]["python_function"]["loader_module"] = "mlflow.sklearn"
    del mlmodel["flavors"]["python_function"]["code"]
    (path / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    shutil.rmtree(path / "code")
    try:  # what the pickle leaves is not a model: it may fail now or at the first request
        variants.load_variants(_spec(tmp_path, path, "sklearn"))
    except ServingError:
        pass
    assert marker.read_text() == "pickle ran\n"


def test_under_onnx_the_trapped_directory_serves_and_runs_nothing(tmp_path, booby_trapped):
    path, marker, X = booby_trapped
    spec = _spec(tmp_path, path, "onnx")
    served = app.create_app(spec, variants.load_variants(spec))
    with smoke.BackgroundServer(served, "127.0.0.1", startup_timeout=60, shutdown_timeout=5, log_level="warning") as url:
        status, text = smoke.request(f"{url}/invocations", {"dataframe_split": X.head(3).to_dict(orient="split")}, 30)
    assert (status, json.loads(text)) == (200, {"predictions": [0, 0, 0]})
    assert not marker.exists()


def test_a_model_without_a_conversion_is_refused_naming_the_runtime_setting(tmp_path, booby_trapped):
    path, marker, _ = booby_trapped
    (path / "onnx.json").unlink()
    with pytest.raises(UntrustedModelError, match=r"has no ONNX conversion \(onnx.json\): .*serve.runtime=sklearn"):
        variants.load_variants(_spec(tmp_path, path, "onnx"))
    assert not marker.exists()


def test_a_graph_with_a_custom_operator_domain_is_refused(tmp_path, booby_trapped):
    path, _, _ = booby_trapped
    graph = onnx.load(str(path / "model.onnx"))
    graph.graph.node[0].domain = "com.attacker"
    (path / "model.onnx").write_bytes(graph.SerializeToString())
    with pytest.raises(UntrustedModelError, match="of domain 'com.attacker' .*: refused"):
        variants.load_variants(_spec(tmp_path, path, "onnx"))


def test_a_graph_reading_a_tensor_from_another_file_is_refused(tmp_path, booby_trapped):
    path, _, _ = booby_trapped
    graph = onnx.load(str(path / "model.onnx"))
    tensor = graph.graph.initializer[0]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="../../etc/passwd")
    (path / "model.onnx").write_bytes(graph.SerializeToString())
    with pytest.raises(UntrustedModelError, match="reads tensor .* from another file: refused"):
        onnx_model.load(path, "the model")


def test_the_onnx_model_predicts_what_scikit_learn_predicts(booby_trapped):
    path, _, X = booby_trapped
    model = onnx_model.load(path, "the model")
    fitted = LogisticRegression(max_iter=500)  # the same fit as the saved one
    save_served_model(path.parent / "again", fitted, X, load_iris(as_frame=True).target)
    again = onnx_model.load(path.parent / "again", "again")
    assert np.array_equal(model.predict(X), again.predict(X))
    assert model.metadata.get_input_schema().input_names() == list(X.columns)


def test_json_rows_go_straight_to_the_graph_only_when_their_values_need_no_conversion(booby_trapped):
    path, _, X = booby_trapped
    model = onnx_model.load(path, "the model")
    rows = X.head(20)
    split = json.loads(rows.to_json(orient="split", index=False))
    records = rows.to_dict(orient="records")
    expected = model.predict(rows)
    assert model.direct
    assert np.array_equal(model.predict_rows(tuple(split["columns"]), split["data"]), expected)
    assert np.array_equal(model.predict_rows(tuple(records[0]), records), expected)
    reordered = [dict(reversed(list(r.items()))) for r in records]
    assert np.array_equal(model.predict_rows(tuple(reordered[0]), reordered), expected)
    ints = [{k: int(v) for k, v in r.items()} for r in records]  # MLflow parses JSON ints into the double columns too
    assert np.array_equal(model.predict_rows(tuple(ints[0]), ints), model.predict(rows.astype(int).astype(float)))
    columns = tuple(records[0])
    for bad in ({columns[0]: "lots"}, {columns[0]: None}, {columns[0]: True}):
        assert model.predict_rows(columns, [records[0] | bad]) is None  # MLflow's parse and errors decide
    assert model.predict_rows(columns[:-1], [{k: v for k, v in records[0].items() if k != columns[-1]}]) is None
    assert model.predict_rows(columns + ("extra",), [records[0] | {"extra": 1.0}]) is None
