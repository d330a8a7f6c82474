"""mlpipe/pipeline/summary.py: the summary table and the pipeline's score."""

from __future__ import annotations

import math

from mlflow.entities import Metric, Run, RunData, RunInfo, RunTag

from mlpipe.pipeline import summary
from mlpipe.pipeline.summary import StepResult, format_table, score_of
from mlpipe.run.outputs import QaOutput


def make_run(run_id="r1", status="FINISHED", metrics=None, tags=None) -> Run:
    info = RunInfo(run_id=run_id, experiment_id="0", user_id="test", status=status, start_time=0,
                   end_time=None, lifecycle_stage="active")
    data = RunData(metrics=[Metric(k, v, 0, 0) for k, v in (metrics or {}).items()],
                   tags=[RunTag(k, v) for k, v in (tags or {}).items()])
    return Run(info, data)


def qa_tags(metric: str) -> dict[str, str]:
    """A qa run's hand-off as the qa step writes it."""
    return QaOutput(passed=True, model_uri="models:/m-1", task="classification", primary_metric=metric,
                    failed_checks="", champion_replaced=False, model_digest="d").tags()


def test_format_table():
    table = format_table([
        StepResult("ingest", "abc123", "cached", 1.234, "rows=178 task=classification",
                   {"step.wall_s": 3.14, "step.cpu_s": 4.0, "step.peak_rss_mb": 301.6}),
        StepResult("preprocess", "r2", "ran", 12.0, ""),
    ])
    assert table == (
        "step        run id  outcome  seconds  step s  cpu s  peak MB  result\n"
        "----------  ------  -------  -------  ------  -----  -------  ------\n"
        "ingest      abc123  cached   1.2      3.1     4.0    302      rows=178 task=classification\n"
        "preprocess  r2      ran      12.0     -       -      -"
    )


def test_format_table_empty():
    assert format_table([]) == ("step  run id  outcome  seconds  step s  cpu s  peak MB  result\n"
                                "----  ------  -------  -------  ------  -----  -------  ------")


def test_format_table_aligns_long_run_ids():
    run_id = "0123456789abcdef0123456789abcdef"
    lines = format_table([StepResult("qa", run_id, "ran", 100.06, "accuracy=0.9722")]).splitlines()
    assert lines[0].index("outcome") == lines[2].index("ran") == len("step") + 2 + len(run_id) + 2
    assert lines[2].endswith("100.1    -       -      -        accuracy=0.9722")


# -- score_of ---------------------------------------------------------------------------------


def test_score_of_qa_primary_metric():
    qa = make_run(tags=qa_tags("accuracy"), metrics={"qa.accuracy": 0.97, "qa.r2": 0.1})
    assert score_of({"train": make_run("t"), "qa": qa}) == ("accuracy", 0.97)


def test_score_of_without_qa():
    assert score_of({"ingest": make_run()}) is None
    assert score_of({}) is None


def test_score_of_incomplete_qa_run():
    assert score_of({"qa": make_run(metrics={"qa.accuracy": 0.9})}) is None  # no primary metric tag
    assert score_of({"qa": make_run(tags=qa_tags("r2"), metrics={"qa.accuracy": 0.9})}) is None
    assert score_of({"qa": make_run(tags=qa_tags("r2"), metrics={"qa.r2": math.nan})}) is None


def test_score_of_zero_is_a_score():
    assert score_of({"qa": make_run(tags=qa_tags("r2"), metrics={"qa.r2": 0.0})}) == ("r2", 0.0)


def test_a_run_is_named_after_what_it_ran_and_a_sweep_after_what_it_sweeps():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"data": {"name": "wine"}, "model": {"_target_": "sklearn.ensemble.RandomForestClassifier"}})
    when = 1796580000.0
    assert summary.run_name("main", cfg, when).startswith("main wine RandomForestClassifier ")
    assert summary.run_name("sweep", cfg, when, {"model": "ridge,random_forest"}).startswith(
        "sweep wine ridge,random_forest ")
    assert summary.run_name("sweep", cfg, when, {"data": "iris,wine"}).startswith("sweep iris,wine RandomForestClassifier ")
