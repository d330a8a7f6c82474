"""The MLflow edge of the qa gate: evaluate, thresholds, the champion on the same rows, inference.

Every function returns `gate.Check`s instead of raising, so qa can log the whole report
before it fails the run.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import mlflow
import pandas as pd
from mlflow.models import MetricThreshold

from mlpipe.errors import one_line
from mlpipe.quality import gate, metric_names
from mlpipe.registry import provenance, versions
from mlpipe.training import model_io

MODEL_TYPES = {"classification": "classifier", "regression": "regressor"}


def evaluate(model, frame: pd.DataFrame, target: str, task: str, plot_dpi: float | None = None):
    """mlflow.models.evaluate on `frame`; metrics and plots go to the active run. `plot_dpi` sets
    matplotlib's savefig.dpi for its PNG plots (MLflow draws some at 175 dpi: about 1 s of
    rendering per qa run and 3x the bytes of 80 dpi)."""
    import matplotlib

    settings = {"savefig.dpi": plot_dpi} if plot_dpi else {}
    with matplotlib.rc_context(settings):
        return mlflow.models.evaluate(model, frame, targets=target, model_type=MODEL_TYPES[task],
                                      evaluator_config={"log_model_explainability": False})


def validated(result, metric: str, threshold: float, prefix: str, note: str = "") -> gate.Check:
    """One MetricThreshold through mlflow.validate_evaluation_results, as a Check."""
    from mlflow.models.evaluation.validation import ModelValidationFailedException

    name = metric_names.evaluate_name(metric)
    better = metric_names.greater_is_better(metric)
    value = gate.as_number(result.metrics.get(name))
    expected = f"{'>=' if better else '<='} {threshold:.4g}"
    if value is None:
        return gate.Check(f"{prefix}.{metric}", False, None, expected, note or f"evaluate reported no {name}")
    try:
        mlflow.validate_evaluation_results({name: MetricThreshold(threshold=float(threshold), greater_is_better=better)},
                                           result)
        passed = True
    except ModelValidationFailedException:
        passed = False
    return gate.Check(f"{prefix}.{metric}", passed, value, expected, note)


def threshold_checks(result, thresholds: dict[str, float | None]) -> list[gate.Check]:
    """The absolute thresholds set in conf/qa (null ones are off)."""
    return [validated(result, metric, threshold, "threshold") for metric, threshold in thresholds.items()
            if threshold is not None]


def champion_checks(client, model_name: str, alias: str, candidate_uri: str, candidate_result, test: pd.DataFrame,
                    target: str, task: str, metrics: list[str], tolerance: float,
                    plot_dpi: float | None, trust: tuple[str, list[str]],
                    on_incompatible: str) -> tuple[list[gate.Check], dict]:
    """The champion's model evaluated on the same test rows (in a nested run, so its metrics do not
    overwrite the candidate's); the candidate may trail it by at most `tolerance` per metric.
    A champion this data cannot score (another task, missing columns, a failed evaluation) is
    the check `champion.compatible`: failed with on_incompatible=fail, passed and `replaced`
    with on_incompatible=replace."""
    champion = versions.current(client, model_name, alias)
    if champion is None:
        return [], {"note": f"no {model_name}@{alias} yet: nothing to compare"}
    info = {"version": champion.version, "model_uri": f"models:/{model_name}@{alias}"}
    if champion.source == candidate_uri:
        return [], info | {"note": "the candidate is the champion"}
    champion_metric = (champion.tags or {}).get("qa.metric")
    if champion_metric and champion_metric not in metric_names.TASK_METRICS[task]:
        return incompatible(info, f"the champion was validated on {champion_metric}, not a {task} metric",
                            on_incompatible)
    # past the trust boundary: only a champion qa validated, its files unchanged (registry/provenance.py);
    # a refused champion fails qa (an UntrustedModelError), it is not skipped
    proof = provenance.validated(client, f"models:/{model_name}/{champion.version}",
                                 f"move {model_name}@{alias} to a version qa validated")
    model, _ = model_io.load_model(proof.load_uri, *trust, expect_digest=proof.digest)
    schema = model.metadata.get_input_schema()
    columns = set(schema.input_names()) if schema is not None else None
    if columns is not None and not columns <= set(test.columns) - {target}:
        missing = sorted(columns - set(test.columns))
        return incompatible(info, f"the champion's input schema needs columns this data lacks: {missing}",
                            on_incompatible)
    try:
        with mlflow.start_run(nested=True, run_name=f"qa: {model_name} v{champion.version} on this test split"):
            result = evaluate(model, test, target, task, plot_dpi)  # its plots are not on any card
    except Exception as exc:  # noqa: BLE001 - a champion this data cannot score is a decision below
        return incompatible(info, f"the champion could not be evaluated on this data: {one_line(exc)[:300]}",
                            on_incompatible)
    checks, values = [], {}
    for metric in metrics:
        name = metric_names.evaluate_name(metric)
        value = gate.as_number(result.metrics.get(name))
        values[metric] = value
        if value is None:
            continue
        bound = value - tolerance if metric_names.greater_is_better(metric) else value + tolerance
        checks.append(validated(candidate_result, metric, bound, "champion",
                                f"champion v{champion.version} scores {value:.4f} on the same rows, tolerance {tolerance:g}"))
    return checks, info | {"metrics": values}


def incompatible(info: dict, reason: str, on_incompatible: str) -> tuple[list[gate.Check], dict]:
    """The champion this data cannot score, as the check `champion.compatible`."""
    replace = on_incompatible == "replace"
    note = (f"replaced: {reason} (qa.champion.on_incompatible=replace)" if replace else
            f"{reason}; to let this model take over: qa.champion.on_incompatible=replace")
    check = gate.Check("champion.compatible", replace, None, "a champion this data can score", note)
    return [check], info | {"note": note, "replaced": replace}


def input_example(model, model_uri: str):
    example = model.input_example
    return example if example is not None else model.metadata.load_input_example(model_uri)


def serving_input_check(model, model_uri: str) -> gate.Check:
    """The serving payload built from the model's input example is accepted by the model loaded from its URI."""
    example = input_example(model, model_uri)
    if example is None:
        return gate.Check("inference.serving_input", False, None, "an input example logged with the model")
    payload = mlflow.models.convert_input_example_to_serving_input(example)
    try:
        with warnings.catch_warnings():  # deprecated for mlflow.models.predict, which builds a new environment
            warnings.simplefilter("ignore", FutureWarning)
            predictions = mlflow.models.validate_serving_input(model_uri, payload)
    except Exception as exc:  # any failure to load or predict is the finding
        return gate.Check("inference.serving_input", False, None, "predictions for the serving payload",
                          one_line(exc)[:300])
    return gate.Check("inference.serving_input", True, float(len(predictions)), f"{len(example)} predictions")


def latency(model, frame: pd.DataFrame, rows: int) -> list[float]:
    """Seconds per single-row predict call over the first `rows` rows (cycled if fewer)."""
    model.predict(frame.iloc[[0]])  # warm-up: the first call pays one-off lazy imports
    timings = []
    for i in range(rows):
        row = frame.iloc[[i % len(frame)]]
        started = time.perf_counter()
        model.predict(row)
        timings.append(time.perf_counter() - started)
    return timings


def report_metrics(primary: dict[str, float | None], baseline: gate.BaselineTest | None, gaps: dict[str, float],
                   classes: dict[str, Any] | None, baseline_scores: dict[str, float],
                   latency_p95_ms: float | None) -> dict[str, float]:
    """The qa.* metrics of the report, flat; missing and non-finite values are left out."""
    out = {f"qa.{k}": v for k, v in primary.items()} | {f"qa.baseline_{k}": v for k, v in baseline_scores.items()}
    if baseline is not None:
        out |= {"qa.lift": baseline.lift, "qa.lift_lower_bound": baseline.lift_lower_bound, "qa.p_value": baseline.p_value}
    out |= {f"qa.{k}": v for k, v in gaps.items()}
    if classes is not None:
        for label in classes["labels"]:
            out[f"qa.recall.{gate.metric_safe(label)}"] = classes["recall"][label]
            out[f"qa.precision.{gate.metric_safe(label)}"] = classes["precision"][label]
    if latency_p95_ms is not None:
        out["qa.latency_p95_ms"] = latency_p95_ms
    return {k: float(v) for k, v in out.items() if v is not None and v == v and abs(v) != float("inf")}


def image_artifacts(result) -> dict[str, bytes]:
    """The PNG plots mlflow.models.evaluate logged (ROC, PR, confusion matrix...), by name."""
    images = {}
    for name, artifact in (result.artifacts or {}).items():
        uri = getattr(artifact, "uri", "") or ""
        if not uri.endswith(".png"):
            continue
        try:
            path = mlflow.artifacts.download_artifacts(artifact_uri=uri)
            with open(path, "rb") as fh:
                images[name.replace("_", " ")] = fh.read()
        except Exception:  # noqa: BLE001 - a plot we cannot read is left off the card
            continue
    return images
