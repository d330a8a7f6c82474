"""qa: the model against a trivial baseline, conf/qa thresholds and the champion on the same test
rows, overfitting gaps, per-class recall and inference checks; the report is logged before it fails."""

import sys

import mlflow

from mlpipe.data import features, sources
from mlpipe.errors import ModelValidationError, UpstreamError
from mlpipe.quality import drift, gate, metric_names, model_checks
from mlpipe.reports import sections
from mlpipe.run import handoff
from mlpipe.run.harness import StepContext, step_main
from mlpipe.training import estimators


def run(ctx: StepContext) -> None:
    tags, qa = ctx.upstream.data.tags, ctx.cfg.qa
    model_uri, task = tags.get(handoff.MODEL_URI_TAG), tags.get("data.task")
    if not model_uri or task not in metric_names.DEFAULT_METRIC:
        raise UpstreamError(f"train run {ctx.upstream.info.run_id} has no logged model; rerun: mlflow run . -e train")
    splits = tags["pipeline.preprocess_run_id"]
    train, test = (handoff.read_frame(ctx.client, splits, f"data/{name}.parquet") for name in ("train", "test"))
    spec = features.FeatureSpec.from_dict(handoff.read_json(ctx.client, splits, "feature_spec.json"))
    target = spec.target
    ctx.card.inputs.update({"model_uri": model_uri, "test rows": len(test), "preprocess run": splits,
                            "qa.data_source": qa.data_source or "none"})
    primary = metric_names.task_metrics(task, [qa.primary_metric or metric_names.DEFAULT_METRIC[task]], "qa.primary_metric")[0]
    X, truth = test.drop(columns=[target]), test[target]

    # Loaded here, not by evaluate(), to skip a 1 s environment check we do not need.
    model = mlflow.pyfunc.load_model(model_uri, suppress_warnings=True)
    result = model_checks.evaluate(model, test, target, task, qa.plot_dpi)
    predictions = model.predict(X)
    thresholds = dict(qa.thresholds[task])
    metric_names.task_metrics(task, thresholds, f"qa.thresholds.{task}")
    checks = model_checks.threshold_checks(result, thresholds)

    baseline_rows = gate.baseline_predictions(task, train[target], len(test))
    paired = gate.paired_classification_test if task == "classification" else gate.paired_regression_test
    baseline = paired(truth, predictions, baseline_rows, qa.baseline.alpha)
    checks += [gate.baseline_check(baseline, qa.baseline.alpha)] if qa.baseline.enabled else []
    champion = {"note": "qa.champion.enabled=false"}
    if qa.champion.enabled:
        champion_checks, champion = model_checks.champion_checks(
            ctx.client, ctx.cfg.registry.model_name, ctx.cfg.registry.champion_alias, model_uri, result, test, target,
            task, metric_names.task_metrics(task, qa.champion.metrics[task], "qa.champion.metrics"), qa.champion.tolerance)
        checks += champion_checks
    primary_value = result.metrics.get(metric_names.evaluate_name(primary))
    gaps, gap_checks = gate.gap_checks(primary, metric_names.greater_is_better(primary), ctx.upstream.data.metrics,
                                       primary_value, dict(qa.overfitting))
    classes = gate.per_class(truth, predictions) if task == "classification" else None
    checks += gap_checks + (gate.class_recall_checks(classes, qa.min_class_recall) if classes else [])
    checks.append(model_checks.serving_input_check(model, model_uri))
    p95 = gate.p95_ms(model_checks.latency(model, X, qa.inference.latency_rows))
    checks.append(gate.limit_check("inference.latency_p95_ms", p95, qa.inference.p95_budget_ms, False))
    drift_checks, drift_report = _drift(ctx, splits, spec, test)
    checks += drift_checks

    failed = gate.failures(checks)
    report = {"passed": not failed, "model_uri": model_uri, "task": task, "test_rows": len(test),
              "primary_metric": primary, "primary_value": primary_value, "baseline": vars(baseline),
              "champion": champion, "gaps": gaps, "classes": classes, "drift": drift_report,
              "checks": [c.as_dict() for c in checks]}
    ctx.log_json("qa_report.json", report)
    if classes:
        ctx.log_json("confusion_matrix.json", {"labels": classes["labels"], "matrix": classes["confusion_matrix"]})
    baseline_scores = estimators.score(task, truth, baseline_rows)
    mlflow.log_metrics(model_checks.report_metrics({primary: primary_value}, baseline, gaps, classes,
                                                   baseline_scores, p95))
    ctx.card.add_checks(checks)
    sections.qa(ctx.card, report, truth, predictions, model_checks.image_artifacts(result))
    ctx.card.outputs.update({"passed": not failed, primary: primary_value, "report": "qa_report.json"})
    mlflow.set_tags({"pipeline.model_uri": model_uri, "data.task": task, "qa.passed": str(not failed).lower(),
                     "qa.primary_metric": primary, "qa.failed_checks": ",".join(c.name for c in failed)})
    message = (f"model {model_uri} failed the qa gate on {len(test)} test rows: "
               + "; ".join(c.describe() for c in failed))
    if failed and not qa.allow_unvalidated:
        raise ModelValidationError(message)
    if failed:
        print(f"warning: qa: {message} (registry.allow_unvalidated=true: the run finishes)", file=sys.stderr)
    shown = "missing" if primary_value is None else f"{primary_value:.4f}"
    ctx.summary(f"{primary}={shown} lift={baseline.lift:+.4f} p={baseline.p_value:.2g}"
                + (f" FAILED {len(failed)} checks (registry.allow_unvalidated)" if failed else ""))


def _drift(ctx: StepContext, splits: str, spec: features.FeatureSpec, test) -> tuple[list[gate.Check], dict]:
    """The test split, and the qa.data_source batch if given, against preprocess's drift reference."""
    qa = ctx.cfg.qa
    if not qa.drift.enabled:
        return [], {"note": "qa.drift.enabled=false"}
    profile = handoff.read_json(ctx.client, splits, "drift/reference_profile.json")
    reference = handoff.read_frame(ctx.client, splits, "data/drift_reference.parquet")
    batches = {"test": test}
    if qa.data_source:
        batches["batch"] = sources.load_batch(qa.data_source, spec.numeric, spec.categorical)
    checks, report = [], {}
    for name, frame in batches.items():
        found = drift.compare(profile, reference, frame, qa.drift.alpha, qa.drift.max_psi)
        report[name] = drift.summary(found, qa.drift.alpha, qa.drift.max_psi) | {"rows": len(frame)}
        checks.append(drift.check(name, found, qa.drift.max_drifted_columns))
        mlflow.log_metrics({f"qa.drift.{name}.columns_drifted": len(report[name]["drifted"]),
                            f"qa.drift.{name}.max_psi": report[name]["max_psi_seen"]})
    if qa.data_source:
        report["batch"]["source"] = str(qa.data_source)
    return checks, report


if __name__ == "__main__":
    step_main("qa", run)
