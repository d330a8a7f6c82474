"""The closed loop's keys (conf/loop/default.yaml, docs/loop.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from omegaconf import MISSING

from mlpipe.schema.checked import Checked, spec

TRIGGERS = ("performance", "inputs")


@dataclass
class LoopPerformanceConfig(Checked):
    KEY = "loop.performance"
    baseline_rows: int = spec(ge=1)
    min_drop: float = spec(gt=0, lt=1)
    false_alarm_rows: float = spec(gt=1)


@dataclass
class LoopInputsConfig(Checked):
    KEY = "loop.inputs"
    alpha: float = spec(gt=0, lt=1)
    max_psi: float = spec(ge=0)
    min_rows: int = spec(ge=2)
    max_drifted_columns: int = spec(ge=0)


@dataclass
class LoopRetrainConfig(Checked):
    KEY = "loop.retrain"
    enabled: bool = MISSING
    original: bool = MISSING
    rows: int = spec(ge=1)
    min_rows: int = spec(ge=1)
    snapshot_dir: str = MISSING
    append: List[str] = MISSING
    overrides: Optional[str] = MISSING
    timeout_s: float = spec(gt=0)


@dataclass
class LoopImportanceConfig(Checked):
    KEY = "loop.importance"
    enabled: bool = MISSING
    rows: int = spec(ge=2)
    repeats: int = spec(ge=1)
    min_rows: int = spec(ge=2)


@dataclass
class LoopCanaryConfig(Checked):
    KEY = "loop.canary"
    max_rows: int = spec(ge=1)


@dataclass
class LoopConfig(Checked):
    KEY = "loop"
    model: str = MISSING
    alias: str = MISSING
    max_requests: int = spec(ge=1)
    performance: LoopPerformanceConfig = MISSING
    inputs: LoopInputsConfig = MISSING
    trigger: List[str] = MISSING
    retrain: LoopRetrainConfig = MISSING
    canary: LoopCanaryConfig = MISSING
    importance: LoopImportanceConfig = MISSING
    origin: Optional[str] = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [t for t in self.trigger if t not in TRIGGERS]
        if unknown:
            from mlpipe.errors import ConfigError

            raise ConfigError(f"loop.trigger={list(self.trigger)}: {', '.join(unknown)} is not one of "
                              f"{', '.join(TRIGGERS)}")
