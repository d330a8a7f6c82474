"""Ctrl-C on `mlflow run . -e serve` ends the run FINISHED, as the server's clean stop should.

Ctrl-C reaches both `mlflow run` and the step. The step drains and ends its run FINISHED; then
MLflow 3.17's `mlflow run`, handling its own KeyboardInterrupt, marks the run FAILED anyway
(`mlflow.projects._maybe_set_run_terminated` passes the status string to
`RunStatus.is_terminated`, which expects an integer, so a finished run never counts as
terminated). It does so after the step process has exited, so only a process that outlives the
step can put the status back: `python -m mlpipe.run.interrupted <run_id> <launcher pid>`, started
by the step (`StepContext.finished_after_interrupt`), waits at most `WAIT_S` for `mlflow run` to
exit and then sets FINISHED again, only on a run that was stopped by a signal and has no error.
"""

from __future__ import annotations

import sys
import time

from mlpipe.run.outputs import ERROR_TYPE_TAG, STOPPED_BY_TAG
from mlpipe.run.processes import exited

WAIT_S = 60.0


def main(run_id: str, launcher_pid: int) -> int:
    deadline = time.monotonic() + WAIT_S
    while not exited(launcher_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    from mlflow import MlflowClient

    client = MlflowClient()
    run = client.get_run(run_id)
    tags = run.data.tags
    if run.info.status == "FAILED" and tags.get(STOPPED_BY_TAG) and ERROR_TYPE_TAG not in tags:
        client.set_terminated(run_id, "FINISHED", end_time=run.info.end_time)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
