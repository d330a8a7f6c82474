"""The qa gate assembled: one function from a model, its data and `conf/qa` to every check, the
report qa logs and the metrics it records. qa reads the inputs and writes the outputs; the
order of the checks here is the order of the report and of the card."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from mlpipe.quality import drift, gate, importance, model_checks, parity
from mlpipe.training import metric_names
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
    failed: list[gate.Check] = field(default_factory=list)


@dataclass
class Evidence:
    """What qa measured outside this module, through MLflow: the candidate's metrics from
    mlflow.models.evaluate on the test split, the champion on the same rows (None when
    qa.champion.enabled=false), and the serving payload's round trip
    (training/model_io.answer_serving_input)."""

    metrics: dict[str, float]
    champion: model_checks.ChampionEvidence | None
    serving: tuple[int | None, int | None, str | None]
    onnx: dict[str, Any] | None = None  # parity.compare's report (runtime=onnx), else None
    served: Any = None  # the ONNX model the server runs (runtime=onnx): the latency checks time it


def primary_metric(qa, task: str) -> str:
    """`qa.primary_metric`, or the task's default, checked to apply to `task`."""
    return metric_names.task_metrics(task, [qa.primary_metric or metric_names.DEFAULT_METRIC[task]],
                                     "qa.primary_metric")[0]


def assess(qa, model, model_uri: str, task: str, train_target: pd.Series, test: pd.DataFrame, target: str,
           train_metrics: dict[str, float], evidence: Evidence, drift_inputs: DriftInputs | None) -> Assessment:
    """Thresholds, baseline, champion, overfitting gaps, per-class recall, inference and drift, in
    the order of the report and of the card."""
    primary = primary_metric(qa, task)
    X, truth = test.drop(columns=[target]), test[target]
    predictions = model.predict(X)
    thresholds = dict(qa.thresholds[task])
    metric_names.task_metrics(task, thresholds, f"qa.thresholds.{task}")
    checks = model_checks.threshold_checks(evidence.metrics, thresholds)

    baseline_rows = gate.baseline_predictions(task, train_target, len(test))
    paired = gate.paired_classification_test if task == "classification" else gate.paired_regression_test
    baseline = paired(truth, predictions, baseline_rows, qa.baseline.alpha)
    checks += [gate.baseline_check(baseline, qa.baseline.alpha)] if qa.baseline.enabled else []
    champion = {"note": "qa.champion.enabled=false"}
    if evidence.champion is not None:
        champion_checks, champion = model_checks.champion_checks(
            evidence.metrics, evidence.champion, metric_names.task_metrics(task, qa.champion.metrics[task],
                                                                           "qa.champion.metrics"),
            qa.champion.tolerance, qa.champion.on_incompatible)
        checks += champion_checks
    primary_value = model_checks.metric_value(evidence.metrics, primary)
    gaps, gap_checks = gate.gap_checks(primary, metric_names.greater_is_better(primary), train_metrics,
                                       primary_value, dict(qa.overfitting))
    classes = gate.per_class(truth, predictions) if task == "classification" else None
    checks += gap_checks + (gate.class_recall_checks(classes, qa.min_class_recall) if classes else [])
    checks.append(model_checks.serving_input_check(*evidence.serving))
    if evidence.onnx is not None:
        checks.append(parity.check(evidence.onnx))
    wall, cpu = model_checks.latency(evidence.served or model, X, qa.inference.latency_rows)
    p95, cpu_p95 = gate.p95_ms(wall), gate.p95_ms(cpu)
    checks.append(gate.limit_check("inference.cpu_p95_ms", cpu_p95, qa.inference.cpu_p95_budget_ms, False,
                                   f"wall-clock p95 {p95:.1f} ms; "
                                   f"{'onnxruntime' if evidence.served is not None else 'scikit-learn'}"))
    if qa.inference.p95_budget_ms is not None:  # wall-clock: moves with the machine's load
        checks.append(gate.limit_check("inference.latency_p95_ms", p95, qa.inference.p95_budget_ms, False))
    drift_checks, drift_report, drift_metrics = drift_gate(qa, drift_inputs)
    checks += drift_checks
    sample = X.head(int(qa.importance.rows))
    ranked = importance.permutation(model.predict, sample, truth.head(len(sample)), task, int(qa.importance.repeats),
                                    seed=0) if qa.importance.enabled else []

    failed = gate.failures(checks)
    report = {"passed": not failed, "model_uri": model_uri, "task": task, "test_rows": len(test),
              "primary_metric": primary, "primary_value": primary_value, "baseline": vars(baseline),
              "champion": champion, "gaps": gaps, "classes": classes, "drift": drift_report,
              "onnx": evidence.onnx or {"note": "runtime=sklearn: no ONNX model"}, "importance": ranked,
              "checks": [c.as_dict() for c in checks]}
    metrics = drift_metrics | parity.metrics(evidence.onnx) | model_checks.report_metrics(
        {primary: primary_value}, baseline, gaps, classes, estimators.score(task, truth, baseline_rows), p95, cpu_p95)
    return Assessment(checks, report, metrics, primary, primary_value, baseline, predictions, truth, classes, failed)


def failure_message(result: Assessment, model_uri: str, task: str) -> str:
    """The one line qa fails with (or warns with, under registry.allow_unvalidated)."""
    return (f"model {model_uri} failed the qa gate on {result.report['test_rows']} test rows: "
            + gate.failure_line(result.failed, task))


def summary_line(result: Assessment) -> str:
    """The short result the driver's table shows for qa."""
    shown = "missing" if result.primary_value is None else f"{result.primary_value:.4f}"
    return (f"{result.primary}={shown} lift={result.baseline.lift:+.4f} p={result.baseline.p_value:.2g}"
            + (f" FAILED {len(result.failed)} checks (registry.allow_unvalidated)" if result.failed else ""))


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
