"""The ONNX parity check (runtime=onnx): the ONNX model the server will run against the
scikit-learn model on the same test rows. Labels must be identical; probabilities (or
regression outputs, relative to max(1, |value|)) within `qa.onnx`'s tolerances.

`compare` and `check` are pure (predictions in, a report and a `gate.Check` out); `measure`
predicts with both models and `of_logged_model` reads the ONNX model as serve does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mlpipe.quality import gate

CHECK = "onnx.parity"


@dataclass(frozen=True)
class Outputs:
    """What a model answered for the test rows: labels or values, and class probabilities."""

    values: Any
    probabilities: Any = None


def compare(task: str, estimator: str, sklearn: Outputs, onnx: Outputs | None, max_probability_diff: float,
            max_relative_diff: float, error: str | None = None) -> dict[str, Any]:
    """The parity report: rows, labels that differ, the largest difference (probability or
    relative output), the tolerance and whether it passed; with `error`, why there is no ONNX model."""
    report: dict[str, Any] = {"estimator": estimator, "task": task, "rows": len(sklearn.values)}
    if onnx is None:
        return report | {"passed": False, "error": error or "no ONNX model"}
    if task == "classification":
        differ = int((np.asarray(onnx.values) != np.asarray(sklearn.values)).sum())
        largest = _largest(sklearn.probabilities, onnx.probabilities)
        report |= {"labels_differ": differ, "max_probability_diff": largest, "tolerance": max_probability_diff,
                   "passed": differ == 0 and largest is not None and largest <= max_probability_diff}
    else:
        expected = np.asarray(sklearn.values, dtype=np.float64).ravel()
        got = np.asarray(onnx.values, dtype=np.float64).ravel()
        largest = float((np.abs(got - expected) / np.maximum(1.0, np.abs(expected))).max()) if len(expected) else 0.0
        report |= {"max_relative_diff": largest, "tolerance": max_relative_diff, "passed": largest <= max_relative_diff}
    return report


def measure(model, onnx, X, task: str, cfg, error: str | None = None) -> dict[str, Any]:
    """`compare` of the scikit-learn Pipeline `model` and the OnnxModel `onnx` (None: `error`
    says why there is none) on the rows X, with `qa.onnx`'s tolerances."""
    classifier = task == "classification"
    sklearn = Outputs(model.predict(X), model.predict_proba(X) if classifier else None)
    answered = None if onnx is None else Outputs(*onnx.outputs(X))
    return compare(task, type(model.steps[-1][1]).__name__, sklearn, answered, cfg.max_probability_diff,
                   cfg.max_relative_diff, error)


def of_logged_model(model_uri: str, digest: str, model, X, task: str, cfg) -> tuple[dict[str, Any], Any]:
    """`measure` with the ONNX conversion logged at `model_uri`, read from the files whose digest
    qa records (`digest`), as serve reads them (training/model_io.load_onnx); a model with no
    conversion, or one refused, is the report's `error`. Returns the report and the ONNX model
    (None without one): qa times and sends the serving payload to the model the server runs."""
    from mlpipe.errors import PipelineError, one_line
    from mlpipe.training import model_io, onnx_model

    try:
        onnx, error = model_io.load_onnx(model_uri, digest)[0], None
    except onnx_model.NoConversion as exc:
        onnx, error = None, f"no conversion: {exc.reason or 'train logged none (onnx.json)'}"
    except PipelineError as exc:
        onnx, error = None, one_line(exc).removeprefix(f"{model_uri}: ")
    return measure(model, onnx, X, task, cfg, error), onnx


def metrics(report: dict[str, Any] | None) -> dict[str, float]:
    """`qa.onnx_max_diff`: the report's largest difference, when it measured one."""
    largest = (report or {}).get("max_probability_diff", (report or {}).get("max_relative_diff"))
    return {} if largest is None else {"qa.onnx_max_diff": largest}


def _largest(expected, got) -> float | None:
    if expected is None or got is None:
        return None
    expected, got = np.asarray(expected, dtype=np.float64), np.asarray(got, dtype=np.float64)
    if expected.shape != got.shape:
        return None
    return float(np.abs(got - expected).max()) if expected.size else 0.0


def check(report: dict[str, Any]) -> gate.Check:
    """The gate check of a parity report; its note names the estimator (the failure line adds
    the setting that serves scikit-learn instead: gate.relax_hint)."""
    who = report["estimator"]
    if "error" in report:
        return gate.Check(CHECK, False, None, "an ONNX conversion that onnxruntime runs", f"{who}: {report['error']}"[:400])
    if report["task"] == "classification":
        largest = report["max_probability_diff"]
        note = (f"{who}: {report['labels_differ']} of {report['rows']} labels differ, largest probability "
                f"difference {'missing' if largest is None else f'{largest:.3g}'}")
        return gate.Check(CHECK, report["passed"], largest, f"identical labels, probabilities within "
                          f"{report['tolerance']:g} (qa.onnx.max_probability_diff)", note)
    return gate.Check(CHECK, report["passed"], report["max_relative_diff"],
                      f"<= {report['tolerance']:g} (qa.onnx.max_relative_diff)",
                      f"{who}: largest relative difference over {report['rows']} rows")
