"""Fitting the preprocessor in a fresh worker process that holds only the training rows.

A step process carries MLflow, its tracking store and its run (about 340 MB before it reads
any data) plus what it has already handled. The worker, `python -m mlpipe.data.fit_worker
<request.json>`, imports scikit-learn, pandas and Arrow only (about 190 MB), reads the training
split the step has just written, fits, and hands the fitted transformer back as a pickle in
the step's own work folder. The step lets its rows go first, so the fit's peak (the rows plus
about two copies of the numeric block, inside scikit-learn) sits in the smaller process.

A worker error comes back as the same `PipelineError` class with its message; any other
exception, or a worker that dies without an answer (killed, out of memory), is a `WorkerError`
naming what happened; a worker past `preprocess.fit_worker_timeout_s` is a `ResourceLimitError`."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

from mlpipe import errors

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def wanted(rows_mb: float, min_mb: float | None) -> bool:
    """Whether `rows_mb` MB of training rows are fitted in a worker (`preprocess.fit_worker_min_mb`)."""
    if min_mb is not None and float(min_mb) < 0:
        raise errors.ConfigError(f"preprocess.fit_worker_min_mb={min_mb}: expected a size >= 0 in MB, or null (never)")
    return min_mb is not None and rows_mb >= float(min_mb)


def fit_in_worker(spec, cfg: dict, data: Path, workdir: Path):
    """The preprocessor fitted on the Parquet file `data` (spec.columns + spec.target) by a
    worker process; `workdir` holds the request, the answer and any error."""
    request = workdir / "fit_worker.json"
    answer, failure = workdir / "fit_worker.pkl", workdir / "fit_worker.error.json"
    files = (request, answer, failure, Path(f"{answer}.partial"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
    try:
        for stale in files:
            stale.unlink(missing_ok=True)
        request.write_text(json.dumps({"spec": spec.to_dict(), "cfg": cfg, "data": str(data), "answer": str(answer),
                                       "failure": str(failure)}))
        # interrupted (Ctrl-C), subprocess.run kills the worker before re-raising
        timeout = float(cfg["fit_worker_timeout_s"])
        try:
            proc = subprocess.run([sys.executable, "-m", "mlpipe.data.fit_worker", str(request)], env=env,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:  # subprocess.run has killed the worker
            raise errors.ResourceLimitError(f"the preprocessor's fit worker ran over preprocess.fit_worker_timeout_s="
                                       f"{timeout:g} s and was stopped; raise it for bigger data") from None
        if proc.returncode == 0 and answer.exists():
            with answer.open("rb") as f:
                return pickle.load(f)
        if failure.exists():
            raise as_error(json.loads(failure.read_text()))
        raise errors.WorkerError(f"the preprocessor's fit worker {ended(proc.returncode)} without an answer"
                                   + (f"; it said: {last_line(proc.stderr)}" if proc.stderr.strip() else ""))
    finally:
        for path in files:  # also a worker's half-written answer
            path.unlink(missing_ok=True)


def as_error(failure: dict) -> errors.PipelineError:
    cls = getattr(errors, failure["type"], None)
    if isinstance(cls, type) and issubclass(cls, errors.PipelineError):
        return cls(failure["message"])
    return errors.WorkerError(f"fitting the preprocessor failed: {failure['type']}: {failure['message']}")


def ended(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def main(request_path: str) -> int:
    from mlpipe.run.frames import read_parquet, return_freed_memory
    from mlpipe.run.processes import stop_with_parent

    stop_with_parent()  # a killed step does not leave its worker fitting

    request = json.loads(Path(request_path).read_text())
    try:
        from mlpipe.data.features import FeatureSpec, fit_preprocessor

        return_freed_memory()
        fitted = fit_preprocessor(FeatureSpec.from_dict(request["spec"]), request["cfg"], read_parquet(request["data"]))
        partial = Path(request["answer"] + ".partial")
        with partial.open("wb") as f:
            pickle.dump(fitted, f, protocol=pickle.HIGHEST_PROTOCOL)
        partial.replace(request["answer"])  # the answer exists whole or not at all
        return 0
    except Exception as exc:  # noqa: BLE001 - every failure goes back to the step, named
        message = errors.one_line(exc)
        Path(request["failure"]).write_text(json.dumps({"type": type(exc).__name__, "message": message}))
        print(f"error: fit worker: {type(exc).__name__}: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
