"""mlpipe/pipeline/sweep.py: choosing the best job of a sweep."""

from __future__ import annotations

import math

from mlflow.entities import Metric, Run, RunData, RunInfo, RunTag

from mlpipe.pipeline.driver import SCORE_METRIC
from mlpipe.pipeline.sweep import best_job


def job(run_id: str, num: int | None, score: float | None, status: str = "FINISHED") -> Run:
    info = RunInfo(run_id=run_id, experiment_id="0", user_id="test", status=status, start_time=0,
                   end_time=None, lifecycle_stage="active")
    metrics = [] if score is None else [Metric(SCORE_METRIC, score, 0, 0)]
    tags = [] if num is None else [RunTag("pipeline.job_num", str(num))]
    return Run(info, RunData(metrics=metrics, tags=tags))


def ids(run):
    return None if run is None else run.info.run_id


def test_best_greater_is_better():
    jobs = [job("a", 0, 0.90), job("b", 1, 0.97), job("c", 2, 0.93)]
    assert ids(best_job(jobs, greater_is_better=True)) == "b"


def test_best_lower_is_better():
    jobs = [job("a", 0, 3.0), job("b", 1, 2.5), job("c", 2, 4.0)]
    assert ids(best_job(jobs, greater_is_better=False)) == "b"


def test_only_finished_jobs_count():
    jobs = [job("failed", 0, 0.99, "FAILED"), job("killed", 1, 0.98, "KILLED"),
            job("running", 2, 0.97, "RUNNING"), job("ok", 3, 0.5)]
    assert ids(best_job(jobs, True)) == "ok"


def test_unscored_and_nan_jobs_are_skipped():
    jobs = [job("none", 0, None), job("nan", 1, math.nan), job("ok", 2, 0.1)]
    assert ids(best_job(jobs, True)) == "ok"
    assert ids(best_job(jobs, False)) == "ok"


def test_no_candidate():
    assert best_job([], True) is None
    assert best_job([job("f", 0, 0.9, "FAILED"), job("n", 1, math.nan)], True) is None


def test_ties_go_to_the_earliest_job_number():
    # Listed out of order (search order), with job 10 after job 9 numerically, not as text.
    jobs = [job("j10", 10, 0.9), job("j2", 2, 0.9), job("j9", 9, 0.9), job("worse", 1, 0.8)]
    assert ids(best_job(jobs, True)) == "j2"
    low = [job("j10", 10, 1.0), job("j9", 9, 1.0), job("worse", 1, 2.0)]
    assert ids(best_job(low, False)) == "j9"


def test_input_list_is_not_reordered():
    jobs = [job("b", 1, 0.5), job("a", 0, 0.6)]
    best_job(jobs, True)
    assert [ids(j) for j in jobs] == ["b", "a"]
