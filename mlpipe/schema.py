"""The types and ranges of every config group (Hydra structured configs in a ConfigStore).

Values live in `conf/` only: no field here has a default (an absent key is `???`, a missing
value), so there is one copy of every number. Hydra checks types and unknown keys when it
composes; `check()` then builds these dataclasses, whose `__post_init__` checks ranges and
choices, so a bad value is a ConfigError naming its key before any step runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from mlpipe.errors import ConfigError


def spec(ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
         choices: tuple[str, ...] | None = None, default: Any = MISSING) -> Any:
    """A field with a range (`ge` <= value, `gt` < value, ...) or a set of choices; None passes."""
    return field(default=default, metadata={"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices})


@dataclass
class Checked:
    """Checks each field's range or choices when built; KEY is the group's dotted path."""

    KEY = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value, rules = getattr(self, f.name), f.metadata
            if value is None or not rules:
                continue
            name = f"{type(self).KEY}.{f.name}"
            if rules["choices"] and value not in rules["choices"]:
                raise ConfigError(f"{name}={value!r}; expected one of {', '.join(rules['choices'])}")
            bounds = [(rules["ge"], ">=", lambda v, b: v >= b), (rules["gt"], ">", lambda v, b: v > b),
                      (rules["le"], "<=", lambda v, b: v <= b), (rules["lt"], "<", lambda v, b: v < b)]
            failed = [f"{op} {bound:g}" for bound, op, ok in bounds if bound is not None and not ok(value, bound)]
            if failed:
                wanted = " and ".join(f"{op} {b:g}" for b, op, _ in bounds if b is not None)
                raise ConfigError(f"{name}={value!r}: expected a value {wanted}")


# -- data -------------------------------------------------------------------------------------
@dataclass
class ValidationConfig(Checked):
    KEY = "data.validation"
    range_tolerance: float = spec(ge=0)
    infer_nullable: bool = MISSING
    max_categories: int = spec(ge=1)
    new_categories: str = spec(choices=("fail", "allow"))
    max_missing_fraction: float = spec(ge=0, le=1)
    max_duplicate_fraction: float = spec(ge=0, le=1)
    min_class_fraction: float = spec(ge=0, le=1)
    min_classes: int = spec(ge=1)
    numeric_text_fraction: float = spec(ge=0, le=1)
    summary_items: int = spec(ge=1)


@dataclass
class SyntheticConfig(Checked):
    KEY = "data.synthetic"
    task: str = spec(choices=("classification", "regression"))
    rows: int = spec(ge=20)
    columns: int = spec(ge=1)
    informative: int = spec(ge=1)
    classes: int = spec(ge=2)
    noise: float = spec(ge=0)
    seed: int = MISSING


@dataclass
class DataConfig(Checked):
    KEY = "data"
    validation: ValidationConfig = MISSING
    source: str = MISSING
    target: str = MISSING
    task: str = spec(choices=("auto", "classification", "regression"))
    name: str = MISSING
    max_classes: int = spec(ge=2)
    min_rows: int = spec(ge=1)
    holdout_fraction: float = spec(ge=0, lt=1)
    schema: Optional[str] = MISSING
    # only data=synthetic has it
    synthetic: Optional[SyntheticConfig] = None


# -- preprocess, train ------------------------------------------------------------------------
@dataclass
class OutliersConfig(Checked):
    KEY = "preprocess.outliers"
    method: str = spec(choices=("iqr", "robust_z"))
    iqr_k: float = spec(gt=0)
    z_threshold: float = spec(gt=0)
    action: str = spec(choices=("keep", "clip", "drop"))


@dataclass
class ReferenceConfig(Checked):
    KEY = "preprocess.drift"
    bins: int = spec(ge=2)
    reference_rows: int = spec(ge=1)


@dataclass
class PreprocessConfig(Checked):
    KEY = "preprocess"
    validation_size: float = spec(ge=0, lt=1)
    test_size: float = spec(gt=0, lt=1)
    stratify: bool = MISSING
    numeric_impute: str = spec(choices=("mean", "median", "most_frequent", "constant"))
    categorical_impute: str = spec(choices=("most_frequent", "constant"))
    scale_numeric: bool = MISSING
    fit_worker_min_mb: Optional[float] = spec(ge=0)
    fit_worker_timeout_s: float = spec(gt=0)
    min_category_frequency: float = spec(ge=0, lt=1)
    outliers: OutliersConfig = MISSING
    drift: ReferenceConfig = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.validation_size + self.test_size >= 1:
            raise ConfigError(f"preprocess.validation_size + preprocess.test_size = "
                              f"{self.validation_size + self.test_size:g}; expected < 1 (the rest is the training split)")


@dataclass
class TrainConfig(Checked):
    KEY = "train"
    cv_folds: int = spec(ge=0)
    metric: Optional[str] = MISSING
    # rows of the training split kept as the logged model's input example
    input_example_rows: int = spec(ge=1)


# -- qa ---------------------------------------------------------------------------------------
@dataclass
class BaselineConfig(Checked):
    KEY = "qa.baseline"
    enabled: bool = MISSING
    alpha: float = spec(gt=0, lt=1)


@dataclass
class ChampionConfig(Checked):
    KEY = "qa.champion"
    enabled: bool = MISSING
    on_incompatible: str = spec(choices=("fail", "replace"))
    tolerance: float = spec(ge=0)
    metrics: Dict[str, List[str]] = MISSING
    plot_dpi: Optional[float] = spec(gt=0)


@dataclass
class OverfittingConfig(Checked):
    KEY = "qa.overfitting"
    max_train_test_gap: Optional[float] = spec(ge=0)
    max_train_validation_gap: Optional[float] = spec(ge=0)
    max_validation_test_gap: Optional[float] = spec(ge=0)
    max_cv_std: Optional[float] = spec(ge=0)


@dataclass
class InferenceConfig(Checked):
    KEY = "qa.inference"
    latency_rows: int = spec(ge=1)
    p95_budget_ms: float = spec(gt=0)


@dataclass
class DriftConfig(Checked):
    KEY = "qa.drift"
    enabled: bool = MISSING
    alpha: float = spec(gt=0, lt=1)
    max_psi: float = spec(ge=0)
    max_drifted_columns: int = spec(ge=0)


@dataclass
class QaConfig(Checked):
    KEY = "qa"
    primary_metric: Optional[str] = MISSING
    baseline: BaselineConfig = MISSING
    thresholds: Dict[str, Dict[str, Optional[float]]] = MISSING
    champion: ChampionConfig = MISSING
    overfitting: OverfittingConfig = MISSING
    min_class_recall: Optional[float] = spec(ge=0, le=1)
    inference: InferenceConfig = MISSING
    data_source: Optional[str] = MISSING
    drift: DriftConfig = MISSING
    plot_dpi: Optional[float] = spec(gt=0)
    allow_unvalidated: bool = MISSING


# -- registry, serve --------------------------------------------------------------------------
@dataclass
class RegistryConfig(Checked):
    KEY = "registry"
    model_name: str = MISSING
    champion_alias: str = MISSING
    challenger_alias: str = MISSING
    promotion: str = spec(choices=("better", "always", "never"))
    compare_metric: Optional[str] = MISSING
    allow_unvalidated: bool = MISSING
    # seconds a register (or an A/B promotion) waits for another one on this machine
    lock_timeout_s: float = spec(gt=0)


@dataclass
class RoutingConfig(Checked):
    KEY = "serve.routing"
    policy: str = spec(choices=("weighted", "thompson"))
    thompson_refresh_seconds: float = spec(gt=0)
    key_header: str = MISSING
    override_header: str = MISSING


@dataclass
class BatchingConfig(Checked):
    KEY = "serve.batching"
    enabled: bool = MISSING
    max_rows: int = spec(ge=1)
    max_wait_ms: float = spec(ge=0)
    adaptive: bool = MISSING


@dataclass
class LimitsConfig(Checked):
    KEY = "serve.limits"
    max_body_mb: float = spec(gt=0)
    body_timeout_s: float = spec(gt=0)
    request_timeout_s: float = spec(gt=0)
    max_connections: int = spec(ge=1)
    backlog: int = spec(ge=1)
    keep_alive_s: float = spec(gt=0)
    graceful_shutdown_s: float = spec(ge=0)


@dataclass
class AbConfig(Checked):
    KEY = "serve.ab"
    control: Optional[str] = MISSING
    min_samples: int = spec(ge=1)
    alpha: float = spec(gt=0, lt=1)
    method: str = spec(choices=("sequential", "fixed"))
    tau: Optional[float] = spec(gt=0)
    task: Optional[str] = spec(choices=("classification", "regression"))
    promote: bool = MISSING
    plot_dpi: float = spec(gt=0)
    latency_bins: int = spec(ge=1)


@dataclass
class ServeConfig(Checked):
    KEY = "serve"
    mode: str = spec(choices=("forever", "smoke", "report"))
    host: str = MISSING
    port: int = spec(ge=0, le=65535)
    workers: int = spec(ge=1)
    log_level: str = spec(choices=("critical", "error", "warning", "info", "debug", "trace"))
    variants: List[Any] = MISSING
    variants_file: Optional[str] = MISSING
    # load models no passing qa run vouches for (registry/provenance.py)
    allow_unvalidated: bool = MISSING
    # under a team: every member's <model>.<member>@champion as a variant named after the member
    team_variants: bool = MISSING
    experiment: str = MISSING
    routing: RoutingConfig = MISSING
    batching: BatchingConfig = MISSING
    limits: LimitsConfig = MISSING
    refresh_seconds: float = spec(ge=0)
    records: Optional[str] = MISSING
    records_flush_ms: float = spec(gt=0)
    ab: AbConfig = MISSING
    smoke_rows: int = spec(ge=1)
    startup_timeout: float = spec(gt=0)
    # seconds the smoke test waits for one answer
    smoke_request_timeout: float = spec(gt=0)


# -- main, monitor, storage -------------------------------------------------------------------
@dataclass
class MainConfig(Checked):
    KEY = "main"
    steps: Any = MISSING  # "all", "train,qa" or a list
    force: Any = MISSING  # true, false or a list of steps
    env_manager: Optional[str] = spec(choices=("local", "virtualenv", "uv", "conda"))
    warm_steps: bool = MISSING
    log: str = spec(choices=("quiet", "full"))
    step_lock_timeout_s: float = spec(gt=0)
    step_grace_s: float = spec(gt=0)
    backend: str = spec(choices=("local", "kubernetes"))
    backend_config: str = MISSING


@dataclass
class MonitorConfig(Checked):
    KEY = "monitor"
    system_metrics: bool = MISSING
    sampling_interval: float = spec(gt=0)
    max_rss_mb: Optional[float] = spec(gt=0)
    max_step_seconds: Optional[float] = spec(gt=0)
    action: str = spec(choices=("warn", "fail"))
    poll_seconds: float = spec(gt=0)


@dataclass
class HttpConfig(Checked):
    KEY = "storage.http"
    timeout: int = spec(ge=1)
    max_retries: int = spec(ge=0)
    backoff_factor: int = spec(ge=0)


@dataclass
class S3ClientConfig(Checked):
    KEY = "storage.s3_client"
    connect_timeout: float = spec(gt=0)
    read_timeout: float = spec(gt=0)
    max_attempts: int = spec(ge=1)


@dataclass
class ProbeConfig(Checked):
    KEY = "storage.probe"
    connect_timeout: float = spec(gt=0)
    read_timeout: float = spec(gt=0)


@dataclass
class RetryConfig(Checked):
    KEY = "storage.retry"
    attempts: int = spec(ge=1)
    initial_wait: float = spec(ge=0)
    max_wait: float = spec(ge=0)
    jitter: float = spec(ge=0)


@dataclass
class StorageConfig(Checked):
    KEY = "storage"
    kind: str = spec(choices=("local", "s3"))
    min_free_mb: float = spec(ge=0)
    http: HttpConfig = MISSING
    s3_client: S3ClientConfig = MISSING
    probe: ProbeConfig = MISSING
    retry: RetryConfig = MISSING
    # storage=s3 only (conf/storage/s3.yaml)
    bucket: Optional[str] = None
    prefix: Optional[str] = None
    endpoint_url: Optional[str] = None
    experiment: Optional[str] = None
    fallback: Optional[bool] = None
    fallback_dir: Optional[str] = None


@dataclass
class TeamServerConfig(Checked):
    KEY = "team.server"
    host: str = MISSING
    port: int = spec(ge=1, le=65535)
    workers: int = spec(ge=1)
    backend_store_uri: Optional[str] = MISSING
    artifacts_destination: Optional[str] = MISSING
    state_dir: str = MISSING
    start_timeout_s: float = spec(gt=0)


@dataclass
class TeamReportConfig(Checked):
    KEY = "team.report"
    days: float = spec(gt=0)
    alpha: float = spec(gt=0, lt=1)
    bootstrap: int = spec(ge=100)
    plot_dpi: float = spec(gt=0)


@dataclass
class TeamConfig(Checked):
    KEY = "team"
    name: Optional[str] = MISSING
    member: Optional[str] = MISSING
    lead: Optional[str] = MISSING
    members: List[Any] = MISSING  # {name, role}
    models: List[str] = MISSING
    shared_model: str = MISSING
    holdout_fraction: float = spec(ge=0, lt=1)
    report: TeamReportConfig = MISSING
    server: TeamServerConfig = MISSING


@dataclass
class Config(Checked):
    KEY = "config"
    data: DataConfig = MISSING
    model: Dict[str, Any] = MISSING  # `_target_` + the estimator's constructor arguments
    preprocess: PreprocessConfig = MISSING
    train: TrainConfig = MISSING
    qa: QaConfig = MISSING
    registry: RegistryConfig = MISSING
    serve: ServeConfig = MISSING
    main: MainConfig = MISSING
    monitor: MonitorConfig = MISSING
    storage: StorageConfig = MISSING
    team: TeamConfig = MISSING
    seed: int = MISSING
    serialization: str = spec(choices=("cloudpickle", "skops"))
    skops_trusted_types: List[str] = MISSING


def unknown_keys(data: Any, kind: Any = Config, prefix: str = "") -> list[str]:
    """Keys of a composed config (plain dicts) that the schema has no field for: Hydra's
    `+key=value` adds them past its struct check. Dict and Any fields take any key below them."""
    if not (dataclasses.is_dataclass(kind) and isinstance(data, dict)):
        return []
    fields = {f.name: f.type for f in dataclasses.fields(kind)}
    found = []
    for key, value in data.items():
        if key not in fields:
            found.append(f"{prefix}{key}")
        else:
            found += unknown_keys(value, _dataclass_of(fields[key]), f"{prefix}{key}.")
    return found


def _dataclass_of(annotation: Any) -> Any:
    """The dataclass a field annotation names (`"Optional[SyntheticConfig]"` -> SyntheticConfig), else None."""
    name = str(annotation).removeprefix("Optional[").removesuffix("]")
    found = globals().get(name)
    return found if dataclasses.is_dataclass(found) else None


SCHEMA_NAME = "mlpipe_schema"


def register() -> None:
    """Put the schema in Hydra's ConfigStore, where conf/config.yaml's defaults list finds it."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=Config)
