"""How steps hand over: upstream runs by id, Parquet/JSON artifacts, lineage tags."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Callable, Mapping

import pandas as pd
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlpipe.run.frames import read_parquet, write_parquet  # noqa: F401 - the hand-off's Parquet format
from mlpipe.errors import StorageError, UpstreamError
from mlpipe.run.outputs import CONFIG_DIGEST_TAG, LINEAGE_PREFIX, STEP_TAG


def get_upstream(client: MlflowClient, upstream: str, run_id: str) -> Run:
    """The given upstream run, checked to be a FINISHED run of the expected step."""
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise UpstreamError(f"{upstream}_run_id={run_id}: no such run in the tracking store") from exc
    step = run.data.tags.get(STEP_TAG)
    if step != upstream:
        raise UpstreamError(f"{upstream}_run_id={run_id} is a run of step {step!r}, not {upstream!r}")
    if run.info.status != "FINISHED":
        raise UpstreamError(
            f"{upstream}_run_id={run_id} is {run.info.status}, not FINISHED; rerun: mlflow run . -e {upstream}"
        )
    return run


def _quoted(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("'", "\\'")


def newest_finished_run(client: MlflowClient, experiment_id: str, tags: Mapping[str, object],
                        params: Mapping[str, object] | None = None,
                        accept: Callable[[Run], bool] | None = None, scan: int = 20) -> Run | None:
    """The newest FINISHED run of the experiment whose tags and params have these values, and
    that `accept` (when given) takes, looking at the newest `scan` matches."""
    clauses = ["attributes.status = 'FINISHED'"]
    clauses += [f"tags.`{key}` = '{_quoted(value)}'" for key, value in tags.items()]
    clauses += [f"params.`{key}` = '{_quoted(value)}'" for key, value in (params or {}).items()]
    runs = client.search_runs([experiment_id], filter_string=" and ".join(clauses),
                              order_by=["attributes.start_time DESC"], max_results=scan if accept else 1)
    return next((run for run in runs if accept is None or accept(run)), None)


# Runs per search call while reading every match (MLflow's own default page size).
SEARCH_PAGE = 1000


def all_runs(client: MlflowClient, experiment_ids: list[str], filter_string: str,
             order_by: list[str] | None = None) -> list[Run]:
    """Every run a search matches, page by page: none is dropped past a page size."""
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string, order_by=order_by, max_results=SEARCH_PAGE,
                                  page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def newest_finished(client: MlflowClient, experiment_id: str, step: str,
                    config_digest: str | None = None) -> Run | None:
    """The newest FINISHED run of `step` (optionally with a matching config digest)."""
    tags = {STEP_TAG: step} | ({CONFIG_DIGEST_TAG: config_digest} if config_digest else {})
    return newest_finished_run(client, experiment_id, tags)


def resolve_upstream(client: MlflowClient, experiment_id: str, upstream: str, given: str | None) -> Run:
    """The run given by id, else the newest finished run of `upstream`, said on stderr."""
    if given:
        return get_upstream(client, upstream, given)
    run = newest_finished(client, experiment_id, upstream)
    if run is None:
        raise UpstreamError(
            f"no finished {upstream} run in experiment {experiment_id}; run it first: "
            f"mlflow run . -e {upstream} (or pass -P {upstream}_run_id=<id>)"
        )
    print(f"[mlpipe] using the newest finished {upstream} run {run.info.run_id} "
          f"(pass -P {upstream}_run_id=<id> to choose)", file=sys.stderr)
    return run


def download(client: MlflowClient, run_id: str, artifact_path: str, dst: str) -> Path:
    """One artifact of a run, read from where the run says its artifacts are (MLflow's runs:/
    repository hides the store's own error); an unreachable store is a StorageError."""
    import mlflow

    from mlpipe.run.storage import describe, is_transient

    try:
        where = client.get_run(run_id).info.artifact_uri
    except MlflowException as exc:
        raise UpstreamError(f"run {run_id}: no such run in the tracking store") from exc
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{where.rstrip('/')}/{artifact_path}",
                                                        dst_path=dst))
    except Exception as exc:
        if not isinstance(exc, (OSError, MlflowException)) and is_transient(exc):
            raise StorageError(f"cannot read artifact {artifact_path!r} of run {run_id} from {where}: "
                               f"{describe(exc)}") from exc
        raise UpstreamError(f"run {run_id} has no readable artifact {artifact_path!r}: {exc}") from exc


def read_frame(client: MlflowClient, run_id: str, artifact_path: str) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as tmp:
        return read_parquet(download(client, run_id, artifact_path, tmp))


def read_json(client: MlflowClient, run_id: str, artifact_path: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(download(client, run_id, artifact_path, tmp).read_text())


def lineage(run: Run) -> dict[str, str]:
    return {k: v for k, v in run.data.tags.items() if k.startswith(LINEAGE_PREFIX)}
