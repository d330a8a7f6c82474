"""The types and ranges of every config group (Hydra structured configs in a ConfigStore).

Values live in `conf/` only: no field here has a default (an absent key is `???`, a missing
value), so there is one copy of every number. Hydra checks types and unknown keys when it
composes; `check()` then builds these dataclasses, whose `__post_init__` checks ranges and
choices, so a bad value is a ConfigError naming its key before any step runs. The groups live
in `stages` (data, preprocess, train, qa), `serving` (registry, serve) and `system` (main,
monitor, storage, team) and `loop` (the closed loop); the root `Config` is here.

May import: `mlpipe.errors`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List

from omegaconf import MISSING

from mlpipe.schema import serving, stages, system
from mlpipe.schema.checked import Checked, spec
from mlpipe.schema.loop import LoopConfig
from mlpipe.schema.serving import RegistryConfig, ServeConfig
from mlpipe.schema.stages import DataConfig, PreprocessConfig, QaConfig, TrainConfig
from mlpipe.schema.system import MainConfig, MonitorConfig, StorageConfig, TeamConfig, TrustConfig


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
    loop: LoopConfig = MISSING
    storage: StorageConfig = MISSING
    team: TeamConfig = MISSING
    trust: TrustConfig = MISSING
    seed: int = MISSING
    serialization: str = spec(choices=("cloudpickle", "skops"))
    runtime: str = spec(choices=serving.RUNTIMES)
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


GROUPS = {name: kind for module in (stages, serving, system) for name, kind in vars(module).items()
          if dataclasses.is_dataclass(kind)}


def _dataclass_of(annotation: Any) -> Any:
    """The dataclass a field annotation names (`"Optional[SyntheticConfig]"` -> SyntheticConfig), else None."""
    name = str(annotation).removeprefix("Optional[").removesuffix("]")
    return GROUPS.get(name)


SCHEMA_NAME = "mlpipe_schema"


def register() -> None:
    """Put the schema in Hydra's ConfigStore, where conf/config.yaml's defaults list finds it."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=Config)
