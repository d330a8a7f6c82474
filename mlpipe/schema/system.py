"""How the pipeline runs: the driver (main), resource limits (monitor), storage, a team."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from mlpipe.schema.checked import Checked, spec


# -- trust ----------------------------------------------------------------------------------------
@dataclass
class TrustConfig(Checked):
    KEY = "trust"
    signing_key: str = MISSING  # the gate's private key file (qa signs its verdicts with it)
    signers: List[str] = MISSING  # public keys whose verdicts count; []: signing_key's own
    revoked: List[str] = MISSING  # key ids or public keys whose verdicts never count


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
    stop_grace_s: float = spec(gt=0)
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
    stop_timeout_s: float = spec(gt=0)
    probe_timeout_s: float = spec(gt=0)


@dataclass
class TeamDemoConfig(Checked):
    KEY = "team.demo"
    data: str = MISSING  # the overrides every member's pipeline runs with
    members: Dict[str, str] = MISSING  # member -> the model overrides they train with
    experiment: str = MISSING
    requests: int = spec(ge=1)
    rows_per_request: int = spec(ge=1)
    feedback_delay_s: float = spec(ge=0)
    rate: float = spec(ge=0)  # requests a second (0: back to back)
    serve_start_timeout_s: float = spec(gt=0)
    serve_stop_timeout_s: float = spec(gt=0)


@dataclass
class TeamReportConfig(Checked):
    KEY = "team.report"
    days: float = spec(gt=0)
    alpha: float = spec(gt=0, lt=1)
    bootstrap: int = spec(ge=100)
    plot_dpi: float = spec(gt=0)


@dataclass
class TeamGateConfig(Checked):
    KEY = "team.gate"
    key: str = MISSING  # the team gate's private key file (held by the lead or CI)
    public_key: Optional[str] = MISSING  # ed25519:...; null: key's .pub file
    experiment: Optional[str] = MISSING  # where gate runs are (the lead's alone to write)


@dataclass
class TeamReaderConfig(Checked):
    KEY = "team.reader"
    user: Optional[str] = MISSING  # the READ-only login of the team's serving and report
    experiment: Optional[str] = MISSING  # the one experiment it writes (its serve and report runs)


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
    gate: TeamGateConfig = MISSING
    reader: TeamReaderConfig = MISSING
    report: TeamReportConfig = MISSING
    server: TeamServerConfig = MISSING
    # only team=demo has it (make demo)
    demo: Optional[TeamDemoConfig] = None
