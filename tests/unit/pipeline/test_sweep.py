"""mlpipe/pipeline/sweep.py: choosing the best job of a sweep."""

from __future__ import annotations

import math

from mlflow.entities import Metric, Run, RunData, RunInfo, RunTag

import pytest

from mlpipe.errors import ConfigError
from mlpipe.errors import UpstreamError
from mlpipe.pipeline.spec import select_steps
from mlpipe.pipeline.sweep import (best_job, check_direction, job_overrides, score_metric, searched_keys,
                                   shared_prefix, study, swept_groups)
from mlpipe.run.outputs import SCORE_METRIC, SweepJob, SweepJobOutput


def job(run_id: str, num: int, score: float | None, status: str = "FINISHED", overrides: str = "[]",
        **tags: str) -> Run:
    """A sweep job's run as jobs._sweep_job leaves it (SweepJob tags; SweepJobOutput when scored)."""
    info = RunInfo(run_id=run_id, experiment_id="0", user_id="test", status=status, start_time=0,
                   end_time=None, lifecycle_stage="active")
    metrics = [] if score is None else [Metric(SCORE_METRIC, score, 0, 0)]
    tags = {k.replace("__", "."): v for k, v in tags.items()} | SweepJob("s", num, overrides).tags()
    if score is not None:
        tags |= SweepJobOutput(qa_run_id=f"qa-{run_id}", score_metric="accuracy").tags()
    return Run(info, RunData(metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()]))


def test_a_jobs_overrides_and_metric_are_read_from_its_typed_tags():
    scored = job("a", 3, 0.9, overrides='["model=ridge", "seed=3"]')
    assert job_overrides(scored) == ["model=ridge", "seed=3"] and score_metric(scored) == "accuracy"
    assert score_metric(job("b", 4, None)) is None  # it did not finish qa
    untyped = Run(scored.info, RunData(tags=[RunTag("pipeline.job_num", "3")]))
    with pytest.raises(UpstreamError, match="has no tag pipeline.sweep_run_id"):
        job_overrides(untyped)


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


# -- what a sweep shares, and how an optimizing sweeper must steer (composed configs) ----------

def _sweep_config(*overrides: str):
    """The config a sweep's callback receives: composed for a multirun, hydra node included."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from mlpipe.config import PROJECT_ROOT, register_resolvers

    register_resolvers()
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        return loader.load_configuration("config", list(overrides), run_mode=RunMode.MULTIRUN)


def test_a_model_sweep_shares_ingest_and_preprocess():
    config = _sweep_config("model.n_estimators=50,100", "model.max_depth=3")
    assert swept_groups(config) == {"model"}
    assert shared_prefix(select_steps("all"), swept_groups(config)) == ["ingest", "preprocess"]


def test_optuna_search_space_counts_as_swept():
    from omegaconf import open_dict

    config = _sweep_config("hydra/sweeper=optuna", "model.n_estimators=int(interval(1,60))")
    with open_dict(config):  # as a config file writes it (Hydra's command line cannot set this dict)
        config.hydra.sweeper.params = {"preprocess.scaler": "choice(standard,robust)"}
    assert searched_keys(config) == ["model.n_estimators", "preprocess.scaler"]
    assert swept_groups(config) == {"model", "preprocess"}
    assert shared_prefix(select_steps("all"), swept_groups(config)) == ["ingest"]


def test_what_each_swept_group_leaves_shared():
    steps = select_steps("all")
    assert shared_prefix(steps, {"data"}) == []
    assert shared_prefix(steps, {"seed"}) == ["ingest"]
    assert shared_prefix(steps, {"qa"}) == ["ingest", "preprocess", "train"]
    assert shared_prefix(steps, {"registry"}) == ["ingest", "preprocess", "train", "qa"]
    assert shared_prefix(steps, set()) == ["ingest", "preprocess", "train", "qa"]  # never register
    assert shared_prefix(["train", "qa"], {"qa"}) == ["train"]
    # a key no step's cache names may change how any step runs: nothing is shared
    assert shared_prefix(steps, {"main"}) == []
    assert shared_prefix(steps, {"monitor", "model"}) == []


def test_a_group_choice_sweep_is_its_group():
    config = _sweep_config("model=random_forest,gradient_boosting")
    assert swept_groups(config) == {"model"}


def test_optuna_must_steer_the_way_the_metric_improves():
    check_direction(_sweep_config("model.n_estimators=1,2"))  # the basic sweeper has no direction
    check_direction(_sweep_config("hydra/sweeper=optuna", "hydra.sweeper.direction=maximize"))
    with pytest.raises(ConfigError) as info:
        check_direction(_sweep_config("hydra/sweeper=optuna"))  # the plug-in's default: minimize
    assert str(info.value) == ("hydra.sweeper.direction=minimize, but the default qa primary metric (accuracy or "
                               "r2) is better when greater: set hydra.sweeper.direction=maximize")
    check_direction(_sweep_config("hydra/sweeper=optuna", "data=diabetes", "qa.primary_metric=rmse"))
    with pytest.raises(ConfigError, match="rmse is better when smaller: set hydra.sweeper.direction=minimize"):
        check_direction(_sweep_config("hydra/sweeper=optuna", "hydra.sweeper.direction=maximize", "data=diabetes",
                                      "qa.primary_metric=rmse"))


def test_a_failed_job_is_no_score_and_says_why():
    from mlpipe.pipeline.jobs import FailedJob

    failed = FailedJob("step qa failed the qa gate")
    with pytest.raises(ValueError, match="step qa failed the qa gate"):
        float(failed)
    assert "step qa failed the qa gate" in repr(failed)


def test_the_study_lists_every_trial_with_its_state_and_the_best():
    config = _sweep_config("hydra/sweeper=optuna", "hydra.sweeper.direction=maximize",
                           "model.n_estimators=int(interval(1,60))", "model.max_depth=1")
    def trial(num, n, score, status="FINISHED", **tags):
        return job(f"r{num}", num, score, status, overrides=f'["model.n_estimators={n}", "model.max_depth=1"]',
                   **tags)

    jobs = [trial(0, 23, 0.9), trial(1, 58, 0.97), trial(2, 10, None, "FAILED", error__message="failed the qa gate")]
    record = study(config, jobs, jobs[1], "accuracy")
    assert record["direction"] == "maximize" and record["searched"] == ["model.n_estimators"]
    assert record["best"] == {"number": 1, "run_id": "r1", "value": 0.97, "params": {"model.n_estimators": "58"}}
    assert [(t["number"], t["state"], t["value"], t["params"]) for t in record["trials"]] == [
        (0, "COMPLETE", 0.9, {"model.n_estimators": "23"}), (1, "COMPLETE", 0.97, {"model.n_estimators": "58"}),
        (2, "FAIL", None, {"model.n_estimators": "10"})]
    assert record["trials"][2]["error"] == "failed the qa gate"


# -- the best job's config, composed again (a real SQLite store) -------------------------------

@pytest.fixture
def logged_job(tmp_path, _empty_store):
    """A sweep job's run that logged the config its overrides composed to, as every run does."""
    import shutil

    import mlflow
    from omegaconf import OmegaConf

    from mlpipe.config import compose
    from mlpipe.run.outputs import CONFIG_ARTIFACT

    shutil.copy(_empty_store, tmp_path / "mlflow.db")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = mlflow.MlflowClient().create_experiment("sweep", artifact_location=str(tmp_path / "artifacts"))

    def log(overrides: list[str], logged: list[str] | None = None):
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_text(OmegaConf.to_yaml(compose(logged if logged is not None else overrides), resolve=True),
                            CONFIG_ARTIFACT)
        return mlflow.MlflowClient().get_run(run.info.run_id)

    yield log
    mlflow.set_tracking_uri(None)


def test_the_best_jobs_config_is_composed_again_from_its_overrides(logged_job):
    from mlpipe.config import compose, to_container
    from mlpipe.pipeline.sweep import best_job_config

    overrides = ["model.n_estimators=20", "seed=3"]
    cfg = best_job_config(logged_job(overrides), overrides)
    assert to_container(cfg) == to_container(compose(overrides))
    assert cfg.model.n_estimators == 20  # a DictConfig the driver runs register with


def test_a_best_job_whose_config_no_longer_composes_the_same_is_refused(logged_job):
    """conf/ edited during the sweep (here: the job ran with another seed than its overrides now
    give, and so another model.random_state): nothing is registered under settings the job did not run with."""
    from mlpipe.pipeline.sweep import best_job_config

    run = logged_job(["model.n_estimators=20"], logged=["model.n_estimators=20", "seed=99"])
    with pytest.raises(ConfigError, match=r"ran with another config than its overrides compose to now \(model, seed "
                                          r"differ: conf/ changed during the sweep\?\); nothing was registered"):
        best_job_config(run, ["model.n_estimators=20"])
    with pytest.raises(ConfigError, match="unknown config key model.n_estimator"):  # and the schema checks it
        best_job_config(run, ["model.n_estimator=20"])
