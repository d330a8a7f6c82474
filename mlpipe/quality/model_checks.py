"""The model checks of the qa gate: absolute thresholds, the champion on the same rows, the serving
payload, inference latency, and the report's metrics.

Pure: metric values (as mlflow.models.evaluate names them), a champion's metrics and config in,
`gate.Check`s out; every function returns checks instead of raising, so qa can log the whole
report before it fails the run. The evaluating and the registry reads are the qa step's.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import pandas as pd

from mlpipe.quality import gate
from mlpipe.training import metric_names


class ChampionEvidence(Protocol):
    """What the champion comparison needs (registry/champion.py's Champion has it): the report's
    `info`, the champion's `metrics` on the same rows once evaluated, or why this data cannot
    score it (`reason`)."""

    info: dict[str, Any]
    metrics: dict[str, float] | None
    reason: str | None


def metric_value(metrics: dict[str, float], metric: str) -> float | None:
    """A config metric's value among mlflow.models.evaluate's metrics (None when missing or not finite)."""
    return gate.as_number(metrics.get(metric_names.evaluate_name(metric)))


def threshold_check(metrics: dict[str, float], metric: str, threshold: float, prefix: str, note: str = "") -> gate.Check:
    """The metric at least `threshold` (at most, for a metric better when smaller)."""
    better = metric_names.greater_is_better(metric)
    value = metric_value(metrics, metric)
    expected = f"{'>=' if better else '<='} {threshold:.4g}"
    if value is None:
        return gate.Check(f"{prefix}.{metric}", False, None, expected,
                          note or f"evaluate reported no {metric_names.evaluate_name(metric)}")
    passed = value >= float(threshold) if better else value <= float(threshold)
    return gate.Check(f"{prefix}.{metric}", passed, value, expected, note)


def threshold_checks(metrics: dict[str, float], thresholds: dict[str, float | None]) -> list[gate.Check]:
    """The absolute thresholds set in conf/qa (null ones are off)."""
    return [threshold_check(metrics, metric, threshold, "threshold") for metric, threshold in thresholds.items()
            if threshold is not None]


def champion_checks(candidate: dict[str, float], champion: ChampionEvidence, metrics: list[str], tolerance: float,
                    on_incompatible: str) -> tuple[list[gate.Check], dict]:
    """The candidate may trail the champion, evaluated on the same test rows, by at most
    `tolerance` per metric. A champion this data cannot score is the check `champion.compatible`:
    failed with on_incompatible=fail, passed and `replaced` with on_incompatible=replace."""
    if champion.reason is not None:
        return incompatible(champion.info, champion.reason, on_incompatible)
    if champion.metrics is None:  # nothing to compare: no champion yet, or the candidate is it
        return [], champion.info
    checks, values = [], {}
    version = champion.info.get("version")
    for metric in metrics:
        value = metric_value(champion.metrics, metric)
        values[metric] = value
        if value is None:
            continue
        bound = value - tolerance if metric_names.greater_is_better(metric) else value + tolerance
        checks.append(threshold_check(candidate, metric, bound, "champion",
                                      f"champion v{version} scores {value:.4f} on the same rows, tolerance {tolerance:g}"))
    return checks, champion.info | {"metrics": values}


def incompatible(info: dict, reason: str, on_incompatible: str) -> tuple[list[gate.Check], dict]:
    """The champion this data cannot score, as the check `champion.compatible`."""
    replace = on_incompatible == "replace"
    note = (f"replaced: {reason} (qa.champion.on_incompatible=replace)" if replace else
            f"{reason}; to let this model take over: qa.champion.on_incompatible=replace")
    check = gate.Check("champion.compatible", replace, None, "a champion this data can score", note)
    return [check], info | {"note": note, "replaced": replace}


def serving_input_check(answered: int | None, example_rows: int | None, error: str | None) -> gate.Check:
    """The serving payload built from the model's input example was answered by the model loaded
    from its URI (training/model_io.answer_serving_input): `answered` predictions for
    `example_rows` rows, or the `error`."""
    if example_rows is None:
        return gate.Check("inference.serving_input", False, None, "an input example logged with the model")
    if error is not None or answered is None:
        return gate.Check("inference.serving_input", False, None, "predictions for the serving payload",
                          (error or "no predictions")[:300])
    return gate.Check("inference.serving_input", True, float(answered), f"{example_rows} predictions")


def latency(model, frame: pd.DataFrame, rows: int) -> tuple[list[float], list[float]]:
    """(wall-clock, CPU) seconds per single-row predict call over the first `rows` rows (cycled
    if fewer). CPU is this process's, all its threads: what the model costs, whatever else the
    machine runs; wall-clock adds the waits for a busy CPU. Native thread pools (OpenMP, BLAS)
    are held to one thread meanwhile: on a busy machine OpenMP's idle threads spin for work that
    never comes to one row (a gradient boosting's CPU p95 went from 6 ms to 140 ms beside four
    busy processes; 2 ms with one thread)."""
    from threadpoolctl import threadpool_limits

    wall, cpu = [], []
    with threadpool_limits(1):
        model.predict(frame.iloc[[0]])  # warm-up: the first call pays one-off lazy imports
        for i in range(rows):
            row = frame.iloc[[i % len(frame)]]
            started, started_cpu = time.perf_counter(), time.process_time()
            model.predict(row)
            cpu.append(time.process_time() - started_cpu)
            wall.append(time.perf_counter() - started)
    return wall, cpu


def report_metrics(primary: dict[str, float | None], baseline: gate.BaselineTest | None, gaps: dict[str, float],
                   classes: dict[str, Any] | None, baseline_scores: dict[str, float],
                   latency_p95_ms: float | None, cpu_p95_ms: float | None = None) -> dict[str, float]:
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
    if cpu_p95_ms is not None:
        out["qa.cpu_p95_ms"] = cpu_p95_ms
    return {k: float(v) for k, v in out.items() if v is not None and v == v and abs(v) != float("inf")}
