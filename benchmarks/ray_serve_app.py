"""The Ray Serve arm of bench_serve.py: the same registered model behind Ray Serve on 127.0.0.1,
until SIGTERM. Needs `pip install -r benchmarks/requirements-ray.txt` (ray[serve], which brings
HAProxy).

    python benchmarks/ray_serve_app.py --model-uri models:/wine_model/1 --port 8000 --mode throughput

Modes:
- default: `@serve.deployment` as it comes (max_ongoing_requests 5), one replica, no batching,
  Ray's standard proxy.
- throughput: what Ray's docs recommend for throughput. RAY_SERVE_THROUGHPUT_OPTIMIZED=1 and
  RAY_SERVE_ENABLE_HA_PROXY=1 ("Enable high throughput"), dynamic batching
  (`@serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)`, "Dynamic Request Batching"),
  and max_ongoing_requests 128, at least the batch size ("Performance Tuning"). One replica.

Each request is one `dataframe_split` JSON body; the answer is `{"predictions": [...]}`, as
`mlflow models serve` gives. GET /ping answers 200 once the replica is up.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading

BATCH = {"max_batch_size": 64, "batch_wait_timeout_s": 0.005}
THROUGHPUT_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}


def build(model_uri: str, mode: str):
    import pandas as pd
    from mlflow.pyfunc.scoring_server import infer_and_parse_data
    from ray import serve
    from starlette.responses import JSONResponse, PlainTextResponse

    options = {"ray_actor_options": {"num_cpus": 1}}
    if mode == "throughput":
        options["max_ongoing_requests"] = 128

    @serve.deployment(**options)
    class Model:
        def __init__(self, uri: str) -> None:
            import mlflow.pyfunc

            self.model = mlflow.pyfunc.load_model(uri)
            self.schema = self.model.metadata.get_input_schema()

        def _predict(self, frames: list) -> list:
            merged = pd.concat(frames, ignore_index=True)
            out = list(pd.Series(self.model.predict(merged)).tolist())
            answers, start = [], 0
            for frame in frames:
                answers.append(out[start:start + len(frame)])
                start += len(frame)
            return answers

        @serve.batch(**BATCH)
        async def batched(self, frames: list) -> list:
            return self._predict(frames)

        async def __call__(self, request):
            if request.url.path.rstrip("/").endswith("ping"):
                return PlainTextResponse("ok")
            # parsed as `mlflow models serve` parses it: the model's input schema sets the types
            frame = infer_and_parse_data(await request.json(), self.schema)
            predictions = await self.batched(frame) if mode == "throughput" else self._predict([frame])[0]
            return JSONResponse({"predictions": predictions})

    return Model.bind(model_uri)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=("default", "throughput"), default="throughput")
    args = parser.parse_args()
    if args.mode == "throughput":
        os.environ.update(THROUGHPUT_ENV)
    # A local ray.init turns token authentication on and writes ~/.ray/auth_token, which other Ray
    # clusters of this user (the launcher's tests) then trip over: off, on 127.0.0.1 only.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray import serve

    ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    serve.run(build(args.model_uri, args.mode), route_prefix="/")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
