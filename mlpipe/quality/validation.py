"""Data validation: infer a pandera schema from a first ingest, check later data against it.

Pure functions over DataFrames and config dicts (no MLflow): the ingest step stores and finds
schemas. Every failure is one row of a table (column, check, failure_case, index), so all of
them are reported at once, never only the first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from mlpipe.data.rows import duplicated_rows
from mlpipe.errors import ConfigError, DataError, one_line

FAILURE_COLUMNS = ["column", "check", "failure_case", "index"]
ADDED = "column added (not in the stored schema)"
REMOVED = "column removed (in the stored schema, missing from the data)"


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def infer_schema(frame: pd.DataFrame, cfg: dict[str, Any]) -> pa.DataFrameSchema:
    """The schema later data must match: columns, numeric dtype, nullability, ranges, categories."""
    columns = {}
    for name in frame.columns:
        series = frame[name]
        nullable = bool(series.isna().any()) or not cfg["infer_nullable"]
        checks = []
        if _is_numeric(series):
            present = series.dropna()
            if len(present):
                low, high = float(present.min()), float(present.max())
                margin = (high - low) * float(cfg["range_tolerance"])
                checks.append(pa.Check.in_range(low - margin, high + margin))
            columns[str(name)] = pa.Column("float64", checks=checks, nullable=nullable, coerce=True)
            continue
        values = series.dropna().map(str).unique().tolist()
        if 0 < len(values) <= cfg["max_categories"]:
            checks.append(pa.Check.isin(sorted(values)))
        columns[str(name)] = pa.Column(None, checks=checks, nullable=nullable)
    return pa.DataFrameSchema(columns, strict=True, ordered=False)


def schema_to_yaml(schema: pa.DataFrameSchema) -> str:
    return schema.to_yaml()


def schema_from_yaml(text: str, label: str) -> pa.DataFrameSchema:
    try:
        return pa.DataFrameSchema.from_yaml(text)
    except Exception as exc:
        raise DataError(f"{label}: not a pandera YAML schema: {one_line(exc)}") from exc


def _without_category_checks(schema: pa.DataFrameSchema) -> pa.DataFrameSchema:
    return schema.update_columns(
        {name: {"checks": [c for c in column.checks if c.name != "isin"]} for name, column in schema.columns.items()}
    )


def _as_text(frame: pd.DataFrame, schema: pa.DataFrameSchema) -> pd.DataFrame:
    """Category checks compare text: an int-coded category read as 3 matches the stored '3'."""
    out = frame.copy()
    for name, column in schema.columns.items():
        if name in out.columns and any(c.name == "isin" for c in column.checks):
            present = out[name].notna()
            out[name] = out[name].astype("object").where(present, None)
            out.loc[present, name] = out.loc[present, name].map(str)
    return out


def schema_failures(frame: pd.DataFrame, schema: pa.DataFrameSchema, cfg: dict[str, Any]) -> pd.DataFrame:
    """Every way `frame` breaks `schema` (pandera lazy validation), one row per failure case."""
    if cfg["new_categories"] == "allow":
        schema = _without_category_checks(schema)
    elif cfg["new_categories"] != "fail":
        raise ConfigError(f"data.validation.new_categories={cfg['new_categories']!r}; expected fail or allow")
    try:
        schema.validate(_as_text(frame, schema), lazy=True)
    except SchemaErrors as exc:
        cases = exc.failure_cases
    else:
        return _table([])
    rows = []
    for case in cases.to_dict("records"):
        check = str(case["check"])
        column = case["column"]
        if check == "column_in_schema":
            column, check = case["failure_case"], ADDED
        elif check == "column_in_dataframe":
            column, check = case["failure_case"], REMOVED
        elif check.startswith("dtype(") and any(
            str(r["check"]).startswith("coerce_dtype(") and r["column"] == column for r in cases.to_dict("records")
        ):
            continue  # the coercion failure already names the value
        elif check.startswith("coerce_dtype("):
            check = f"numeric ({check})"
        if "TypeError(" in str(case["failure_case"]):
            continue  # a range check on a column that already failed its dtype
        rows.append({"column": column, "check": check, "failure_case": case["failure_case"], "index": case["index"]})
    return _table(rows)


def frame_failures(frame: pd.DataFrame, target: str, task: str, cfg: dict[str, Any],
                   duplicated: pd.Series | None = None) -> pd.DataFrame:
    """The checks that hold for every ingest whatever the schema: stray text in numeric columns,
    missing values, duplicate rows, class balance. Thresholds come from `cfg`; `duplicated` is
    `duplicated_rows(frame)` when the caller has it already (one row hash per ingest)."""
    rows: list[dict] = []
    rows += numeric_text_failures(frame, cfg["numeric_text_fraction"])
    n = len(frame)
    for name, missing in frame.isna().mean().items():
        if missing > cfg["max_missing_fraction"]:
            rows.append({"column": name, "check": f"max_missing_fraction({cfg['max_missing_fraction']})",
                         "failure_case": f"{missing:.0%} missing", "index": None})
    duplicated = duplicated_rows(frame) if duplicated is None else duplicated
    if n and duplicated.mean() > cfg["max_duplicate_fraction"]:
        rows.append({"column": "*", "check": f"max_duplicate_fraction({cfg['max_duplicate_fraction']})",
                     "failure_case": f"{int(duplicated.sum())} of {n} rows duplicated ({duplicated.mean():.1%})",
                     "index": int(np.flatnonzero(duplicated.to_numpy())[0])})
    if task == "classification" and target in frame.columns:
        rows += class_balance_failures(frame[target], target, cfg)
    return _table(rows)


def numeric_text_failures(frame: pd.DataFrame, min_numeric_fraction: float) -> list[dict]:
    """Text columns that are numbers in most rows: one failure per text value, naming it."""
    rows = []
    for name in frame.columns:
        series = frame[name]
        if _is_numeric(series) or pd.api.types.is_bool_dtype(series):
            continue
        present = series.dropna().map(str)
        if present.empty:
            continue
        parsed = pd.to_numeric(present.str.strip(), errors="coerce")
        if parsed.notna().all() or parsed.notna().mean() < min_numeric_fraction:
            continue
        for index, value in present[parsed.isna()].items():
            rows.append({"column": name, "check": "numeric (text in a numeric column)",
                         "failure_case": value, "index": index})
    return rows


def class_balance_failures(labels: pd.Series, target: str, cfg: dict[str, Any]) -> list[dict]:
    counts = labels.dropna().value_counts()
    if len(counts) < cfg["min_classes"]:
        found = [v.item() if hasattr(v, "item") else v for v in counts.index]
        return [{"column": target, "check": f"min_classes({cfg['min_classes']})",
                 "failure_case": f"{len(counts)} class(es): {found}", "index": None}]
    fraction = counts.min() / counts.sum()
    if fraction < cfg["min_class_fraction"]:
        rarest = counts.idxmin()
        rarest = rarest.item() if hasattr(rarest, "item") else rarest
        return [{"column": target, "check": f"min_class_fraction({cfg['min_class_fraction']})",
                 "failure_case": f"class {rarest!r} is {fraction:.1%} of rows", "index": None}]
    return []


def all_failures(frame: pd.DataFrame, schema: pa.DataFrameSchema | None, target: str, task: str,
                 cfg: dict[str, Any], duplicated: pd.Series | None = None) -> pd.DataFrame:
    """Schema failures (when there is a reference schema) and the every-ingest checks, each case once."""
    parts = [schema_failures(frame, schema, cfg)] if schema is not None else []
    parts.append(frame_failures(frame, target, task, cfg, duplicated))
    parts = [p for p in parts if not p.empty]
    if not parts:
        return _table([])
    # Text in a numeric column fails both the schema's dtype and the text check: report it once.
    combined = pd.concat(parts, ignore_index=True)
    key = combined[["column", "failure_case", "index"]].astype(str)
    return combined[~key.duplicated()].reset_index(drop=True)


def _table(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=FAILURE_COLUMNS)


# The override that changes each check, by the start of its name in failures.csv; a check of the
# stored schema not listed here changes with a schema of your own (data.schema).
RELAX = {
    "max_missing_fraction(": "data.validation.max_missing_fraction=<fraction>",
    "max_duplicate_fraction(": "data.validation.max_duplicate_fraction=<fraction>",
    "min_classes(": "data.target=<label column>",
    "min_class_fraction(": "data.validation.min_class_fraction=<fraction>",
    "numeric (text in a numeric column)": "data.validation.numeric_text_fraction=<fraction>",
    "isin(": "data.validation.new_categories=allow",
}
SCHEMA_RELAX = "data.schema=<a pandera YAML schema>"


# Checks whose remedy is the data, not a looser limit: the key names where to point instead.
FIX_THE_DATA = {"min_classes(": "too few classes to learn from: fix the data, or point {key} at the label"}


def remedy(check: str) -> str:
    """What the failure line suggests for `check`: the override that changes it, or, where a
    looser limit would only hide the problem, the data and the key to check."""
    key = relax_hint(check)
    fix = next((text for start, text in FIX_THE_DATA.items() if check.startswith(start)), None)
    return fix.format(key=key) if fix else f"to change: {key}"


def relax_hint(check: str) -> str:
    """The override that changes `check` (a failures.csv check name)."""
    return next((key for start, key in RELAX.items() if check.startswith(start)), SCHEMA_RELAX)


def summarise(failures: pd.DataFrame, label: str, against: str, items: int) -> str:
    """One line: how many failures, and the first few (column, check) groups with an example."""
    groups = []
    for (column, check), part in failures.groupby(["column", "check"], sort=False, dropna=False):
        example = part["failure_case"].iloc[0]
        if check in (ADDED, REMOVED):
            text = f"{column!r}: {check}"
        elif pd.isna(example):  # a missing value: the row says more than `nan`
            text = f"{column!r}: {check} failed for {len(part)} value(s), e.g. row {part['index'].iloc[0]}"
        else:
            text = f"{column!r}: {check} failed for {len(part)} value(s), e.g. {example!r}"
        groups.append(f"{text} ({remedy(str(check))})")
    shown = "; ".join(groups[:items]) + (f"; and {len(groups) - items} more" if len(groups) > items else "")
    return (f"{label}: {len(failures)} validation failure(s) against {against}: {shown} "
            "(all of them: validation/failures.csv)")


def read_configured(path: str) -> str:
    """The YAML text of a schema named by `data.schema`."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: no such schema file (data.schema)")
    return p.read_text()
