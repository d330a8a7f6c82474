"""Resource monitoring end to end: system metrics and step figures on every run, the summary
table's columns, and monitor limits that warn or stop a step."""

from __future__ import annotations

import pytest

from support import Store, error_lines


@pytest.fixture(scope="module")
def prepared(store: Store):
    # A short sampling interval: MLflow logs system metrics only for full intervals, and on a
    # loaded machine a 1 s interval can miss a 2 s step entirely.
    result = store.mlflow_run("-P", "steps=ingest,preprocess", "-P",
                              "overrides=monitor.system_metrics=true monitor.max_rss_mb=50 monitor.sampling_interval=0.2", check=True)
    return result, store.step_runs("preprocess")[-1]


def test_every_step_run_has_system_metrics_and_its_figures(store: Store, prepared):
    for step in ("ingest", "preprocess"):
        run = store.step_runs(step)[-1]
        metrics = run.data.metrics
        assert {"step.wall_s", "step.cpu_s", "step.peak_rss_mb"} <= set(metrics)
        assert metrics["step.peak_rss_mb"] > 50 and metrics["step.cpu_s"] > 0
        assert "system/cpu_utilization_percentage" in metrics and "system/system_memory_usage_megabytes" in metrics


def test_the_summary_table_shows_the_figures(store: Store, prepared):
    result, _ = prepared
    header = next(line for line in result.stdout.splitlines() if line.startswith("step "))
    assert header.split() == ["step", "run", "id", "outcome", "seconds", "step", "s", "cpu", "s", "peak", "MB", "result"]
    ingest = next(line for line in result.stdout.splitlines() if line.startswith("ingest "))
    run = store.step_runs("ingest")[-1]
    assert f"{run.data.metrics['step.peak_rss_mb']:.0f}" in ingest.split()


def test_a_warn_limit_warns_once_per_step_and_the_step_finishes(store: Store, prepared):
    result, _ = prepared
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert [w.split(":")[1].strip() for w in warnings] == ["ingest", "preprocess"]
    assert all("above monitor.max_rss_mb=50 (monitor.action=warn: the step goes on)" in w for w in warnings)
    for step in ("ingest", "preprocess"):
        run = store.step_runs(step)[-1]
        assert run.info.status == "FINISHED"
        assert "above monitor.max_rss_mb=50" in run.data.tags["monitor.warnings"]


def test_a_fail_limit_stops_the_step_with_its_own_exit_code(store: Store, prepared):
    _, preprocess = prepared
    result = store.mlflow_run("-P", f"preprocess_run_id={preprocess.info.run_id}", "-P",
                              "overrides=monitor.max_step_seconds=2 monitor.action=fail model.n_estimators=4000",
                              entry="train")
    assert result.returncode != 0
    run = store.step_runs("train")[-1]
    assert run.info.status == "FAILED"
    assert run.data.tags["error.type"] == "ResourceLimitError", run.data.tags.get("error.message")
    assert "more than monitor.max_step_seconds=2" in run.data.tags["error.message"]
    assert "pipeline.model_uri" not in run.data.tags  # stopped before a model was logged
    (line,) = error_lines(result.stderr)
    assert line.startswith("error: train: ResourceLimitError: the step has run ")
    assert "step.wall_s" in run.data.metrics  # the figures of a stopped step are kept


def test_a_step_shorter_than_the_sampling_interval_still_has_system_metrics(store: Store):
    """MLflow drops a partial sampling interval: with a 60 s interval a 5 s ingest logged no
    system metric before; the harness logs the sample the monitor took."""
    before = {r.info.run_id for r in store.step_runs("ingest")}
    store.mlflow_run("-P", "steps=ingest", "-P", "overrides=main.force=true monitor.system_metrics=true "
                                                 "monitor.sampling_interval=60", check=True)
    run = store.step_runs("ingest")[-1]
    assert run.info.run_id not in before  # a new run, not the cached one
    assert run.info.status == "FINISHED" and run.data.metrics["step.wall_s"] < 60
    assert "system/cpu_utilization_percentage" in run.data.metrics
    assert "system/system_memory_usage_megabytes" in run.data.metrics
    history = store.client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
    assert [m.step for m in history] == [0]
