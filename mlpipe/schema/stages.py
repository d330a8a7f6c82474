"""The pipeline stages' groups: data, preprocess, train and qa."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

from omegaconf import MISSING

from mlpipe.errors import ConfigError
from mlpipe.schema.checked import Checked, spec


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
    append: List[str] = MISSING  # files appended to source's rows (the loop's snapshot)
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
class OnnxExportConfig(Checked):
    KEY = "train.onnx"
    opset: int = spec(ge=13)
    ml_opset: int = spec(ge=3)


@dataclass
class TrainConfig(Checked):
    KEY = "train"
    cv_folds: int = spec(ge=0)
    metric: Optional[str] = MISSING
    # rows of the training split kept as the logged model's input example
    input_example_rows: int = spec(ge=1)
    onnx: OnnxExportConfig = MISSING


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
    cpu_p95_budget_ms: float = spec(gt=0)
    p95_budget_ms: Optional[float] = spec(gt=0)


@dataclass
class DriftConfig(Checked):
    KEY = "qa.drift"
    enabled: bool = MISSING
    alpha: float = spec(gt=0, lt=1)
    max_psi: float = spec(ge=0)
    max_drifted_columns: int = spec(ge=0)


@dataclass
class OnnxParityConfig(Checked):
    KEY = "qa.onnx"
    max_probability_diff: float = spec(ge=0)
    max_relative_diff: float = spec(ge=0)


@dataclass
class ImportanceConfig(Checked):
    KEY = "qa.importance"
    enabled: bool = MISSING
    rows: int = spec(ge=2)
    repeats: int = spec(ge=1)


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
    importance: ImportanceConfig = MISSING
    data_source: Optional[str] = MISSING
    drift: DriftConfig = MISSING
    onnx: OnnxParityConfig = MISSING
    plot_dpi: Optional[float] = spec(gt=0)
    allow_unvalidated: bool = MISSING
