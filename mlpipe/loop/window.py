"""What the monitor reads: the watched version (the alias the server follows), its training
reference (the profile and rows preprocess logged for qa's drift tests), and from the serving
records the rows served since the last run and the labels that arrived since."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from mlpipe.errors import UpstreamError
from mlpipe.registry import versions
from mlpipe.run import handoff, outputs
from mlpipe.serving.records import reads


@dataclass
class Watched:
    """The served model the monitor watches: its version, task and training reference."""

    name: str
    alias: str
    version: str
    task: str
    profile: dict[str, Any]
    reference: pd.DataFrame



def watched(client, name: str, alias: str) -> Watched:
    """`name@alias` and what it was trained on; an UpstreamError saying what is missing."""
    version = versions.current(client, name, alias)
    if version is None:
        raise UpstreamError(f"monitor: no {name}@{alias} to watch; register one first (mlflow run . -e main), "
                            "or set loop.model / loop.alias")
    tags = version.tags or {}
    preprocess, qa = tags.get(f"{outputs.LINEAGE_PREFIX}preprocess_run_id"), tags.get(
        f"{outputs.LINEAGE_PREFIX}qa_run_id")
    if not preprocess or not qa:
        raise UpstreamError(f"monitor: {name} v{version.version} has no lineage.preprocess_run_id / "
                            "lineage.qa_run_id tags: it was not registered by this pipeline, so there is no "
                            "training reference to compare the served rows with")
    task = client.get_run(qa).data.tags.get("data.task", "")
    profile = handoff.read_json(client, preprocess, outputs.DRIFT_PROFILE_ARTIFACT)
    reference = handoff.read_frame(client, preprocess, outputs.DRIFT_REFERENCE_ARTIFACT)
    return Watched(name, alias, str(version.version), task, profile, reference)


def served_rows(target: str, experiment: str, version: str, after_id: int, timeout_s: float,
                limit: int) -> tuple[pd.DataFrame, int]:
    """The rows `version` answered after request id `after_id` whose inputs the server kept, and
    the last request id read (of any version: the next window starts after it)."""
    frame = reads.served_frame(target, experiment, timeout_s, after_id=after_id, limit=limit)
    if frame.empty:
        return frame, after_id
    return frame[frame["model_version"].astype(str) == str(version)], int(frame["record_id"].max())


def new_labels(target: str, experiment: str, version: str, after_id: int, timeout_s: float,
               limit: int) -> list[tuple[int, Any, Any]]:
    return reads.labels_after(target, experiment, version, after_id, timeout_s, limit=limit)
