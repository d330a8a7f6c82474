"""A logged model run by onnxruntime from three files of its directory: `model.onnx` (the graph
train logged), `onnx.json` (which request column feeds which input) and `MLmodel`, read as YAML
for its signature. Nothing else in the directory is opened: no pickle, no Python file, no loader
module the MLmodel names (serve.runtime=onnx, docs/serving.md#runtimes).

The graph itself is data, checked before onnxruntime sees it: operators from the standard and ML
domains only (a custom-op domain would need a library loaded into the process), and every
tensor stored inside the file (an external-data reference makes onnxruntime read another file).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mlpipe.errors import UntrustedModelError, one_line
from mlpipe.training.onnx_export import LAYOUT_FILE, ONNX_FILE, Layout, run, session

DOMAINS = {"", "ai.onnx", "ai.onnx.ml"}


class NoConversion(UntrustedModelError):
    """The model has no ONNX conversion; `reason` says why (as train recorded it), or is None."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason


class OnnxModel:
    """What the server's batching and MLflow's request parsing need of a model: `metadata` (the
    MLmodel, as data) and `predict(frame)`, here without scikit-learn or MLflow's pyfunc; and
    `outputs(frame)`, labels and probabilities from one run of the graph (qa's parity check)."""

    def __init__(self, metadata, layout: Layout, graph: bytes, intra_op_threads: int = 1, inter_op_threads: int = 1):
        self.metadata, self.layout = metadata, layout
        self.session = session(graph, intra_op_threads, inter_op_threads)
        self.input_schema, self.params_schema = metadata.get_input_schema(), metadata.get_params_schema()
        self.regression = layout.task == "regression"
        # predict_rows feeds JSON rows straight to the graph when the signature's types are the
        # graph's own (double, string): MLflow's schema enforcement would change nothing
        types = {c.name: c.type.name for c in self.input_schema.inputs} if self.input_schema is not None else {}
        self.direct = all(types.get(i["column"]) == i["type"] for i in layout.inputs) and len(types) == len(layout.inputs)

    def predict(self, data, params: dict[str, Any] | None = None) -> np.ndarray:
        """Labels (or values) for the rows of `data`, after MLflow's own schema enforcement, as a
        scikit-learn pyfunc enforces it (the same conversions and the same errors)."""
        return self.outputs(data, params)[0]

    def outputs(self, data, params: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """`predict`'s labels (or values) and the class probabilities (None for a regressor)."""
        from mlflow.pyfunc import _validate_prediction_input

        data, _ = _validate_prediction_input(data, params, self.input_schema, self.params_schema, "mlflow.sklearn")
        return self._run(self.layout.feeds(data))

    def _run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        values, probabilities = run(self.session, self.layout, feeds)
        return (values.astype(np.float64) if self.regression else values), probabilities

    def predict_rows(self, columns: tuple, rows: list) -> np.ndarray | None:
        """What `predict` answers for the rows of a JSON `dataframe_records` (dicts) or
        `dataframe_split` (lists, in `columns` order) frame, fed straight to the graph: no
        DataFrame, no schema pass. None when a value is not one the signature's type takes as it
        is (a missing value, a string in a numeric column, another set of columns): then MLflow
        parses and enforces the schema, with its own conversions and errors."""
        if not self.direct or not rows or len(columns) != len(self.layout.inputs) or \
                set(columns) != set(self.layout.columns):
            return None
        records = isinstance(rows[0], dict)
        at = {c: i for i, c in enumerate(columns)}
        feeds = {}
        for item in self.layout.inputs:
            column = item["column"]
            values = [r[column] for r in rows] if records else [r[at[column]] for r in rows]
            if item["type"] == "double":
                if not all(type(v) is float or type(v) is int for v in values):
                    return None
                feeds[item["name"]] = np.array(values, dtype=np.float64).reshape(-1, 1)
            else:
                if not all(type(v) is str for v in values):
                    return None
                feeds[item["name"]] = np.array(values, dtype=object).reshape(-1, 1)
        return self._run(feeds)[0]


def check_graph(graph: bytes, where: str) -> None:
    """UntrustedModelError unless every node is in a standard domain and no tensor is external."""
    import onnx
    from onnx import TensorProto

    try:
        proto = onnx.load_from_string(graph)  # bytes: no external file is read here
    except Exception as exc:  # noqa: BLE001 - not an ONNX file
        raise UntrustedModelError(f"{where}: {ONNX_FILE} is not an ONNX model ({one_line(exc)[:200]}): refused") from None
    graphs = [proto.graph]
    while graphs:
        g = graphs.pop()
        for tensor in g.initializer:
            if tensor.data_location == TensorProto.EXTERNAL:
                raise UntrustedModelError(f"{where}: {ONNX_FILE} reads tensor {tensor.name!r} from another file: refused")
        for node in g.node:
            if node.domain not in DOMAINS:
                raise UntrustedModelError(f"{where}: {ONNX_FILE} uses operator {node.op_type!r} of domain "
                                          f"{node.domain!r} (allowed: ai.onnx, ai.onnx.ml): refused")
            graphs += [a.g for a in node.attribute if a.HasField("g")] + [s for a in node.attribute for s in a.graphs]
    for fn in proto.functions:
        raise UntrustedModelError(f"{where}: {ONNX_FILE} defines function {fn.name!r}: refused")


def load(directory: Path, where: str, intra_op_threads: int = 1, inter_op_threads: int = 1) -> OnnxModel:
    """The model in `directory` (a download already checked against its digest) under onnxruntime;
    UntrustedModelError when it has no ONNX conversion or its graph is refused."""
    import yaml
    from mlflow.models import Model

    directory = Path(directory)
    layout_path, graph_path = directory / LAYOUT_FILE, directory / ONNX_FILE
    if not layout_path.is_file():
        raise NoConversion(f"{where} has no ONNX conversion ({LAYOUT_FILE}): it was trained with runtime=sklearn "
                           "or before ONNX; serve it with serve.runtime=sklearn or retrain it", None)
    found = json.loads(layout_path.read_text())
    if "error" in found:
        raise NoConversion(f"{where} has no ONNX conversion ({found['error']}); serve it with serve.runtime=sklearn",
                           str(found["error"]))
    if not graph_path.is_file():
        raise UntrustedModelError(f"{where}: {LAYOUT_FILE} without {ONNX_FILE}: refused")
    layout = Layout.from_dict(found)
    graph = graph_path.read_bytes()
    check_graph(graph, where)
    metadata = Model.from_dict(yaml.safe_load((directory / "MLmodel").read_text()) or {})
    schema = metadata.get_input_schema()
    if schema is None or not schema.has_input_names() or set(schema.input_names()) != set(layout.columns):
        raise UntrustedModelError(f"{where}: the MLmodel's signature and {LAYOUT_FILE} name different columns: refused")
    return OnnxModel(metadata, layout, graph, intra_op_threads, inter_op_threads)
