"""Where a source's reference schema lives: `validation/schema.yaml` of an earlier ingest run."""

from __future__ import annotations

import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

from mlpipe.run import handoff
from mlpipe.errors import DataError, StorageError, UpstreamError

SCHEMA_ARTIFACT = "validation/schema.yaml"
SCHEMA_STORED_TAG = "validation.schema_stored"
SCHEMA_FROM_TAG = "data.schema_from"


def find_stored(client: MlflowClient, experiment_id: str, source: str) -> tuple[str, str] | None:
    """(run id, schema YAML) of the newest FINISHED ingest of `source` that stored a schema."""
    quoted = str(source).replace("\\", "\\\\").replace("'", "\\'")
    runs = client.search_runs(
        [experiment_id],
        filter_string=(f"tags.`{handoff.STEP_TAG}` = 'ingest' and attributes.status = 'FINISHED' "
                       f"and tags.`{SCHEMA_STORED_TAG}` = 'true' and params.`data.source` = '{quoted}'"),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        return None
    run_id = runs[0].info.run_id
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
