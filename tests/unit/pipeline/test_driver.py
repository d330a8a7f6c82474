"""mlpipe/pipeline/driver.py pure helpers: the MLproject -> Hydra argv, the summary table, the pipeline score."""

from __future__ import annotations

import math

import pytest
from mlflow.entities import Metric, Run, RunData, RunInfo, RunTag

from mlpipe.errors import ConfigError
from mlpipe.pipeline.driver import StepResult, format_table, hydra_argv, overrides_of, score_of


def make_run(run_id="r1", status="FINISHED", metrics=None, tags=None) -> Run:
    info = RunInfo(run_id=run_id, experiment_id="0", user_id="test", status=status, start_time=0,
                   end_time=None, lifecycle_stage="active")
    data = RunData(metrics=[Metric(k, v, 0, 0) for k, v in (metrics or {}).items()],
                   tags=[RunTag(k, v) for k, v in (tags or {}).items()])
    return Run(info, data)


# -- hydra_argv --------------------------------------------------------------------------------


def test_hydra_argv_plain_hydra_command_line_is_untouched():
    assert hydra_argv(["main.py", "model=ridge", "-m"]) == ["main.py", "model=ridge", "-m"]


def test_hydra_argv_defaults_from_mlproject():
    assert hydra_argv(["main.py", "--steps=all", "--overrides="]) == ["main.py"]


def test_hydra_argv_steps_and_overrides():
    argv = ["main.py", "--steps=train,qa", "--overrides=model=ridge seed=3"]
    assert hydra_argv(argv) == ["main.py", "model=ridge", "seed=3", "main.steps=[train,qa]"]


def test_hydra_argv_sweep():
    argv = ["main.py", "--steps=all", "--overrides=-m model.n_estimators=50,100"]
    assert hydra_argv(argv) == ["main.py", "-m", "model.n_estimators=50,100"]


def test_hydra_argv_quoted_values_and_spaces_in_steps():
    argv = ["main.py", "--steps", " train , qa ,", "--overrides", "seed=1 'data.source=/a b/c.csv'"]
    assert hydra_argv(argv) == ["main.py", "seed=1", "data.source=/a b/c.csv", "main.steps=[train,qa]"]


def test_hydra_argv_keeps_other_arguments():
    argv = ["main.py", "--overrides=seed=1", "hydra.verbose=true"]
    assert hydra_argv(argv) == ["main.py", "hydra.verbose=true", "seed=1"]


def test_hydra_argv_bad_quoting():
    with pytest.raises(ConfigError, match="cannot parse overrides"):
        hydra_argv(["main.py", "--overrides=data.source='/a b"])


# -- format_table ------------------------------------------------------------------------------


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


# -- score_of / overrides_of -------------------------------------------------------------------


def test_score_of_qa_primary_metric():
    qa = make_run(tags={"qa.primary_metric": "accuracy"}, metrics={"qa.accuracy": 0.97, "qa.r2": 0.1})
    assert score_of({"train": make_run("t"), "qa": qa}) == ("accuracy", 0.97)


def test_score_of_without_qa():
    assert score_of({"ingest": make_run()}) is None
    assert score_of({}) is None


def test_score_of_incomplete_qa_run():
    assert score_of({"qa": make_run(metrics={"qa.accuracy": 0.9})}) is None  # no primary metric tag
    assert score_of({"qa": make_run(tags={"qa.primary_metric": "r2"}, metrics={"qa.accuracy": 0.9})}) is None
    assert score_of({"qa": make_run(tags={"qa.primary_metric": "r2"}, metrics={"qa.r2": math.nan})}) is None


def test_score_of_zero_is_a_score():
    assert score_of({"qa": make_run(tags={"qa.primary_metric": "r2"}, metrics={"qa.r2": 0.0})}) == ("r2", 0.0)


def test_overrides_of():
    run = make_run(tags={"pipeline.overrides": '["model=ridge", "seed=3"]'})
    assert overrides_of(run) == ["model=ridge", "seed=3"]
    assert overrides_of(make_run()) == []


def test_the_driver_waits_for_a_step_only_when_the_step_must_stop_itself():
    from mlpipe.config import compose
    from mlpipe.pipeline.driver import step_bound

    assert step_bound(compose([])) is None  # no limit: a step runs as long as it needs
    assert step_bound(compose(["monitor.max_step_seconds=30"])) is None  # action=warn: it goes on
    assert step_bound(compose(["monitor.max_step_seconds=30", "monitor.action=fail", "main.step_grace_s=5"])) == 35


def test_a_step_that_ignores_sigterm_past_its_bound_is_killed_with_what_it_started(tmp_path):
    """A real process tree, waited for as mlflow.run waits (Popen.wait): `bash -c` running a
    Python that ignores SIGTERM and has a child of its own, as a hung step would."""
    import subprocess
    import sys
    import time

    import psutil

    from mlpipe.pipeline.driver import StepTimer

    script = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); time.sleep(120)")
    with StepTimer(2.0, grace=1) as timer:
        proc = subprocess.Popen(["bash", "-c", f"{sys.executable} -c \"{script}\"; echo never"])
        time.sleep(1.5)
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        assert len(tree) == 3
        proc.wait(timeout=30)  # what mlflow.run does; the timer stops the tree
    assert timer.fired and proc.returncode in (-15, -9)  # the parent still reads the exit status
    for p in tree[1:]:  # gone, or a zombie of a parent that is gone (not reaped where init does not)
        try:
            assert p.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            pass
    with StepTimer(30) as timer:
        assert subprocess.run([sys.executable, "-c", "import sys; sys.exit(3)"]).returncode == 3
    assert not timer.fired
