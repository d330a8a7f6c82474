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
    preprocess_run_id: str = ""


def task_of(client, version) -> str:
    """The task a registered version was validated for: its qa run's data.task ("" without one)."""
    qa = (version.tags or {}).get(f"{outputs.LINEAGE_PREFIX}qa_run_id")
    return client.get_run(qa).data.tags.get("data.task", "") if qa else ""


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
    task = task_of(client, version)
    profile = handoff.read_json(client, preprocess, outputs.DRIFT_PROFILE_ARTIFACT)
    reference = handoff.read_frame(client, preprocess, outputs.DRIFT_REFERENCE_ARTIFACT)
    return Watched(name, alias, str(version.version), task, profile, reference, preprocess)


def served_rows(target: str, experiment: str, version: str, after_id: int, timeout_s: float,
                limit: int) -> tuple[pd.DataFrame, int]:
    """The rows `version` answered after request id `after_id` whose inputs the server kept (at
    most `limit` requests of that version: other versions' requests, a canary's, never fill the
    window), and the last request id read (the next window starts after it)."""
    frame = reads.served_frame(target, experiment, timeout_s, after_id=after_id, limit=limit, model_version=version)
    return frame, (int(frame["record_id"].max()) if not frame.empty else after_id)


def new_labels(target: str, experiment: str, version: str, after_id: int, timeout_s: float,
               limit: int) -> list[tuple[int, Any, Any]]:
    return reads.labels_after(target, experiment, version, after_id, timeout_s, limit=limit)


def model(client, watched: Watched, trust, runtime: str, serialization: str, trusted: list[str]):
    """The watched version as the server runs it, past the trust boundary (a signed verdict, its
    files unchanged): its ONNX conversion under runtime=onnx (nothing unpickled), else the
    scikit-learn model in the configured format."""
    from mlpipe.registry import provenance
    from mlpipe.training import model_io

    proof = provenance.validated(client, f"models:/{watched.name}/{watched.version}",
                                 "the monitor reads only a version qa validated", trust.keyring, trust.gate_experiment)
    if runtime == "onnx":
        return model_io.load_onnx(proof.load_uri, proof.digest)[0]
    return model_io.load_model(proof.load_uri, serialization, trusted, expect_digest=proof.digest)[0]


def training_rows(client, watched: Watched, target: str, rows: int, seed: int) -> pd.DataFrame:
    """At most `rows` rows of the training split the watched version was fitted on, target included."""
    frame = handoff.read_frame(client, watched.preprocess_run_id, outputs.frame_artifact("train"))
    return frame.sample(rows, random_state=seed) if len(frame) > rows else frame
