"""Sweeps through Hydra's launcher and sweeper plug-ins: jobs side by side (joblib, submitit's
local executor) and Optuna's search, each through `mlflow run` against a store of its own."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from support import ROOT, Store, error_lines, make_store

GRID = "model.max_depth=2 model.n_estimators=5,10,20,40"


def sweep_parent(store: Store):
    return store.newest("tags.`pipeline.role` = 'sweep'")


def jobs_of(store: Store, parent) -> list:
    return [c for c in store.children(parent.info.run_id) if c.data.tags.get("pipeline.role") == "sweep-job"]


def processes(jobs: list) -> set[str]:
    """The launcher's worker processes that ran the jobs (host:pid), as each job's run says:
    jobs in two processes ran side by side, however the machine's load stretched them."""
    return {j.data.tags["pipeline.job_process"] for j in jobs}


def sweep_dir(output: str):
    return ROOT / re.search(r"sweep output dir : (\S+)", output).group(1)


@pytest.fixture(scope="module")
def joblib_sweep(tmp_path_factory):
    store = make_store(tmp_path_factory, "joblib")
    result = store.mlflow_run("-P", f"overrides=-m hydra/launcher=joblib hydra.launcher.n_jobs=2 {GRID}", check=True)
    return store, result, sweep_parent(store)


def test_joblib_runs_four_jobs_two_at_a_time(joblib_sweep):
    store, result, parent = joblib_sweep
    assert parent.info.status == "FINISHED"
    jobs = jobs_of(store, parent)
    assert sorted(json.loads(j.data.tags["pipeline.overrides"])[1] for j in jobs) == [
        f"model.n_estimators={n}" for n in (10, 20, 40, 5)]
    assert all(j.info.status == "FINISHED" for j in jobs)
    assert len(processes(jobs)) == 2, processes(jobs)
    assert "Joblib.Parallel(n_jobs=2" in result.output


def test_four_parallel_jobs_share_one_run_of_ingest_and_preprocess(joblib_sweep):
    store, _, parent = joblib_sweep
    assert [len(store.step_runs(s)) for s in ("ingest", "preprocess", "train", "qa")] == [1, 1, 4, 4]
    shared = {r.data.tags["pipeline.step"]: r.info.run_id for r in store.children(parent.info.run_id)
              if r.data.tags.get("pipeline.step") in ("ingest", "preprocess")}
    for job in jobs_of(store, parent):
        links = {c.data.tags["pipeline.cached_step"]: c.data.tags["pipeline.reused_run_id"]
                 for c in store.children(job.info.run_id) if "pipeline.cached_step" in c.data.tags}
        assert links == shared


def test_only_the_best_parallel_job_registers(joblib_sweep):
    store, _, parent = joblib_sweep
    best = store.client.get_run(parent.data.tags["sweep.best_job_run_id"])
    scores = [j.data.metrics["pipeline.score"] for j in jobs_of(store, parent)]
    assert best.data.metrics["pipeline.score"] == max(scores)
    assert len(store.client.search_model_versions("name='wine_model'")) == 1
    champion = store.client.get_model_version_by_alias("wine_model", "champion")
    assert champion.tags["lineage.qa_run_id"] == best.data.tags["pipeline.qa_run_id"]


def test_each_parallel_job_has_its_own_output_folder(joblib_sweep):
    _, result, _ = joblib_sweep
    folder = sweep_dir(result.output)
    seen = {}
    for num in range(4):
        overrides = yaml.safe_load((folder / str(num) / ".hydra" / "overrides.yaml").read_text())
        seen[num] = [o for o in overrides if o.startswith("model.n_estimators=")]
    assert sorted(v[0] for v in seen.values()) == sorted(f"model.n_estimators={n}" for n in (5, 10, 20, 40))


# slow: a second launcher's variant of the parallel sweep that joblib proves in the default run
@pytest.mark.slow
def test_submitit_local_executor_runs_the_jobs_as_its_own_processes(tmp_path_factory):
    """hydra-submitit-launcher's local executor (what runs on a Slurm site with submitit_slurm)."""
    store = make_store(tmp_path_factory, "submitit")
    result = store.mlflow_run("-P", "overrides=-m hydra/launcher=submitit_local model.max_depth=2 "
                                    "model.n_estimators=5,10", check=True)
    parent = sweep_parent(store)
    jobs = jobs_of(store, parent)
    assert parent.info.status == "FINISHED" and len(jobs) == 2
    assert all(j.info.status == "FINISHED" for j in jobs)
    assert len(processes(jobs)) == 2
    assert [len(store.step_runs(s)) for s in ("ingest", "preprocess", "train", "register")] == [1, 1, 2, 1]
    # each job ran as a submitit job: its own log files in the sweep folder
    logs = sorted(sweep_dir(result.output).glob(".submitit/*/*_log.out"))
    assert len(logs) == 2
    assert all("[mlpipe] train ran" in log.read_text() for log in logs)


@pytest.fixture(scope="module")
def optuna_sweep(tmp_path_factory):
    """Six Optuna trials over the number of stumps, two at a time on the joblib launcher. Fewer
    than about 20 stumps miss the 0.9 accuracy mark: those trials fail the qa gate."""
    store = make_store(tmp_path_factory, "optuna")
    result = store.mlflow_run("-P", "overrides=-m hydra/sweeper=optuna hydra/launcher=joblib hydra.launcher.n_jobs=2 "
                                    "hydra.sweeper.direction=maximize hydra.sweeper.n_trials=6 hydra.sweeper.n_jobs=2 "
                                    "hydra.sweeper.sampler.seed=42 model.max_depth=1 "
                                    "model.n_estimators=int(interval(1,60)) qa.thresholds.classification.accuracy=0.9",
                              check=True)
    parent = sweep_parent(store)
    local = store.client.download_artifacts(parent.info.run_id, "sweep_study.json", str(store.path))
    study = json.loads(open(local).read())
    return store, result, parent, study


def test_optuna_records_every_trial_and_the_best(optuna_sweep):
    store, result, parent, study = optuna_sweep
    assert parent.info.status == "FINISHED"
    jobs = {int(j.data.tags["pipeline.job_num"]): j for j in jobs_of(store, parent)}
    assert len(study["trials"]) == len(jobs) == 6
    assert study["direction"] == "maximize" and study["sampler"] == "optuna.samplers.TPESampler"
    for trial in study["trials"]:
        job = jobs[trial["number"]]
        n = json.loads(job.data.tags["pipeline.overrides"])[0]
        assert n == f"model.n_estimators={trial['params']['model.n_estimators']}"
        assert trial["state"] == ("COMPLETE" if job.info.status == "FINISHED" else "FAIL")
        assert trial["value"] == job.data.metrics.get("pipeline.score")
    complete = [t for t in study["trials"] if t["state"] == "COMPLETE"]
    assert study["best"]["value"] == max(t["value"] for t in complete)
    assert parent.data.tags["sweep.best_job_run_id"] == study["best"]["run_id"]
    # Optuna's own account of the best trial agrees
    assert f"Best value: {study['best']['value']}" in result.output
    assert len(processes(list(jobs.values()))) == 2


def test_optuna_trials_that_fail_the_gate_are_failed_trials_not_scores(optuna_sweep):
    store, result, _, study = optuna_sweep
    failed = [t for t in study["trials"] if t["state"] == "FAIL"]
    assert failed, study["trials"]
    for trial in failed:
        assert trial["value"] is None
        assert "failed the qa gate" in trial["error"]
        assert int(trial["params"]["model.n_estimators"]) < 20
    # Optuna was told they failed (its sweeper logs each one) and went on to the end
    assert result.output.count("Failed experiment: ") == len(failed)
    assert "failed the qa gate" in result.output.split("Failed experiment: ")[1]


def test_optuna_only_the_best_trial_registers(optuna_sweep):
    store, _, parent, study = optuna_sweep
    versions = store.client.search_model_versions("name='wine_model'")
    assert len(versions) == 1
    best = store.client.get_run(study["best"]["run_id"])
    assert versions[0].tags["lineage.qa_run_id"] == best.data.tags["pipeline.qa_run_id"]


def test_optuna_steering_the_wrong_way_is_refused_before_any_job(fresh_store: Store):
    result = fresh_store.mlflow_run("-P", "overrides=-m hydra/sweeper=optuna hydra.sweeper.n_trials=2 "
                                          "model.n_estimators=int(interval(1,60))")
    assert result.returncode != 0
    assert error_lines(result.stderr) == [
        "error: sweep: ConfigError: hydra.sweeper.direction=minimize, but the default qa primary metric (accuracy "
        "or r2) is better when greater: set hydra.sweeper.direction=maximize"]
    parent = sweep_parent(fresh_store)
    assert parent.info.status == "FAILED" and parent.data.tags["error.type"] == "ConfigError"
    assert fresh_store.runs("tags.`pipeline.role` = 'sweep-job'") == []
    assert fresh_store.step_runs("ingest") == []


def test_a_failed_shared_step_fails_the_sweep_before_any_job(fresh_store: Store, tmp_path):
    missing = tmp_path / "nope.csv"
    result = fresh_store.mlflow_run("-P", f"overrides=-m hydra/launcher=joblib data=file data.source={missing} "
                                          "data.target=y model.n_estimators=1,2")
    assert result.returncode != 0
    (line,) = error_lines(result.stderr)
    assert line.startswith("error: sweep: StepFailedError: step ingest failed (run ") and str(missing) in line
    parent = sweep_parent(fresh_store)
    assert parent.info.status == "FAILED"
    assert parent.data.tags["error.type"] == "StepFailedError" and str(missing) in parent.data.tags["error.message"]
    assert fresh_store.runs("tags.`pipeline.role` = 'sweep-job'") == []
    (ingest,) = fresh_store.step_runs("ingest")
    assert ingest.info.status == "FAILED" and ingest.data.tags["mlflow.parentRunId"] == parent.info.run_id


# slow: a variant of the never-left-RUNNING path that the failed shared step proves in the default run
@pytest.mark.slow
def test_a_sweeper_that_raises_leaves_the_sweep_failed_with_why(fresh_store: Store):
    """Every Optuna trial fails the gate: the plug-in raises (no completed trial to call best)
    before the sweep's end; the parent still ends FAILED, saying so."""
    result = fresh_store.mlflow_run("-P", "overrides=-m hydra/sweeper=optuna hydra.sweeper.direction=maximize "
                                          "hydra.sweeper.n_trials=2 hydra.sweeper.n_jobs=2 model.max_depth=1 "
                                          "model.n_estimators=int(interval(1,2)) "
                                          "qa.thresholds.classification.accuracy=0.99")
    assert result.returncode != 0
    assert "No trials are completed yet" in result.output
    parent = sweep_parent(fresh_store)
    assert parent.info.status == "FAILED"
    assert parent.data.tags["error.message"].startswith("the sweep stopped before its end")
    jobs = jobs_of(fresh_store, parent)
    assert len(jobs) == 2 and all(j.info.status == "FAILED" for j in jobs)
