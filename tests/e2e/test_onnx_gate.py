"""runtime=onnx through `mlflow run . -e main`: train logs model.onnx beside the scikit-learn
model, qa's parity check passes it on the test split, and the server answers from it; a
conversion that disagrees beyond qa.onnx's tolerance, or an estimator with no converter, fails
qa in one line naming the estimator and runtime=sklearn, which then serves it instead."""

from __future__ import annotations

import json

from mlpipe.run.outputs import TrainOutput
from support import Store, error_lines


def _checks(store: Store, run) -> tuple[dict, dict]:
    report = json.load(open(store.client.download_artifacts(run.info.run_id, "qa_report.json", str(store.path))))
    return report, {c["name"]: c for c in report["checks"]}


def _parity(store: Store, run) -> tuple[dict, dict]:
    report, checks = _checks(store, run)
    return report["onnx"], checks["onnx.parity"]


def test_a_pipeline_serves_the_onnx_conversion_qa_checked(tmp_path):
    store = Store(tmp_path)
    store.mlflow_run("-P", "overrides=serve.mode=smoke", check=True)
    train, qa, serve = (store.step_runs(step)[-1] for step in ("train", "qa", "serve"))
    model_id = TrainOutput.from_run(train).model_uri.removeprefix("models:/")
    files = {a.path for a in store.client.list_logged_model_artifacts(model_id)}
    assert {"model.onnx", "onnx.json", "MLmodel", "model.pkl"} <= files
    report, check = _parity(store, qa)
    assert report["estimator"] == "RandomForestClassifier" and report["labels_differ"] == 0 and report["rows"] == 36
    assert check["passed"] and 0 <= check["value"] <= 1e-4
    assert qa.data.metrics["qa.onnx_max_diff"] == check["value"]
    checks = _checks(store, qa)[1]  # the served model is the one timed and sent the serving payload
    assert checks["inference.cpu_p95_ms"]["note"].endswith("; onnxruntime")
    assert checks["inference.serving_input"]["passed"] and checks["inference.serving_input"]["value"] == 5
    assert serve.info.status == "FINISHED" and "-> 200" in serve.data.tags["pipeline.summary"]


def test_a_conversion_that_disagrees_is_stopped_by_qa(tmp_path):
    """A tolerance of 0: onnxruntime's float32 sums differ from scikit-learn's by about 1e-7."""
    store = Store(tmp_path)
    result = store.mlflow_run("-P", "overrides=qa.onnx.max_probability_diff=0")
    assert result.returncode != 0
    qa = store.step_runs("qa")[-1]
    assert qa.info.status == "FAILED" and qa.data.tags["qa.failed_checks"] == "onnx.parity"
    [line] = [x for x in error_lines(result.stderr) if "step qa failed" in x]
    assert "onnx.parity=" in line and "RandomForestClassifier: 0 of 36 labels differ, largest probability difference" \
        in line and "(to change: runtime=sklearn serves the scikit-learn model" in line
    report, _ = _parity(store, qa)
    assert report["max_probability_diff"] > 0 and not report["passed"]
    assert store.step_runs("register") == []


def test_an_estimator_without_a_converter_fails_qa_and_runtime_sklearn_serves_it(tmp_path):
    store = Store(tmp_path)
    model = "model=logistic_regression model._target_=sklearn.neighbors.NearestCentroid ~model.C ~model.max_iter"
    result = store.mlflow_run("-P", f"overrides={model}")
    assert result.returncode != 0
    [line] = [x for x in error_lines(result.stderr) if "step qa failed" in x]
    assert "onnx.parity=missing (expected an ONNX conversion that onnxruntime runs): NearestCentroid: no conversion: " \
           "MissingShapeCalculator: Unable to find a shape calculator for type" in line and "runtime=sklearn" in line
    store.mlflow_run("-P", f"overrides={model} runtime=sklearn serve.mode=smoke", check=True)
    qa, serve = store.step_runs("qa")[-1], store.step_runs("serve")[-1]
    report, checks = _checks(store, qa)
    assert report["onnx"] == {"note": "runtime=sklearn: no ONNX model"} and "onnx.parity" not in checks
    assert checks["inference.cpu_p95_ms"]["note"].endswith("; scikit-learn")
    assert serve.info.status == "FINISHED"
