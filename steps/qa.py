"""qa: evaluate the trained model on the test split; fail below the thresholds in conf/qa."""

import mlflow

from mlpipe import evaluation, handoff, training
from mlpipe.errors import ModelValidationError, UpstreamError
from mlpipe.harness import StepContext, step_main


def run(ctx: StepContext) -> None:
    tags = ctx.upstream.data.tags
    model_uri, task = tags.get(handoff.MODEL_URI_TAG), tags.get("data.task")
    if not model_uri or task not in training.DEFAULT_METRIC:
        raise UpstreamError(f"train run {ctx.upstream.info.run_id} has no logged model; rerun: mlflow run . -e train")
    spec = ctx.client.get_run(tags["pipeline.preprocess_run_id"])
    test = handoff.read_frame(ctx.client, spec.info.run_id, "data/test.parquet")
    target = handoff.read_json(ctx.client, spec.info.run_id, "feature_spec.json")["target"]

    # Loaded here, not by evaluate(), to skip a 1 s environment check we do not need.
    model = mlflow.pyfunc.load_model(model_uri, suppress_warnings=True)
    result = mlflow.models.evaluate(
        model, test, targets=target, model_type="classifier" if task == "classification" else "regressor",
        evaluator_config={"log_model_explainability": False},
    )
    primary = ctx.cfg.qa.primary_metric or training.DEFAULT_METRIC[task]
    checks = evaluation.threshold_checks(result.metrics, dict(ctx.cfg.qa.thresholds[task]))
    report = {
        "model_uri": model_uri, "task": task, "test_rows": len(test), "primary_metric": primary,
        "primary_value": result.metrics.get(evaluation.evaluate_name(primary)),
        "checks": [{"check": c.describe(), "passed": c.passed} for c in checks],
    }
    ctx.log_json("qa_report.json", report)
    failed = evaluation.failures(checks)
    mlflow.set_tags({"pipeline.model_uri": model_uri, "data.task": task,
                     "qa.passed": str(not failed).lower(), "qa.primary_metric": primary})
    mlflow.log_metric(f"qa.{primary}", report["primary_value"])
    if failed:
        raise ModelValidationError(
            f"model {model_uri} failed the qa gate on {len(test)} test rows: "
            + "; ".join(c.describe() for c in failed)
        )
    ctx.summary(f"{primary}={report['primary_value']:.4f}")


if __name__ == "__main__":
    step_main("qa", run)
