"""What each step hands to the next: one small dataclass per step, written as tags of the step's
run by the harness (`StepContext.hand_over`) and read back with `from_run(run)`.

A field's tag name lives here and nowhere else; a missing or malformed value is an
`UpstreamError` naming the run, the tag and how to make it again. Artifacts (Parquet splits,
JSON, the transformer) keep their paths in the `*_ARTIFACT` constants beside each class. So do
the names every run carries (its step, its error, its summary) and any other tag or artifact
that one module writes and another reads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from mlpipe.errors import UpstreamError

if TYPE_CHECKING:  # the names alone import nothing heavy: run/storage.py, the data readers use them
    from mlflow.entities import Run

TASKS = ("classification", "regression")
MODEL_URI_TAG = "pipeline.model_uri"

# -- what every run of the pipeline carries ------------------------------------------------------
STEP_TAG = "pipeline.step"
PROCESS_TAG = "pipeline.process"  # warm (a fork of the warm helper) or own
SUMMARY_TAG = "pipeline.summary"  # the short result the driver's table shows
CONFIG_DIGEST_TAG = "pipeline.config_digest"
LINEAGE_PREFIX = "lineage."
ROLE_TAG = "pipeline.role"  # pipeline, sweep, sweep-job
OVERRIDES_TAG = "pipeline.overrides"  # the job's Hydra overrides, as JSON
# A failed run: the error's class (mlpipe/errors.py, or StepDied... set by the driver) and its line.
ERROR_TYPE_TAG = "error.type"
ERROR_MESSAGE_TAG = "error.message"
MAX_TAG = 5000  # MLflow's tag value limit (characters)
# Under a team (conf/team): on every run and on every registered version, who made it.
TEAM_TAG = "team.name"
MEMBER_TAG = "team.member"
# On every run a retrain started (and the version it registered): the monitor run that started
# it (loop.origin, docs/loop.md), so each automated action links to the one before it.
LOOP_ORIGIN_TAG = "loop.monitor_run_id"
CONFIG_ARTIFACT = "config/config.yaml"  # the resolved config every run logs
# Every step's report card (run/context.py writes it; the driver copies it into the parent run).
CARD_HTML = "card/card.html"
CARD_JSON = "card/summary.json"
# The cache key a step run is looked up by, and what entered it beyond config and code
# (pipeline/harness.py tags it; the driver searches for it).
KEY_TAG = "pipeline.cache_key"
KEY_INPUT_TAG = "pipeline.key_input"
# A run whose artifacts fell back to local disk (run/storage.py): never reused (the driver).
FALLBACK_TAG = "storage.fallback"
FALLBACK_REASON_TAG = "storage.fallback_reason"
ORIGINAL_URI_TAG = "storage.original_artifact_uri"
# A resource limit a step went past under monitor.action=warn (run/monitor.py's warnings).
MONITOR_WARNING_TAG = "monitor.warnings"


def lineage_tag(step: str) -> str:
    """`lineage.<step>_run_id`: on a run, the run of `step` it descends from (itself included)."""
    return f"{LINEAGE_PREFIX}{step}_run_id"


def frame_artifact(name: str) -> str:
    """Where a run's frame `name` is logged (`StepContext.log_frame`) and read back."""
    return f"data/{name}.parquet"

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
    def tag_name(cls, name: str) -> str:
        """The run tag a field is stored as (for a search or a table over many runs)."""
        return next(f.metadata["tag"] for f in dataclasses.fields(cls) if f.name == name)

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
# The reference schema of a source: stored by the first ingest that passed, read by later ones.
SCHEMA_ARTIFACT = "validation/schema.yaml"
SCHEMA_STORED_TAG = "validation.schema_stored"  # "true" on an ingest run that stored one
SCHEMA_FROM_TAG = "data.schema_from"  # inferred, the run id it came from, or the data.schema path


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
    return frame_artifact(split)


TRANSFORMER_NAME = "preprocessor"  # the fitted transformer's file stem in preprocess's run


@dataclass(frozen=True)
class TrainOutput(StepOutput):
    step: ClassVar[str] = "train"
    model_uri: str = tag(MODEL_URI_TAG)
    task: str = tag("data.task", choices=TASKS)
    model_class: str = tag("model.class")
    preprocess_run_id: str = tag("pipeline.preprocess_run_id")


QA_REPORT_ARTIFACT = "qa_report.json"
TEAM_REPORT_DIR = "team_report"  # the team report's page, charts and leaderboard (steps/report.py)


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


# Tags of a registered version (register writes them; qa, serve and the team report read them):
# the qa metric it was validated on (its value as `qa.<metric>`) and its lineage.* tags.
VERSION_METRIC_TAG = "qa.metric"
# Tags of a version an A/B test promoted into the team model (serving/abreport.py).
COPIED_FROM_TAG = "team.copied_from"
PROMOTED_BY_TAG = "ab.promoted_by"
PROMOTED_AT_TAG = "ab.promoted_at"
PROMOTED_EXPERIMENT_TAG = "ab.promoted_by_experiment"
EVIDENCE_TAG = "ab.evidence"


@dataclass(frozen=True)
class RegisterOutput(StepOutput):
    step: ClassVar[str] = "register"
    model_name: str = tag("registry.model_name")
    version: int = tag("registry.version", int)
    promoted: bool = tag("registry.promoted", bool)
    reason: str = tag("registry.reason")
    model_uri: str = tag(MODEL_URI_TAG)


# -- serve ------------------------------------------------------------------------------------
STOPPED_BY_TAG = "serve.stopped_by"  # the signal that stopped a forever server (mlpipe/run/interrupted.py)


# -- sweeps (pipeline/sweep.py, pipeline/jobs.py) -----------------------------------------------
SWEEP_TAG = "pipeline.sweep_run_id"  # on each job: its sweep parent
NODE_TAG = "pipeline.node"  # on a job run by hydra/launcher=ray: the node it ran on
JOB_PROCESS_TAG = "pipeline.job_process"  # host:pid of the process that ran a sweep job (a launcher's worker)
SCORE_METRIC = "pipeline.score"  # a pipeline's qa primary metric value (what a sweep optimises)


@dataclass(frozen=True)
class SweepJob(StepOutput):
    """What a sweep job is, tagged when its run opens: its sweep, its number, its overrides."""

    step: ClassVar[str] = "sweep job"
    sweep_run_id: str = tag(SWEEP_TAG)
    job_num: int = tag("pipeline.job_num", int)
    overrides: str = tag(OVERRIDES_TAG)  # JSON list of the job's Hydra task overrides


@dataclass(frozen=True)
class SweepJobOutput(StepOutput):
    """What a job that finished qa hands to the sweep's end: the qa run whose model register
    would take, and the metric its `pipeline.score` is."""

    step: ClassVar[str] = "sweep job"
    qa_run_id: str = tag("pipeline.qa_run_id")
    score_metric: str = tag("pipeline.score_metric")
