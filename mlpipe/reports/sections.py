"""What each step puts on its report card: pure functions from the step's numbers to card sections."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mlpipe.reports import plots
from mlpipe.reports.cards import Card

MAX_ROWS = 50


def target_section(card: Card, target: pd.Series, task: str, title_prefix: str = "") -> None:
    """Class balance (classification) or the target's distribution in 10 quantile bins (regression)."""
    if task == "classification":
        counts = target.astype("object").where(target.notna(), "<missing>").map(str).value_counts()
        card.add_plot(f"{title_prefix}class balance", plots.bars(
            counts.index.tolist(), counts.tolist(), f"{title_prefix}rows per class ({len(target)} rows)"))
        return
    values = pd.to_numeric(target, errors="coerce").dropna()
    if len(values):
        counts, edges = np.histogram(values, bins=10)
        labels = [f"{a:.3g} - {b:.3g}" for a, b in zip(edges, edges[1:])]
        card.add_plot(f"{title_prefix}target distribution", plots.bars(labels, counts.tolist(),
                                                                      f"{title_prefix}{target.name}: rows per bin"))


def ingest(card: Card, frame: pd.DataFrame, target: str, task: str, failures: pd.DataFrame,
           schema_from: str) -> None:
    card.add_checks([{"name": "validation.failures", "passed": failures.empty, "value": float(len(failures)),
                      "expected": "0", "note": f"schema: {schema_from}"}])
    if not failures.empty:
        groups = failures.groupby(["column", "check"], sort=False, dropna=False).size().reset_index(name="cases")
        card.add_table("validation failures by column and check (all cases: validation/failures.csv)",
                       ("column", "check", "cases"), groups.head(MAX_ROWS).itertuples(index=False))
    if target in frame.columns:
        target_section(card, frame[target], task)
    missing = frame.isna().mean()
    missing = missing[missing > 0].sort_values(ascending=False)
    if len(missing):
        card.add_plot("missing values", plots.bars([str(c) for c in missing.index], missing.tolist(),
                                                   "fraction missing per column"))


def preprocess(card: Card, splits: dict[str, pd.DataFrame], target: str, task: str,
               outlier_report: dict[str, Any]) -> None:
    card.add_plot("split sizes", plots.bars(list(splits), [len(p) for p in splits.values()], "rows per split"))
    target_section(card, splits["train"][target], task, "train split: ")
    columns = {c: v["count"] for c, v in outlier_report["columns"].items() if v["count"]}
    if columns:
        ordered = sorted(columns.items(), key=lambda kv: -kv[1])
        card.add_plot("outliers (train split)", plots.bars(
            [c for c, _ in ordered], [n for _, n in ordered],
            f"outlier values per column ({outlier_report.get('method', '')}, action {outlier_report.get('action', '')})"))


def feature_importances(model) -> tuple[list[str], list[float], str] | None:
    """(names, values, kind) from the last step of a fitted sklearn Pipeline, or None."""
    estimator = model[-1] if hasattr(model, "__getitem__") else model
    try:
        names = [str(n) for n in model[:-1].get_feature_names_out()]
    except Exception:  # noqa: BLE001 - a transformer without names
        return None
    if hasattr(estimator, "feature_importances_"):
        values, kind = np.asarray(estimator.feature_importances_, dtype=float), "impurity importance"
    elif hasattr(estimator, "coef_"):
        coef = np.asarray(estimator.coef_, dtype=float)
        values, kind = (np.abs(coef).mean(axis=0) if coef.ndim > 1 else np.abs(coef)), "|coefficient|"
    else:
        return None
    if len(values) != len(names):
        return None
    order = np.argsort(-values)
    return [names[i] for i in order], [float(values[i]) for i in order], kind


def train(card: Card, model, cv_scores, metric: str, scores: dict[str, float]) -> None:
    found = feature_importances(model)
    if found:
        names, values, kind = found
        card.add_plot("feature importances", plots.bars(names, values, f"{kind} (top {min(len(names), 20)})",
                                                        max_bars=20))
    if len(cv_scores):
        card.add_plot("cross-validation", plots.bars([f"fold {i + 1}" for i in range(len(cv_scores))],
                                                     list(cv_scores), f"{metric} per fold"))
    split_scores = {k: v for k, v in scores.items() if not k.startswith("cv.")}
    card.add_table("scores", ("split.metric", "value"), split_scores.items())


def drift(card: Card, name: str, report: dict[str, Any]) -> None:
    """PSI per column (red: drifted), and reference vs batch bins for the worst column."""
    details = sorted(report["details"], key=lambda d: -d["psi"])
    if not details:
        return
    colors = [plots.FAIL if d["drifted"] else plots.BLUE for d in details]
    card.add_plot(f"drift: {name}", plots.bars(
        [d["column"] for d in details], [d["psi"] for d in details], drift_legend(name, report), colors=colors,
        limit=report["max_psi"]))
    worst = details[0]
    card.add_plot(f"drift: {name}, {worst['column']}", plots.paired_bars(
        worst["bins"], worst["reference_fractions"], worst["batch_fractions"], ("reference", name),
        f"{worst['column']}: fraction per bin ({worst['test']} p={worst['p_value']:.2g})"))
    card.add_table(f"drift: {name}, all columns", ("column", "test", "statistic", "p", "psi", "rows", "drifted"),
                   [(d["column"], d["test"], d["statistic"], d["p_value"], d["psi"], d["rows"], d["drifted"])
                    for d in details[:MAX_ROWS]])


def drift_legend(name: str, report: dict[str, Any]) -> str:
    """The drift chart's title says the whole rule: a bar over the line is not red by itself."""
    return (f"PSI, {name} vs training. Red = drifted: PSI > {report['max_psi']:g} (line) "
            f"and test p < {report['alpha_per_column']:.2g}")


def qa(card: Card, report: dict[str, Any], truth: pd.Series, predictions, images: dict[str, bytes]) -> None:
    baseline = report["baseline"]
    card.add_table("model vs trivial baseline (same test rows)",
                   ("metric", "model", "baseline", "lift", "lift lower bound", "p-value", "test", "rows"),
                   [(baseline["metric"], baseline["model_value"], baseline["baseline_value"], baseline["lift"],
                     baseline["lift_lower_bound"], baseline["p_value"], baseline["test"], baseline["rows"])])
    classes = report.get("classes")
    if classes:
        card.add_plot("confusion matrix", plots.heatmap(classes["confusion_matrix"], classes["labels"],
                                                        f"confusion matrix ({len(truth)} test rows)"))
        card.add_table("per class", ("class", "precision", "recall", "support"),
                       [(c, classes["precision"][c], classes["recall"][c], classes["support"][c])
                        for c in classes["labels"]])
    else:
        predicted = np.asarray(predictions, dtype=float)
        card.add_plot("residuals", plots.scatter(predicted, np.asarray(truth, dtype=float) - predicted,
                                                 "residuals on the test split", "predicted", "actual - predicted",
                                                 hline=0.0))
    for title, png in images.items():
        if title != "confusion matrix":  # drawn above, with the class names
            card.add_image(title, png)
    ranked = report.get("importance") or []
    if ranked:
        card.add_table(f"permutation importance: the drop in {ranked[0]['score']} when a column is shuffled "
                       f"({ranked[0]['rows']} test rows, the whole pipeline), most important first",
                       ("column", "importance", "std"), [(f["column"], f["importance"], f["std"]) for f in ranked])
    for name, found in (report.get("drift") or {}).items():
        if isinstance(found, dict) and "details" in found:
            drift(card, name, found)
