"""Column typing, the imputing/encoding transformer, and the seeded train/validation/test split."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mlpipe.errors import DataError


@dataclass(frozen=True)
class FeatureSpec:
    """What preprocess decided about the columns; travels to train as JSON."""

    target: str
    task: str
    numeric: list[str]
    categorical: list[str]
    dropped: list[str]
    classes: list

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureSpec":
        return cls(**data)

    @property
    def columns(self) -> list[str]:
        return self.numeric + self.categorical


def feature_spec(frame: pd.DataFrame, target: str, task: str) -> FeatureSpec:
    """Numeric columns stay numeric, strings/booleans/categories are encoded; empty columns drop."""
    features = frame.drop(columns=[target])
    dropped = [c for c in features.columns if features[c].isna().all()]
    features = features.drop(columns=dropped)
    numeric = [c for c in features.columns if pd.api.types.is_numeric_dtype(features[c])
               and not pd.api.types.is_bool_dtype(features[c])]
    categorical = [c for c in features.columns if c not in numeric]
    if not numeric and not categorical:
        raise DataError(f"no usable feature columns besides target {target!r} (all empty: {dropped})")
    classes = sorted(frame[target].dropna().unique().tolist()) if task == "classification" else []
    return FeatureSpec(target, task, numeric, categorical, dropped, classes)


def normalise_types(frame: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """Cast categorical columns to strings (missing stays missing) so the model's schema is stable."""
    out = frame.copy(deep=False)  # copy-on-write (pandas 3): changing `out` never changes `frame`
    for col in spec.categorical:
        present = out[col].notna()
        out[col] = out[col].astype("object").where(present, np.nan)
        out.loc[present, col] = out.loc[present, col].map(str)
    for col in spec.numeric:
        if out[col].dtype != "float64":
            out[col] = out[col].astype("float64")
    return out


# SimpleImputer's own "median" takes np.ma.median over the whole numeric block: about 4 x the
# block in memory at once and 6 s for 650k x 20. The same statistic through a callable strategy
# (scikit-learn calls it on each column's non-missing values) holds one column: measured
# +25 MB and 0.6 s against +337 MB and 6 s, identical statistics_. Transform is unchanged.
COLUMNWISE_STRATEGIES = {"median": np.median}


def build_preprocessor(spec: FeatureSpec, cfg: dict) -> ColumnTransformer:
    strategy = COLUMNWISE_STRATEGIES.get(cfg["numeric_impute"], cfg["numeric_impute"])
    numeric_steps = [("impute", SimpleImputer(strategy=strategy))]
    if cfg["scale_numeric"]:
        numeric_steps.append(("scale", StandardScaler()))
    categorical = Pipeline(
        [
            ("impute", SimpleImputer(strategy=cfg["categorical_impute"])),
            (
                "encode",
                OneHotEncoder(
                    handle_unknown="infrequent_if_exist",
                    min_frequency=cfg["min_category_frequency"] or None,
                    sparse_output=False,
                ),
            ),
        ]
    )
    return ColumnTransformer(
        [("numeric", Pipeline(numeric_steps), spec.numeric), ("categorical", categorical, spec.categorical)],
        remainder="drop",
        verbose_feature_names_out=False,
    )


def fit_preprocessor(spec: FeatureSpec, cfg: dict, frame: pd.DataFrame) -> ColumnTransformer:
    """`build_preprocessor` fitted on the rows of `frame` (the training split)."""
    return build_preprocessor(spec, cfg).fit(frame[spec.columns], frame[spec.target])


def split(frame: pd.DataFrame, spec: FeatureSpec, cfg: dict, seed: int, *,
          consume: bool = False) -> dict[str, pd.DataFrame]:
    """Seeded train/validation/test split of labelled rows, stratified for classification.

    Each part is indexed by its rows' positions among the labelled rows. With consume=True the
    columns move out of `frame` into the parts one at a time (`frame` is left without columns),
    so the rows are held about once while splitting instead of twice."""
    known = frame[spec.target].notna()
    rows = None if known.all() else np.flatnonzero(known.to_numpy())
    labels = frame[spec.target] if rows is None else frame[spec.target].iloc[rows]
    test_size, val_size = float(cfg["test_size"]), float(cfg["validation_size"])
    if not (0 < test_size < 1 and 0 < val_size < 1 and test_size + val_size < 1):
        raise DataError(
            f"preprocess.test_size={test_size} and validation_size={val_size} must be in (0, 1) "
            "and leave rows for training"
        )
    stratify = spec.task == "classification" and cfg["stratify"]
    if stratify:
        counts = labels.value_counts()
        if counts.min() < 3:
            smallest = counts.idxmin()
            smallest = smallest.item() if hasattr(smallest, "item") else smallest
            raise DataError(
                f"class {smallest!r} of {spec.target!r} has {counts.min()} rows; "
                "a stratified train/validation/test split needs at least 3 per class"
            )
    # Split row positions, then copy each column's part once (splitting frames copies the rest twice).
    try:
        rest, test = train_test_split(
            np.arange(len(labels)), test_size=test_size, random_state=seed, stratify=labels if stratify else None
        )
        rel_val = val_size / (1 - test_size)
        train, validation = train_test_split(
            rest, test_size=rel_val, random_state=seed,
            stratify=labels.iloc[rest] if stratify else None,
        )
    except ValueError as exc:
        raise DataError(f"cannot split {len(labels)} rows: {exc}") from exc
    positions = {"train": train, "validation": validation, "test": test}
    return _take_rows(frame if consume else frame.copy(deep=False), positions, rows)


def _take_rows(frame: pd.DataFrame, positions: dict[str, np.ndarray],
               rows: np.ndarray | None) -> dict[str, pd.DataFrame]:
    """The parts at `positions` (of `rows` of frame, or of all rows), moving frame's columns out."""
    parts = {name: pd.DataFrame(index=pd.Index(pos)) for name, pos in positions.items()}
    for col in list(frame.columns):
        column = frame.pop(col)
        for name, pos in positions.items():
            parts[name][col] = column.iloc[pos if rows is None else rows[pos]].set_axis(parts[name].index)
        del column  # the source column goes before the next one is copied
    return parts
