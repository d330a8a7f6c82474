"""The qa gate assembled: one function from a model, its data and `conf/qa` to every check, the
report qa logs and the metrics it records. qa reads the inputs and writes the outputs; the
order of the checks here is the order of the report and of the card."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from mlpipe.quality import drift, gate, metric_names, model_checks
from mlpipe.training import estimators


@dataclass
class DriftInputs:
    """preprocess's reference (profile and sampled rows) and the batches compared with it."""

    profile: dict[str, Any]
    reference: pd.DataFrame
    batches: dict[str, pd.DataFrame]
    batch_source: str | None = None


@dataclass
class Assessment:
    checks: list[gate.Check]
    report: dict[str, Any]
    metrics: dict[str, float]
    primary: str
    primary_value: float | None
    baseline: gate.BaselineTest
    predictions: Any
    truth: pd.Series
    classes: dict[str, Any] | None
    images: dict[str, bytes]  # the plots mlflow.models.evaluate drew, for the card
    failed: list[gate.Check] = field(default_factory=list)


def primary_metric(qa, task: str) -> str:
    """`qa.primary_metric`, or the task's default, checked to apply to `task`."""
    return metric_names.task_metrics(task, [qa.primary_metric or metric_names.DEFAULT_METRIC[task]],
                                     "qa.primary_metric")[0]


def assess(client, qa, registry, model, model_uri: str, task: str, train_target: pd.Series, test: pd.DataFrame,
           target: str, train_metrics: dict[str, float], drift_inputs: DriftInputs | None,
           trust: tuple[str, list[str]]) -> Assessment:
    """Baseline, thresholds, champion, overfitting gaps, per-class recall, inference and drift;
    `trust` is (serialization, skops_trusted_types) for loading the champion."""
    primary = primary_metric(qa, task)
    X, truth = test.drop(columns=[target]), test[target]
    result = model_checks.evaluate(model, test, target, task, qa.plot_dpi)
    predictions = model.predict(X)
    thresholds = dict(qa.thresholds[task])
    metric_names.task_metrics(task, thresholds, f"qa.thresholds.{task}")
    checks = model_checks.threshold_checks(result, thresholds)

    baseline_rows = gate.baseline_predictions(task, train_target, len(test))
    paired = gate.paired_classification_test if task == "classification" else gate.paired_regression_test
    baseline = paired(truth, predictions, baseline_rows, qa.baseline.alpha)
    checks += [gate.baseline_check(baseline, qa.baseline.alpha)] if qa.baseline.enabled else []
    champion = {"note": "qa.champion.enabled=false"}
    if qa.champion.enabled:
        champion_checks, champion = model_checks.champion_checks(
            client, registry.model_name, registry.champion_alias, model_uri, result, test, target,
            task, metric_names.task_metrics(task, qa.champion.metrics[task], "qa.champion.metrics"), qa.champion.tolerance,
            qa.champion.plot_dpi, trust, qa.champion.on_incompatible)
        checks += champion_checks
    primary_value = result.metrics.get(metric_names.evaluate_name(primary))
    gaps, gap_checks = gate.gap_checks(primary, metric_names.greater_is_better(primary), train_metrics,
                                       primary_value, dict(qa.overfitting))
    classes = gate.per_class(truth, predictions) if task == "classification" else None
    checks += gap_checks + (gate.class_recall_checks(classes, qa.min_class_recall) if classes else [])
    checks.append(model_checks.serving_input_check(model, model_uri))
    p95 = gate.p95_ms(model_checks.latency(model, X, qa.inference.latency_rows))
    checks.append(gate.limit_check("inference.latency_p95_ms", p95, qa.inference.p95_budget_ms, False))
    drift_checks, drift_report, drift_metrics = drift_gate(qa, drift_inputs)
    checks += drift_checks

    failed = gate.failures(checks)
    report = {"passed": not failed, "model_uri": model_uri, "task": task, "test_rows": len(test),
              "primary_metric": primary, "primary_value": primary_value, "baseline": vars(baseline),
              "champion": champion, "gaps": gaps, "classes": classes, "drift": drift_report,
              "checks": [c.as_dict() for c in checks]}
    metrics = drift_metrics | model_checks.report_metrics(
        {primary: primary_value}, baseline, gaps, classes, estimators.score(task, truth, baseline_rows), p95)
    return Assessment(checks, report, metrics, primary, primary_value, baseline, predictions, truth, classes,
                      model_checks.image_artifacts(result), failed)


def drift_gate(qa, inputs: DriftInputs | None) -> tuple[list[gate.Check], dict[str, Any], dict[str, float]]:
    """Each batch (the test split, and the qa.data_source batch if given) against the reference."""
    if not qa.drift.enabled or inputs is None:
        return [], {"note": "qa.drift.enabled=false"}, {}
    checks, report, metrics = [], {}, {}
    for name, frame in inputs.batches.items():
        found = drift.compare(inputs.profile, inputs.reference, frame, qa.drift.alpha, qa.drift.max_psi)
        report[name] = drift.summary(found, qa.drift.alpha, qa.drift.max_psi) | {"rows": len(frame)}
        checks.append(drift.check(name, found, qa.drift.max_drifted_columns))
        metrics |= {f"qa.drift.{name}.columns_drifted": len(report[name]["drifted"]),
                    f"qa.drift.{name}.max_psi": report[name]["max_psi_seen"]}
    if inputs.batch_source:
        report["batch"]["source"] = inputs.batch_source
    return checks, report, metrics
