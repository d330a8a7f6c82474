"""mlpipe/run/interrupted.py against a real SQLite store: after Ctrl-C, `mlflow run` marks a
cleanly stopped serve run FAILED; the watcher puts FINISHED back once `mlflow run` is gone,
and only on such a run."""

import subprocess
import sys
import time

from mlpipe.run import interrupted


def _run(registry, **tags):
    run = registry.client.create_run(registry.experiment_id, tags=tags)
    registry.client.set_terminated(run.info.run_id, "FAILED")  # what `mlflow run` does after Ctrl-C
    return run.info.run_id


def test_a_run_stopped_by_ctrl_c_is_finished_again_once_the_launcher_has_exited(registry):
    run_id = _run(registry, **{"serve.stopped_by": "SIGINT"})
    launcher = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)"])
    started = time.monotonic()
    interrupted.main(run_id, launcher.pid)
    assert time.monotonic() - started >= 0.8  # it waited for the launcher
    launcher.wait()
    assert registry.client.get_run(run_id).info.status == "FINISHED"


def test_a_failed_run_or_one_no_signal_stopped_stays_failed(registry):
    failed = _run(registry, **{"serve.stopped_by": "SIGINT", "error.type": "ServingError"})
    plain = _run(registry)
    for run_id in (failed, plain):
        interrupted.main(run_id, 999999999)  # no such process: the launcher is gone
        assert registry.client.get_run(run_id).info.status == "FAILED"
