"""What each step hands to the next: one small dataclass per step, written as tags of the step's
run by the harness (`StepContext.hand_over`) and read back with `from_run(run)`.

A field's tag name lives here and nowhere else; a missing or malformed value is an
`UpstreamError` naming the run, the tag and how to make it again. Artifacts (Parquet splits,
JSON, the transformer) keep their paths in the `*_ARTIFACT` constants beside each class.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from mlflow.entities import Run

from mlpipe.errors import UpstreamError

TASKS = ("classification", "regression")
MODEL_URI_TAG = "pipeline.model_uri"

T = TypeVar("T", bound="StepOutput")


def tag(name: str, kind: type = str, choices: tuple[str, ...] | None = None) -> Any:
    """A field stored as the run tag `name` (bool as "true"/"false", int as digits)."""
    return field(metadata={"tag": name, "kind": kind, "choices": choices})


def _encode(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _decode(text: str, kind: type) -> Any:
    if kind is bool:
        if text not in ("true", "false"):
            raise ValueError(f"expected true or false, found {text!r}")
        return text == "true"
    return kind(text)


@dataclass(frozen=True)
class StepOutput:
    """Base class: `tags()` for the producing step, `from_run(run)` for every reader."""

    step: ClassVar[str]

    def tags(self) -> dict[str, str]:
        return {f.metadata["tag"]: _encode(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_run(cls: type[T], run: Run) -> T:
        tags, values = run.data.tags, {}
        for f in dataclasses.fields(cls):
            name, kind, choices = f.metadata["tag"], f.metadata["kind"], f.metadata["choices"]
            where = f"{cls.step} run {run.info.run_id}"
            if name not in tags:
                raise UpstreamError(f"{where} has no tag {name} ({f.name}); it was not made by this "
                                    f"pipeline's {cls.step} step or did not finish: rerun mlflow run . -e {cls.step}")
            try:
                values[f.name] = _decode(tags[name], kind)
            except ValueError as exc:
                raise UpstreamError(f"{where}: tag {name}={tags[name]!r} is malformed ({exc})") from None
            if choices and values[f.name] not in choices:
                raise UpstreamError(f"{where}: tag {name}={tags[name]!r}; expected one of {', '.join(choices)}")
        return cls(**values)


@dataclass(frozen=True)
class IngestOutput(StepOutput):
    step: ClassVar[str] = "ingest"
    task: str = tag("data.task", choices=TASKS)
    data_source: str = tag("lineage.data_source")
    data_digest: str = tag("lineage.data_digest")


RAW_ARTIFACT = "data/raw.parquet"
PROFILE_ARTIFACT = "data_profile.json"


@dataclass(frozen=True)
class PreprocessOutput(StepOutput):
    step: ClassVar[str] = "preprocess"
    task: str = tag("data.task", choices=TASKS)
    fitted_in: str = tag("preprocess.fitted_in", choices=("step", "worker"))
    train_digest: str = tag("data.train_digest")
    validation_digest: str = tag("data.validation_digest")
    test_digest: str = tag("data.test_digest")

    def digest(self, split: str) -> str:
        return getattr(self, f"{split}_digest")


SPLITS = ("train", "validation", "test")
FEATURE_SPEC_ARTIFACT = "feature_spec.json"
DRIFT_PROFILE_ARTIFACT = "drift/reference_profile.json"
DRIFT_REFERENCE_ARTIFACT = "data/drift_reference.parquet"


def split_artifact(split: str) -> str:
    return f"data/{split}.parquet"


@dataclass(frozen=True)
class TrainOutput(StepOutput):
    step: ClassVar[str] = "train"
    model_uri: str = tag(MODEL_URI_TAG)
    task: str = tag("data.task", choices=TASKS)
    model_class: str = tag("model.class")
    preprocess_run_id: str = tag("pipeline.preprocess_run_id")


@dataclass(frozen=True)
class QaOutput(StepOutput):
    step: ClassVar[str] = "qa"
    passed: bool = tag("qa.passed", bool)
    model_uri: str = tag(MODEL_URI_TAG)
    task: str = tag("data.task", choices=TASKS)
    primary_metric: str = tag("qa.primary_metric")
    failed_checks: str = tag("qa.failed_checks")
    # the champion could not score this data and qa.champion.on_incompatible=replace let this model take over
    champion_replaced: bool = tag("qa.champion_replaced", bool)
    # sha256 of the model files qa loaded and validated (training/model_io.files_digest): what
    # serve, register and qa's champion load check a model's files against (registry/provenance.py)
    model_digest: str = tag("qa.model_digest")


@dataclass(frozen=True)
class RegisterOutput(StepOutput):
    step: ClassVar[str] = "register"
    model_name: str = tag("registry.model_name")
    version: int = tag("registry.version", int)
    promoted: bool = tag("registry.promoted", bool)
    reason: str = tag("registry.reason")
    model_uri: str = tag(MODEL_URI_TAG)
