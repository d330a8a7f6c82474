"""Where a source's reference schema lives: `validation/schema.yaml` of an earlier ingest run."""

from __future__ import annotations

import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

from mlpipe.errors import DataError, StorageError, UpstreamError
from mlpipe.run import handoff

SCHEMA_ARTIFACT = "validation/schema.yaml"
SCHEMA_STORED_TAG = "validation.schema_stored"
SCHEMA_FROM_TAG = "data.schema_from"


def find_stored(client: MlflowClient, experiment_id: str, source: str) -> tuple[str, str] | None:
    """(run id, schema YAML) of the newest FINISHED ingest of `source` that stored a schema."""
    run = handoff.newest_finished_run(client, experiment_id, {handoff.STEP_TAG: "ingest", SCHEMA_STORED_TAG: "true"},
                                      params={"data.source": source})
    if run is None:
        return None
    run_id = run.info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return run_id, handoff.download(client, run_id, SCHEMA_ARTIFACT, tmp).read_text()
        except UpstreamError as exc:
            raise StorageError(f"cannot fetch {SCHEMA_ARTIFACT} of ingest run {run_id}: {exc}") from exc


def read_configured(path: str) -> str:
    """The YAML text of a schema named by `data.schema`."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: no such schema file (data.schema)")
    return p.read_text()
