"""Outliers in numeric columns: bounds from the training split, counts per column, keep/clip/drop.

Pure functions; preprocess logs the report and applies the action to the training split only.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from mlpipe.errors import ConfigError

METHODS = ("iqr", "robust_z")
ACTIONS = ("keep", "clip", "drop")
# 1.4826 * MAD estimates the standard deviation of normal data (a constant, not a threshold).
MAD_TO_SD = 1.4826


def bounds(frame: pd.DataFrame, columns: list[str], cfg: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """(low, high) per numeric column; columns with no spread get no bounds (nothing is an outlier)."""
    method = cfg["method"]
    if method not in METHODS:
        raise ConfigError(f"preprocess.outliers.method={method!r}; expected one of {', '.join(METHODS)}")
    found = {}
    for name in columns:
        values = frame[name].dropna().astype("float64")
        if values.empty:
            continue
        if method == "iqr":
            q1, q3 = values.quantile(0.25), values.quantile(0.75)
            spread = q3 - q1
            low, high = q1 - cfg["iqr_k"] * spread, q3 + cfg["iqr_k"] * spread
        else:
            median = values.median()
            spread = MAD_TO_SD * (values - median).abs().median()
            low, high = median - cfg["z_threshold"] * spread, median + cfg["z_threshold"] * spread
        if spread > 0:
            found[name] = (float(low), float(high))
    return found


def outlier_mask(frame: pd.DataFrame, limits: dict[str, tuple[float, float]]) -> pd.DataFrame:
    """True where a value lies outside its column's bounds (missing values never are)."""
    return pd.DataFrame({name: (frame[name] < low) | (frame[name] > high) for name, (low, high) in limits.items()},
                        index=frame.index)


def report(frame: pd.DataFrame, limits: dict[str, tuple[float, float]], cfg: dict[str, Any]) -> dict[str, Any]:
    """Counts per column and the bounds used: the `outliers.json` artifact."""
    mask = outlier_mask(frame, limits)
    return {
        "method": cfg["method"],
        "action": cfg["action"],
        "rows": len(frame),
        "rows_with_outliers": int(mask.any(axis=1).sum()) if limits else 0,
        "columns": {name: {"count": int(mask[name].sum()), "low": low, "high": high}
                    for name, (low, high) in limits.items()},
    }


def apply(frame: pd.DataFrame, limits: dict[str, tuple[float, float]], action: str) -> pd.DataFrame:
    """keep: unchanged; clip: values moved to the bounds; drop: rows with any outlier removed."""
    if action not in ACTIONS:
        raise ConfigError(f"preprocess.outliers.action={action!r}; expected one of {', '.join(ACTIONS)}")
    if action == "keep" or not limits:
        return frame
    if action == "drop":
        return frame[~outlier_mask(frame, limits).any(axis=1)]
    out = frame.copy()
    for name, (low, high) in limits.items():
        out[name] = out[name].clip(low, high)
    return out
