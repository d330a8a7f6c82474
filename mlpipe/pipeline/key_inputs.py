"""What enters a step's cache key beyond its config slice, code and upstream run.

One table, read by the step itself (harness.step_main tags its run with the key) and by the
driver (which looks the key up before launching the step), so the two can never disagree.
"""

from __future__ import annotations

from typing import Callable

from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from mlpipe.run import outputs


SCHEMA_SEPARATOR = ";schema="


def _ingest(client: MlflowClient, cfg: DictConfig, upstream: Run | None) -> str | None:
    """The data's content digest (and each data.append file's), and the data.schema file's when
    one is given: new data (or an edited schema) at the same path is a new ingest. `data_digest` reads the first part back."""
    from mlpipe.data.sources import source_digest

    digest = source_digest(cfg.data.source) + "".join(f"+{source_digest(str(a))}" for a in cfg.data.append)
    if cfg.data.schema:
        import hashlib
        from pathlib import Path

        schema = Path(cfg.data.schema)
        content = schema.read_bytes() if schema.is_file() else b"<missing>"
        digest += SCHEMA_SEPARATOR + hashlib.sha256(content).hexdigest()
    return digest


def data_digest(ingest_key_input: str) -> str:
    """The data's own digest from ingest's key input (without the schema file's)."""
    return ingest_key_input.partition(SCHEMA_SEPARATOR)[0]


def _qa(client: MlflowClient, cfg: DictConfig, train: Run | None) -> str | None:
    """The champion qa compares with (when it is another model) and the content of the
    qa.data_source batch checked for drift: either changing makes an old qa run stale."""
    from mlpipe.registry.versions import champion_marker

    parts = []
    champion = champion_marker(client, cfg, outputs.TrainOutput.from_run(train).model_uri if train else None)
    if champion:
        parts.append(champion)
    if cfg.qa.data_source:
        from mlpipe.data.sources import source_digest

        parts.append(f"batch={source_digest(cfg.qa.data_source)}")
    return ";".join(parts) or None


KEY_INPUTS: dict[str, Callable[[MlflowClient, DictConfig, Run | None], str | None]] = {
    "ingest": _ingest,
    "qa": _qa,
}


def key_input(step: str, client: MlflowClient, cfg: DictConfig, upstream: Run | None) -> str | None:
    """The extra key input of `step`, or None; raises the source's own error when data is unreadable."""
    fn = KEY_INPUTS.get(step)
    return fn(client, cfg, upstream) if fn else None
