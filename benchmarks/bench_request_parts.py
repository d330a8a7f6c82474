"""Where one request's time goes inside the server, part by part, in-process: the same functions
the server calls for a 1-row `dataframe_split` request to the default model (random forest on
wine, preprocessing included), timed over many calls, under both runtimes.

Parts:
- parse: merge_key (json.loads and the frame's shape: what every JSON request costs) and, under
  sklearn, MLflow's own parsing into a DataFrame (`scoring_server.invocations`);
- predict: under onnx, the rows fed straight to onnxruntime (`OnnxModel.predict_rows`); under
  sklearn, the pyfunc model's predict (MLflow's schema enforcement, then scikit-learn);
- encode: the answer's JSON (`answer_json` under onnx; MLflow's `predictions_to_json` under sklearn);
- records: the row keys (`row_keys`), appending the request's record (`RecordStore.append`), and
  the append plus its share of the SQLite writes the flush thread makes (N records written,
  divided by N).
What is left of a request's p50 in bench_serve.py (HTTP, the event loop, the batcher's queue and
thread hand-off) is that p50 minus these parts; the floor arm there measures the HTTP stack alone.

    .venv/bin/python benchmarks/bench_request_parts.py [--calls 2000]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))


def fitted_model(tmp: Path):
    """The default pipeline's model (conf/model/random_forest.yaml on wine, default preprocessing)
    saved as train logs it, and one test row as a request body."""
    import mlflow
    from hydra.utils import instantiate
    from mlflow.models import infer_signature
    from sklearn.datasets import load_wine

    from mlpipe.config import compose, to_container
    from mlpipe.data import features
    from mlpipe.training import estimators, onnx_export

    cfg = to_container(compose([]))
    frame = load_wine(as_frame=True).frame
    spec = features.feature_spec(frame, "target", "classification")
    frame = features.normalise_types(frame, spec)
    preprocessor = features.fit_preprocessor(spec, cfg["preprocess"], frame)
    model, _ = estimators.fit_model(preprocessor, instantiate(cfg["model"]), frame[spec.columns], frame["target"])
    X = frame[spec.columns]
    path = tmp / "model"
    mlflow.sklearn.save_model(model, str(path), signature=infer_signature(X, model.predict(X)),
                              serialization_format="cloudpickle", pip_requirements=["scikit-learn"])
    files = onnx_export.logged_files(model, spec.numeric, spec.categorical, "classification",
                                     cfg["train"]["onnx"]["opset"], cfg["train"]["onnx"]["ml_opset"])
    for name, content in files.items():
        (path / name).write_bytes(content)
    row = json.loads(X.head(1).to_json(orient="split", index=False))
    return path, json.dumps({"dataframe_split": row}).encode()


def timed(fn, calls: int) -> float:
    """Median microseconds per call over `calls` calls (after 50 warm-up calls)."""
    for _ in range(50):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def parts(runtime: str, path: Path, body: bytes, calls: int, records: Path) -> dict[str, float]:
    import mlflow
    from mlflow.pyfunc.scoring_server import predictions_to_json

    from mlpipe.serving import app, batching
    from mlpipe.serving.records import writer
    from mlpipe.training import onnx_model

    ctype = "application/json"
    frame = batching.merge_key(body, ctype)
    out: dict[str, float] = {"parse: merge_key": timed(lambda: batching.merge_key(body, ctype), calls)}
    if runtime == "onnx":
        model = onnx_model.load(path, "bench")
        out["predict: rows to onnxruntime"] = timed(lambda: model.predict_rows(frame[0][1], frame[1]), calls)
        predictions = model.predict_rows(frame[0][1], frame[1])
    else:
        model = mlflow.pyfunc.load_model(str(path))
        schema = model.metadata.get_input_schema()
        out["parse: MLflow to a DataFrame"] = timed(lambda: batching.parse(body, ctype, model.metadata, schema), calls)
        data, _ = batching.parse(body, ctype, model.metadata, schema)
        out["predict: pyfunc (schema + scikit-learn)"] = timed(lambda: model.predict(data), calls)
        predictions = model.predict(data)
    if runtime == "onnx":  # the server writes 1-D arrays itself (the same text)
        out["encode: answer_json"] = timed(lambda: app.answer_json(predictions), calls)
    else:
        out["encode: predictions_to_json"] = timed(lambda: predictions_to_json(predictions, io.StringIO()), calls)
    out["records: row_keys"] = timed(lambda: batching.row_keys(frame[0][1], frame[1]), calls)
    store = writer.RecordStore(str(records), 200, 30)
    record = {"request_id": "0" * 32, "ts": time.time(), "experiment": "bench", "variant": "default",
              "model_uri": "models:/wine_model/1", "model_version": "1", "author": "", "status": 200,
              "latency_ms": 1.0, "rows": 1, "row_keys": "0" * 16, "predictions": '{"predictions": [0]}'}
    ids = iter(range(10**9))
    start = time.perf_counter()
    out["records: append"] = timed(lambda: store.append(record | {"request_id": f"{next(ids):032x}"}), calls)
    store.close()  # waits for the flush thread's last write
    out["records: append + its SQLite write"] = (time.perf_counter() - start) / (calls + 50) * 1e6
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlpipe-parts-") as tmp:
        tmp = Path(tmp)
        path, body = fitted_model(tmp)
        for runtime in ("onnx", "sklearn"):
            found = parts(runtime, path, body, args.calls, tmp / f"records-{runtime}.db")
            print(f"runtime={runtime} (median microseconds per 1-row request, {args.calls} calls)")
            for name, us in found.items():
                print(f"  {name:<42}{us:>9.1f}")


if __name__ == "__main__":
    main()
