"""Warm step processes (mlpipe/pipeline/warm/) seen from outside: the switch, and a step run on its
own with a helper that is not there. The faults (a killed launcher, a killed fork, a dead
helper) are in test_faults.py; every other end-to-end test runs with the helper on."""

from __future__ import annotations

import subprocess
import time

import psutil

from support import ROOT, Store

FAST = "model=logistic_regression train.cv_folds=2 monitor.system_metrics=false data=iris"


def test_main_warm_steps_false_runs_every_step_in_its_own_process_and_starts_no_helper(fresh_store: Store):
    store = fresh_store
    cmd = [store.python_exe, "-m", "mlflow", "run", ".", "-e", "main", "--env-manager", "local",
           "-P", "steps=ingest,preprocess", "-P", f"overrides={FAST} main.warm_steps=false"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=store.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    helpers = set()
    while proc.poll() is None:  # the process table, polled while the pipeline runs
        for p in psutil.Process(proc.pid).children(recursive=True):
            try:
                if p.cmdline()[1:3] == ["-m", "mlpipe.pipeline.warm.helper"]:
                    helpers.add(p.pid)
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.05)
    out, err = proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    assert not helpers
    runs = [store.step_runs(step)[0] for step in ("ingest", "preprocess")]
    assert [r.data.tags["pipeline.process"] for r in runs] == ["own", "own"]
    assert all(r.info.status == "FINISHED" for r in runs)


def test_a_step_whose_helper_is_gone_runs_in_its_own_process_and_says_so(fresh_store: Store, tmp_path):
    missing = tmp_path / "helper.sock"
    result = fresh_store.mlflow_run("-P", f"overrides={FAST}", entry="ingest", check=True,
                                    env={**fresh_store.env, "MLPIPE_WARM_SOCKET": str(missing)})
    assert (f"mlpipe: the warm helper did not take steps.ingest (cannot connect to {missing}: No such file or "
            f"directory); running it in its own process") in result.stderr
    (run,) = fresh_store.step_runs("ingest")
    assert run.info.status == "FINISHED" and run.data.tags["pipeline.process"] == "own"
