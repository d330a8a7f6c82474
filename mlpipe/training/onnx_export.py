"""The fitted pipeline (preprocessing and estimator) as one ONNX graph, and the layout that says
which request column feeds which graph input: what train logs beside the scikit-learn model and
what `serve.runtime=onnx` runs with onnxruntime (training/onnx_model.py), without unpickling.

Conversion is skl2onnx's, on a copy of the pipeline adapted to it (docs/serving.md#runtimes):
- graph inputs are one per column, named after it with anything but letters, digits and `_` as
  `_` (skl2onnx matches a ColumnTransformer's columns by input name and sanitizes them itself);
- numeric columns enter as float64 (what scikit-learn computes in) and are imputed by our own
  converter (IsNaN + Where: onnxruntime's Imputer takes float32 only); string columns enter as
  strings, a missing value as "" (skl2onnx's imputer takes no NaN for strings);
- tree ensembles read float32 features, as scikit-learn's trees do (it casts X to float32), so
  the same rows take the same branches; linear models stay in float64;
- HistGradientBoosting's converter writes Python booleans into integer attributes, which onnx
  1.23 refuses, and on float64 input declares float64 scores that onnxruntime's tree ensembles
  do not produce: the converter is wrapped to write integers and cast the scores;
- OneHotEncoder on strings with infrequent categories (skl2onnx has no converter for that on
  one input) has our own converter.
"""

from __future__ import annotations

import copy
import re
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mlpipe.errors import ModelValidationError, one_line

ONNX_FILE = "model.onnx"
LAYOUT_FILE = "onnx.json"
MISSING_STRING = ""  # what a missing value of a string column is fed as


class ConversionError(ModelValidationError):
    """The fitted pipeline has no ONNX conversion (qa fails with it: runtime=sklearn avoids it);
    `reason` is the message without the estimator's name."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message


@dataclass(frozen=True)
class Layout:
    """The graph's inputs in request-column terms and its outputs, saved as `onnx.json`."""

    inputs: list[dict[str, str]]  # {"column", "name", "type": "double" | "string"}
    outputs: list[str]  # ["label", "probabilities"] (classifiers) or ["variable"] (regressors)
    task: str
    estimator: str
    opsets: dict[str, int] = field(default_factory=dict)
    converter: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Layout":
        known = {k: data[k] for k in ("inputs", "outputs", "task", "estimator", "opsets", "converter") if k in data}
        layout = cls(**known)
        for item in layout.inputs:
            if set(item) != {"column", "name", "type"} or item["type"] not in ("double", "string"):
                raise ValueError(f"{LAYOUT_FILE}: an input entry must be {{column, name, type: double|string}}, "
                                 f"not {item!r}")
        return layout

    @property
    def columns(self) -> list[str]:
        return [i["column"] for i in self.inputs]

    def feeds(self, frame) -> dict[str, np.ndarray]:
        """One (rows, 1) array per graph input from a DataFrame holding the columns."""
        return {i["name"]: column_array(frame[i["column"]], i["type"]) for i in self.inputs}


def column_array(values, kind: str) -> np.ndarray:
    """A column as its graph input: float64 with NaN for missing, or strings with "" for missing."""
    if kind == "double":
        import pandas as pd

        return pd.to_numeric(pd.Series(values), errors="raise").to_numpy(np.float64, na_value=np.nan).reshape(-1, 1)
    out = np.empty((len(values), 1), dtype=object)
    for i, v in enumerate(values):
        out[i, 0] = MISSING_STRING if v is None or (isinstance(v, float) and v != v) else str(v)
    return out


def input_names(columns: list[str]) -> dict[str, str]:
    """column -> graph input name: [^A-Za-z0-9_] as `_`, a clash suffixed `_2`, `_3`..."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for column in columns:
        base = re.sub(r"\W", "_", column, flags=re.ASCII) or "_"
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}_{n}"
        names[column], taken = name, taken | {name}
    return names


def computes_in_float32(estimator) -> bool:
    """scikit-learn's trees and forests cast X to float32 before they branch (its
    HistGradientBoosting* compare in float64)."""
    module = type(estimator).__module__
    return module.startswith(("sklearn.ensemble", "sklearn.tree")) and "_hist_gradient_boosting" not in module


def convertible_copy(model, names: dict[str, str]):
    """A copy of the fitted Pipeline(preprocess, model) that skl2onnx converts to the layout
    above; the model itself is not changed."""
    from sklearn.pipeline import Pipeline

    preprocess, estimator = model.steps[0][1], model.steps[-1][1]
    pre = copy.deepcopy(preprocess)
    pre.transformers_ = [(n, t, [names[c] for c in cols] if isinstance(cols, list) else cols)
                         for n, t, cols in pre.transformers_]
    pre.feature_names_in_ = np.array([names[c] for c in pre.feature_names_in_], dtype=object)
    for name, transformer, cols in pre.transformers_:
        if name == "categorical" and cols:
            imputer, encoder = transformer.steps[0][1], transformer.steps[-1][1]
            for column, categories in zip(cols, encoder.categories_):
                if MISSING_STRING in set(categories.tolist()):
                    raise ConversionError(f"string column {column!r} has the empty string as a category, which the "
                                          "ONNX graph reads as missing")
            imputer.missing_values = MISSING_STRING
    steps = [("preprocess", pre)]
    if computes_in_float32(estimator):
        from skl2onnx.sklapi import CastTransformer

        steps.append(("float32", CastTransformer(dtype=np.float32)))
    return Pipeline(steps + [("model", estimator)])


def convert(model, numeric: list[str], categorical: list[str], task: str, opset: int,
            ml_opset: int) -> tuple[bytes, Layout]:
    """The ONNX graph (serialized) of the fitted Pipeline(preprocess, model) and its layout.
    ConversionError names the estimator and what failed."""
    estimator = type(model.steps[-1][1]).__name__
    try:
        import skl2onnx
        from skl2onnx.common.data_types import DoubleTensorType, StringTensorType

        _register_converters()
        names = input_names(numeric + categorical)
        ready = convertible_copy(model, names)
        types = ([(names[c], DoubleTensorType([None, 1])) for c in numeric]
                 + [(names[c], StringTensorType([None, 1])) for c in categorical])
        final = ready.steps[-1][1]
        options = {id(final): {"zipmap": False}} if task == "classification" else None
        graph = skl2onnx.convert_sklearn(ready, initial_types=types, options=options,
                                         target_opset={"": int(opset), "ai.onnx.ml": int(ml_opset)})
    except ConversionError as exc:
        raise ConversionError(f"{estimator}: {exc}", str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - skl2onnx raises many kinds; its first sentence is the finding
        first_sentence = re.split(r"(?<=[.])\s", one_line(exc))[0][:300]
        reason = f"{type(exc).__name__}: {first_sentence}"
        raise ConversionError(f"{estimator}: {reason}", reason) from None
    kinds = {c: "double" for c in numeric} | {c: "string" for c in categorical}
    layout = Layout([{"column": c, "name": names[c], "type": kinds[c]} for c in numeric + categorical],
                    [o.name for o in graph.graph.output], task, estimator,
                    {(o.domain or "ai.onnx"): int(o.version) for o in graph.opset_import},
                    f"skl2onnx {skl2onnx.__version__}")
    return graph.SerializeToString(), layout


def logged_files(model, numeric: list[str], categorical: list[str], task: str, opset: int,
                 ml_opset: int) -> dict[str, bytes]:
    """What train adds to the logged model under runtime=onnx: `model.onnx` and its layout, or a
    layout file that says why there is no conversion (qa fails on it, naming the estimator)."""
    import json

    try:
        graph, layout = convert(model, numeric, categorical, task, opset, ml_opset)
    except ConversionError as exc:
        return {LAYOUT_FILE: json.dumps({"error": exc.reason, "estimator": type(model.steps[-1][1]).__name__}).encode()}
    return {ONNX_FILE: graph, LAYOUT_FILE: json.dumps(layout.to_dict(), indent=1).encode()}


def describe(files: dict[str, bytes]) -> str:
    """One line for train's card: the conversion's opsets and size, or why there is none."""
    import json

    found = json.loads(files[LAYOUT_FILE])
    if "error" in found:
        return f"no conversion: {found['error']}"
    opsets = ", ".join(f"{domain} {version}" for domain, version in sorted(found["opsets"].items()))
    return f"{ONNX_FILE} ({len(files[ONNX_FILE]) / 1024:.0f} KiB; opsets {opsets}; {found['converter']})"


def session(graph: bytes, intra_op_threads: int = 1, inter_op_threads: int = 1):
    """An onnxruntime session on the CPU with the thread counts given (0: onnxruntime's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = int(intra_op_threads), int(inter_op_threads)
    options.log_severity_level = 3
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def run(sess, layout: Layout, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """(labels or values, probabilities or None) for the rows fed."""
    out = sess.run(None, feeds)
    if layout.task == "classification":
        return out[0].ravel(), out[1] if len(out) > 1 else None
    return out[0].ravel(), None


# -- converters -------------------------------------------------------------------------------

_REGISTERED = threading.Lock()
_done = False


def _register_converters() -> None:
    """Our converters for SimpleImputer (float64 and strings), OneHotEncoder (infrequent
    categories) and HistGradientBoosting*, once."""
    global _done
    with _REGISTERED:
        if _done:
            return
        from skl2onnx._supported_operators import sklearn_operator_name_map
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
        from sklearn.impute import SimpleImputer
        from sklearn.preprocessing import OneHotEncoder

        for cls in (HistGradientBoostingClassifier, HistGradientBoostingRegressor):
            _wrap(sklearn_operator_name_map[cls], _tree_ensemble)
        _wrap(sklearn_operator_name_map[SimpleImputer], _nan_imputer)
        _wrap(sklearn_operator_name_map[OneHotEncoder], _one_hot, _one_hot_shape)
        _done = True


def _wrap(alias: str, make, shape=None) -> None:
    from skl2onnx.common import _registration

    original = _registration._converter_pool[alias]
    _registration.register_converter(alias, make(original._fct), options=original.get_allowed_options(),
                                     overwrite=True)
    if shape is not None:
        _registration.register_shape_calculator(alias, shape(_registration._shape_calculator_pool[alias]),
                                                overwrite=True)


class _TreeContainer:
    """A conversion container for HistGradientBoosting's converter: integers where it wrote
    booleans; on float64 input the thresholds and weights as float64 tensors (a float attribute
    is float32) and the tree node's float32 scores cast to the float64 output skl2onnx declared
    (onnxruntime's tree ensembles compare in the input's type but score in float32)."""

    SCORES = {"TreeEnsembleRegressor": 0, "TreeEnsembleClassifier": 1}
    AS_TENSOR = ("nodes_values", "nodes_hitrates", "base_values", "target_weights", "class_weights")

    def __init__(self, container, scope, double: bool):
        self._container, self._scope, self._double = container, scope, double

    def __getattr__(self, name):
        return getattr(self._container, name)

    def add_node(self, op_type, inputs, outputs, *args, **attrs):
        from onnx import TensorProto

        fixed = {k: [int(x) if isinstance(x, (bool, np.bool_)) else x for x in v] if isinstance(v, list) else v
                 for k, v in attrs.items()}
        if not self._double or op_type not in self.SCORES:
            return self._container.add_node(op_type, inputs, outputs, *args, **fixed)
        from onnx import numpy_helper

        for key in self.AS_TENSOR:  # float attributes are float32: thresholds as float64 tensors
            if isinstance(fixed.get(key), np.ndarray) and fixed[key].dtype == np.float64:
                fixed[f"{key}_as_tensor"] = numpy_helper.from_array(fixed.pop(key), f"{key}_as_tensor")
                fixed["op_version"] = 3  # the ai.onnx.ml version that has them
        outputs = [outputs] if isinstance(outputs, str) else list(outputs)
        at = self.SCORES[op_type]
        declared, outputs[at] = outputs[at], self._scope.get_unique_variable_name("float32_scores")
        self._container.add_node(op_type, inputs, outputs, *args, **fixed)
        self._container.add_node("Cast", [outputs[at]], [declared], to=TensorProto.DOUBLE,
                                 name=self._scope.get_unique_operator_name("Cast"))


def _tree_ensemble(convert_fn):
    def converter(scope, operator, container):
        from skl2onnx.common.data_types import DoubleTensorType

        double = isinstance(operator.inputs[0].type, DoubleTensorType)
        # ai.onnx.ml 3: the first version with float64 thresholds (skl2onnx rounds them to float32 below it)
        return convert_fn(scope, operator, _TreeContainer(container, scope, double), **({"op_version": 3} if double else {}))
    return converter


def _nan_imputer(convert_fn):
    """Numeric SimpleImputer as Where(IsNaN(X), statistics, X) in the input's own float type;
    strings go to skl2onnx's converter."""
    def converter(scope, operator, container):
        from onnx import TensorProto
        from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

        x = operator.inputs[0]
        if not isinstance(x.type, (DoubleTensorType, FloatTensorType)):
            return convert_fn(scope, operator, container)
        imputer = operator.raw_operator
        if not (isinstance(imputer.missing_values, float) and np.isnan(imputer.missing_values)):
            return convert_fn(scope, operator, container)
        double = isinstance(x.type, DoubleTensorType)
        stats = np.asarray(imputer.statistics_, dtype=np.float64 if double else np.float32).reshape(1, -1)
        filler = scope.get_unique_variable_name("statistics")
        container.add_initializer(filler, TensorProto.DOUBLE if double else TensorProto.FLOAT, list(stats.shape),
                                  stats.ravel().tolist())
        missing = scope.get_unique_variable_name("missing")
        container.add_node("IsNaN", [x.full_name], [missing], name=scope.get_unique_operator_name("IsNaN"))
        container.add_node("Where", [missing, filler, x.full_name], [operator.outputs[0].full_name],
                           name=scope.get_unique_operator_name("Where"))
    return converter


def _ours(encoder, operator) -> bool:
    """The one-hot encodings our converter writes: string columns, nothing dropped."""
    from skl2onnx.common.data_types import StringTensorType

    return (len(operator.inputs) == 1 and isinstance(operator.inputs[0].type, StringTensorType)
            and getattr(encoder, "drop_idx_", None) is None)


def _one_hot_shape(calculate):
    def shape(operator):
        from skl2onnx.common.data_types import FloatTensorType

        encoder = operator.raw_operator
        if not _ours(encoder, operator):
            return calculate(operator)
        width = sum(len(encoder._compute_transformed_categories(j)) for j in range(len(encoder.categories_)))
        operator.outputs[0].type = FloatTensorType([operator.inputs[0].get_first_dimension(), width])
    return shape


def _one_hot(convert_fn):
    """OneHotEncoder on string columns as scikit-learn encodes them, infrequent categories
    included (skl2onnx's converter has none for one input): each column's categories map to
    their output position (ai.onnx.ml LabelEncoder), every infrequent category and every unknown
    value to the infrequent column when there is one (handle_unknown="infrequent_if_exist"),
    else to no column; Equal with the positions makes the one-hot rows."""
    def converter(scope, operator, container):
        from onnx import TensorProto

        encoder = operator.raw_operator
        if not _ours(encoder, operator):
            return convert_fn(scope, operator, container)
        x, parts = operator.inputs[0].full_name, []
        for j, categories in enumerate(encoder.categories_):
            shown = list(encoder._compute_transformed_categories(j))
            infrequent = list(encoder.infrequent_categories_[j]) if shown[-1:] == ["infrequent_sklearn"] else []
            frequent = shown[:-1] if infrequent else shown
            keys = [str(c) for c in frequent] + [str(c) for c in infrequent]
            values = list(range(len(frequent))) + [len(frequent)] * len(infrequent)
            position = scope.get_unique_variable_name("position")
            container.add_initializer(position, TensorProto.INT64, [1], [j])
            column = scope.get_unique_variable_name("column")
            container.add_node("Gather", [x, position], [column], axis=1, name=scope.get_unique_operator_name("Gather"))
            index = scope.get_unique_variable_name("category")
            container.add_node("LabelEncoder", [column], [index], op_domain="ai.onnx.ml", op_version=2,
                               keys_strings=keys, values_int64s=values,
                               default_int64=len(frequent) if infrequent else -1,
                               name=scope.get_unique_operator_name("LabelEncoder"))
            positions = scope.get_unique_variable_name("positions")
            container.add_initializer(positions, TensorProto.INT64, [1, len(shown)], list(range(len(shown))))
            hot = scope.get_unique_variable_name("hot")
            container.add_node("Equal", [index, positions], [hot], name=scope.get_unique_operator_name("Equal"))
            part = scope.get_unique_variable_name("one_hot")
            container.add_node("Cast", [hot], [part], to=TensorProto.FLOAT, name=scope.get_unique_operator_name("Cast"))
            parts.append(part)
        container.add_node("Concat", parts, [operator.outputs[0].full_name], axis=1,
                           name=scope.get_unique_operator_name("Concat"))
    return converter
