"""Faults with real processes: a step killed with SIGKILL, then resumed; two pipelines at once."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import psutil
import pytest

from support import Store, error_lines

FAST = "model=logistic_regression train.cv_folds=2 monitor.system_metrics=false"
# For the tests that signal a running train: a warm train of FAST ends within a second of being
# keyed, often before the signal is sent; this one fits 6 x 400 trees (several seconds).
SLOW_TRAIN = "model=random_forest model.n_estimators=400 model.n_jobs=1 train.cv_folds=5 monitor.system_metrics=false"


def popen_main(store: Store, overrides: str, steps: str = "ingest,preprocess,train,qa,register"):
    cmd = [store.python_exe, "-m", "mlflow", "run", ".", "-e", "main", "--env-manager", "local",
           "-P", f"steps={steps}", "-P", f"overrides={overrides}"]
    return cmd, subprocess.Popen(cmd, cwd=store.root, env=store.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, start_new_session=True)


def step_process(root_pid: int, step: str) -> psutil.Process | None:
    for proc in psutil.Process(root_pid).children(recursive=True):
        try:
            if proc.cmdline()[1:3] == ["-m", f"steps.{step}"]:  # the Python process, not bash -c
                return proc
        except psutil.NoSuchProcess:
            continue
    return None


def warm_child(root_pid: int, step: str) -> psutil.Process | None:
    """The process doing a warm step's work: the fork of the driver's warm helper named after it."""
    for proc in psutil.Process(root_pid).children(recursive=True):
        try:
            if proc.name() == f"steps.{step}" and proc.cmdline()[1:3] == ["-m", "mlpipe.pipeline.warm.helper"]:
                return proc
        except psutil.NoSuchProcess:
            continue
    return None


def keyed_step(store: Store, proc: subprocess.Popen, step: str) -> psutil.Process:
    """The step's process, once its run is keyed (config composed, inputs resolved)."""
    deadline = time.monotonic() + 300
    while (found := step_process(proc.pid, step)) is None or not [
            r for r in store.step_runs(step) if "pipeline.cache_key" in r.data.tags]:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{step} never started"
        time.sleep(0.1)
    return found


# The launcher's death reaching its fork is proven with real processes in
# tests/unit/pipeline/test_warm.py (test_sigkill_of_the_launcher_ends_its_child); here only the
# fork (the default path) runs by default, the launcher variant behind slow.
@pytest.mark.parametrize("victim", [pytest.param("launcher", marks=pytest.mark.slow), "fork"])
def test_a_killed_step_is_never_reused_and_main_resumes(fresh_store: Store, victim):
    """SIGKILL mid-train, once its run is keyed (config composed, inputs resolved), to the step
    process `mlflow run` started (its launcher) or to the warm helper's fork doing its work:
    train fails as StepDied either way, and a re-run reuses ingest and preprocess."""
    store = fresh_store
    cmd, proc = popen_main(store, f"{SLOW_TRAIN} data=iris", steps="ingest,preprocess,train")
    try:
        launcher = keyed_step(store, proc, "train")
        (launcher if victim == "launcher" else warm_child(proc.pid, "train")).send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    (killed,) = store.step_runs("train")
    (line,) = error_lines(err)
    assert f"step train failed (run {killed.info.run_id}, StepDied): " in line
    assert "ended without reporting an error (killed, or out of memory?)" in line, line
    assert killed.info.status == "FAILED" and killed.data.tags["pipeline.process"] == "warm"
    assert "pipeline.cache_key" in killed.data.tags  # it had a key: only its status keeps it from reuse

    resumed = subprocess.run(cmd, cwd=store.root, env=store.env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    outcomes = dict(re.findall(r"^(\w+) +\w{32} +(ran|cached) ", resumed.stdout, re.M))
    assert outcomes == {"ingest": "cached", "preprocess": "cached", "train": "ran"}, resumed.stdout
    first, second = store.step_runs("train")
    assert second.info.run_id != killed.info.run_id and second.info.status == "FINISHED"


def test_a_dead_helper_leaves_the_next_steps_to_their_own_processes_loudly(fresh_store: Store):
    """The warm helper SIGKILLed while ingest runs: ingest still finishes (its fork does not
    depend on the helper), and each later step says on stderr that it runs in its own process."""
    store = fresh_store
    _, proc = popen_main(store, f"{SLOW_TRAIN} data=iris", steps="ingest,preprocess,train")
    try:
        keyed_step(store, proc, "ingest")
        (helper,) = [p for p in psutil.Process(proc.pid).children(recursive=True)
                     if p.pid == os.getpgid(p.pid) and p.cmdline()[1:3] == ["-m", "mlpipe.pipeline.warm.helper"]]  # its own group
        helper.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    runs = {step: store.step_runs(step)[0] for step in ("ingest", "preprocess", "train")}
    assert {s: r.info.status for s, r in runs.items()} == dict.fromkeys(runs, "FINISHED")
    assert runs["ingest"].data.tags["pipeline.process"] == "warm"
    assert runs["train"].data.tags["pipeline.process"] == "own"
    assert re.search(r"^mlpipe: the warm helper did not take steps\.train \(cannot connect to .*helper\.sock: "
                     r"Connection refused\); running it in its own process$", err, re.M), err[-3000:]


def test_sigterm_to_the_outer_mlflow_run_leaves_no_step_process(fresh_store: Store):
    """`kill <pid of mlflow run>` mid-train: the driver and the step get SIGTERM from their
    launcher's death and exit; no process is left working on a pipeline nobody waits for."""
    store = fresh_store
    _, proc = popen_main(store, f"{SLOW_TRAIN} data=iris", steps="ingest,preprocess,train")
    try:
        keyed_step(store, proc, "train")
        family = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGTERM)  # the outer process only, not its group
        proc.wait(timeout=60)
        _, alive = psutil.wait_procs(family, timeout=60)
        assert not alive, [p.cmdline() for p in alive]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    (train,) = store.step_runs("train")
    assert train.info.status != "FINISHED"  # it stopped mid-work


def test_two_pipelines_at_once_both_finish_with_a_consistent_registry(fresh_store: Store):
    store = fresh_store
    _, a = popen_main(store, f"{FAST} data=iris registry.model_name=flowers")
    _, b = popen_main(store, "model=random_forest model.n_estimators=20 train.cv_folds=2 "
                             "monitor.system_metrics=false data=iris registry.model_name=flowers")
    results = [p.communicate(timeout=900) for p in (a, b)]
    for proc, (out, err) in zip((a, b), results):
        assert proc.returncode == 0, err[-4000:]
    parents = store.runs("tags.`pipeline.role` = 'pipeline'")
    assert len(parents) == 2
    for parent in parents:
        children = store.children(parent.info.run_id)
        assert sorted(c.info.run_name.replace(" (cached)", "") for c in children) == sorted(
            ["ingest", "preprocess", "train", "qa", "register"])
        assert all(c.info.status == "FINISHED" for c in children)
    # The shared steps ran once: the second pipeline waited on the lock and reused them.
    assert len(store.step_runs("ingest")) == 1 and len(store.step_runs("preprocess")) == 1
    assert len(store.step_runs("train")) == 2
    # The registry: two versions; the champion is the version whose register run promoted last.
    versions = {str(v.version): v for v in store.client.search_model_versions("name = 'flowers'")}
    assert sorted(versions) == ["1", "2"]
    registers = sorted(store.step_runs("register"), key=lambda r: int(r.data.tags["registry.version"]))
    promoted = [r.data.tags["registry.version"] for r in registers if r.data.tags["registry.promoted"] == "true"]
    assert promoted and promoted[0] == "1"
    champion = store.client.get_model_version_by_alias("flowers", "champion")
    assert str(champion.version) == promoted[-1]
    # Each version points at its own pipeline's train run.
    trains = {r.info.run_id for r in store.step_runs("train")}
    assert {v.tags["lineage.train_run_id"] for v in versions.values()} == trains


def test_two_registers_held_at_the_promotion_lock_each_compare_with_the_other(fresh_store: Store, tmp_path):
    """The promotion-lock race made deterministic: this test holds the registry's promotion lock
    while two register steps start, sees both say they wait for it (and nothing registered),
    then lets them go. Whichever goes second must compare with the champion the first set."""
    import mlflow

    from mlpipe.registry.versions import promotion_lock

    store = fresh_store
    configs = [f"{FAST} data=iris registry.model_name=flowers",
               "model=random_forest model.n_estimators=20 train.cv_folds=2 monitor.system_metrics=false data=iris "
               "registry.model_name=flowers"]
    for overrides in configs:
        store.mlflow_run("-P", "steps=ingest,preprocess,train,qa", "-P", f"overrides={overrides}", check=True)
    qa_runs = store.step_runs("qa")
    assert len(qa_runs) == 2 and all(r.data.tags["qa.passed"] == "true" for r in qa_runs)

    mlflow.set_tracking_uri(store.uri)  # the lock is keyed by the registry's URI, as in the steps
    procs, logs = [], [tmp_path / "a.err", tmp_path / "b.err"]
    try:
        with promotion_lock("flowers", 600):
            for qa, overrides, log in zip(qa_runs, configs, logs):
                procs.append(subprocess.Popen(
                    [store.python_exe, "-m", "mlflow", "run", ".", "-e", "register", "--env-manager", "local",
                     "-P", f"qa_run_id={qa.info.run_id}", "-P", f"overrides={overrides}"],
                    cwd=store.root, env=store.env, stdout=subprocess.DEVNULL, stderr=log.open("w"),
                    start_new_session=True))
            deadline = time.monotonic() + 180
            waiting = "[mlpipe] waiting for another register or A/B promotion of 'flowers' on this machine"
            while not all(waiting in log.read_text() for log in logs):
                assert all(p.poll() is None for p in procs), [log.read_text()[-2000:] for log in logs]
                assert time.monotonic() < deadline, [log.read_text()[-2000:] for log in logs]
                time.sleep(0.2)
            assert store.client.search_model_versions("name = 'flowers'") == []
        for proc, log in zip(procs, logs):
            assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        mlflow.set_tracking_uri(None)
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    first, second = sorted(store.step_runs("register"), key=lambda r: int(r.data.tags["registry.version"]))
    assert (first.data.tags["registry.promoted"], first.data.tags["registry.reason"]) == ("true", "no current champion")
    qa = [store.client.get_run(r.data.tags["pipeline.qa_run_id"]) for r in (first, second)]
    metric = qa[0].data.tags["qa.primary_metric"]
    values = [run.data.metrics[f"qa.{metric}"] for run in qa]
    better = values[1] > values[0]
    assert second.data.tags["registry.reason"] == (
        f"{metric} {values[1]:.4f} {'beats' if better else 'does not beat'} champion's {values[0]:.4f}")
    champion = store.client.get_model_version_by_alias("flowers", "champion")
    assert str(champion.version) == ("2" if better else "1")


def test_a_step_that_hangs_past_its_time_limit_is_stopped_by_the_driver(fresh_store: Store):
    """A step that cannot stop itself (here: SIGSTOP, as a hung process or one long C call would
    be) is stopped by the driver monitor.max_step_seconds + main.step_grace_s after it started,
    and main fails with one line naming both keys."""
    store = fresh_store
    _, proc = popen_main(store, f"{SLOW_TRAIN} data=iris monitor.max_step_seconds=15 monitor.action=fail "
                                "main.step_grace_s=3", steps="ingest,preprocess,train")
    try:
        keyed_step(store, proc, "train")
        victim = warm_child(proc.pid, "train")  # the process doing the work; its launcher only waits
        victim.send_signal(signal.SIGSTOP)
        _, err = proc.communicate(timeout=120)
        _, alive = psutil.wait_procs([victim], timeout=30)
        assert not alive
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        try:  # a stopped step in a process group of its own, were the driver not to stop it
            victim.kill()
        except (psutil.NoSuchProcess, UnboundLocalError):
            pass
    assert proc.returncode != 0
    (train,) = store.step_runs("train")
    (line,) = error_lines(err)
    assert line.endswith(f"step train failed (run {train.info.run_id}, StepTimeout): step train ran over "
                         "monitor.max_step_seconds=15 s + main.step_grace_s=3 s without stopping itself and was "
                         "stopped by the driver; raise monitor.max_step_seconds if it needs longer"), line
    assert train.info.status == "FAILED" and train.data.tags["error.type"] == "StepTimeout"
