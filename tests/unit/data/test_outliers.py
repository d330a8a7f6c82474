"""mlpipe/data/outliers.py: bounds (IQR, robust z), counts and the keep/clip/drop actions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlpipe.config import compose, to_container
from mlpipe.data import outliers
from mlpipe.errors import ConfigError


@pytest.fixture(scope="module")
def ocfg() -> dict:
    """The shipped defaults (conf/preprocess/default.yaml's outliers)."""
    return to_container(compose([]))["preprocess"]["outliers"]


@pytest.fixture
def spiky() -> pd.DataFrame:
    values = list(np.linspace(10, 20, 20)) + [100.0, -50.0]
    return pd.DataFrame({"v": values, "flat": [1.0] * 22, "w": list(range(22))})


def test_iqr_bounds_and_counts(spiky, ocfg):
    limits = outliers.bounds(spiky, ["v", "flat", "w"], ocfg)
    assert "flat" not in limits  # no spread, no outliers
    report = outliers.report(spiky, limits, ocfg)
    assert report["columns"]["v"]["count"] == 2 and report["columns"]["w"]["count"] == 0
    assert report["rows_with_outliers"] == 2 and report["method"] == "iqr"


def test_robust_z_bounds(spiky, ocfg):
    limits = outliers.bounds(spiky, ["v"], {**ocfg, "method": "robust_z"})
    median = spiky["v"].median()
    mad = (spiky["v"] - median).abs().median()
    assert limits["v"] == pytest.approx((median - 3.5 * 1.4826 * mad, median + 3.5 * 1.4826 * mad))
    assert outliers.outlier_mask(spiky, limits)["v"].sum() == 2


def test_actions(spiky, ocfg):
    limits = outliers.bounds(spiky, ["v"], ocfg)
    low, high = limits["v"]
    assert outliers.apply(spiky, limits, "keep") is spiky
    clipped = outliers.apply(spiky, limits, "clip")
    assert clipped["v"].max() == high and clipped["v"].min() == low and len(clipped) == 22
    assert spiky["v"].max() == 100.0  # the input is not changed
    dropped = outliers.apply(spiky, limits, "drop")
    assert len(dropped) == 20 and dropped["v"].between(low, high).all()


def test_missing_values_are_not_outliers(ocfg):
    frame = pd.DataFrame({"v": [1.0, 2.0, 3.0, 4.0, np.nan, 100.0]})
    limits = outliers.bounds(frame, ["v"], ocfg)
    assert len(outliers.apply(frame, limits, "drop")) == 5


def test_bad_method_or_action(spiky, ocfg):
    with pytest.raises(ConfigError, match="method"):
        outliers.bounds(spiky, ["v"], {**ocfg, "method": "zscore"})
    with pytest.raises(ConfigError, match="action"):
        outliers.apply(spiky, {"v": (0.0, 1.0)}, "remove")
