"""The registry's and the server's groups."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional

from omegaconf import MISSING

from mlpipe.errors import ConfigError
from mlpipe.schema.checked import Checked, spec

RUNTIMES = ("onnx", "sklearn")  # `runtime` and `serve.runtime` (docs/serving.md#runtimes)


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
    allow_override: bool = MISSING


@dataclass
class BatchingConfig(Checked):
    KEY = "serve.batching"
    enabled: bool = MISSING
    max_rows: int = spec(ge=1)
    max_wait_ms: float = spec(ge=0)
    adaptive: bool = MISSING
    adaptive_smoothing: float = spec(gt=0, le=1)
    adaptive_threshold: float = spec(gt=0)


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
    max_records_mb: float = spec(gt=0)


@dataclass
class DefaultTauConfig(Checked):
    KEY = "serve.ab.default_tau"
    classification: float = spec(gt=0)
    regression_sd: float = spec(gt=0)
    fallback: float = spec(gt=0)


@dataclass
class AbConfig(Checked):
    KEY = "serve.ab"
    control: Optional[str] = MISSING
    min_samples: int = spec(ge=1)
    alpha: float = spec(gt=0, lt=1)
    method: str = spec(choices=("sequential", "fixed"))
    tau: Optional[float] = spec(gt=0)
    default_tau: DefaultTauConfig = MISSING
    burn_in: int = spec(ge=2)
    repeats: str = spec(choices=("once", "each"))
    task: Optional[str] = spec(choices=("classification", "regression"))
    promote: bool = MISSING
    plot_dpi: float = spec(gt=0)
    latency_bins: int = spec(ge=1)


@dataclass
class OnnxRuntimeConfig(Checked):
    KEY = "serve.onnx"
    intra_op_threads: int = spec(ge=0)
    inter_op_threads: int = spec(ge=0)


@dataclass
class FeedbackConfig(Checked):
    KEY = "serve.feedback"
    secret_file: str = MISSING
    max_body_kb: float = spec(gt=0)
    max_label_chars: int = spec(ge=1)


@dataclass
class CanaryConfig(Checked):
    KEY = "serve.canary"
    alias: Optional[str] = MISSING
    weight: float = spec(gt=0, lt=1)


@dataclass
class InputsConfig(Checked):
    KEY = "serve.inputs"
    sample_rate: float = spec(ge=0, le=1)
    columns: Optional[List[str]] = MISSING  # null: every column but `private`
    private: List[str] = MISSING
    max_chars: int = spec(ge=1)


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
    records_timeout_s: float = spec(gt=0)
    feedback: FeedbackConfig = MISSING
    inputs: InputsConfig = MISSING
    canary: CanaryConfig = MISSING
    ab: AbConfig = MISSING
    # ${runtime} unless set on its own: its error names both keys (__post_init__)
    runtime: str = spec(choices=RUNTIMES)
    onnx: OnnxRuntimeConfig = MISSING
    smoke_rows: int = spec(ge=1)
    startup_timeout: float = spec(gt=0)
    # seconds the smoke test waits for one answer
    smoke_request_timeout: float = spec(gt=0)

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ConfigError(f"serve.runtime={self.runtime!r} (the top-level runtime, unless serve.runtime is set on "
                              f"its own); expected one of {', '.join(RUNTIMES)}")
        super().__post_init__()
