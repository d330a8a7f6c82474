"""serve: a scoring server for `model_uri` (default: the champion alias).

serve.mode=forever serves until interrupted; serve.mode=smoke (what main uses) starts it on a
free port, sends test rows to /invocations over HTTP, checks the answers and stops."""

import mlflow

from mlpipe import handoff, registry, serving
from mlpipe.errors import ConfigError
from mlpipe.harness import StepContext, step_main


def run(ctx: StepContext) -> None:
    scfg, rcfg = ctx.cfg.serve, ctx.cfg.registry
    model_uri = ctx.params["model_uri"] or f"models:/{rcfg.model_name}@{rcfg.champion_alias}"
    mlflow.set_tag(handoff.MODEL_URI_TAG, model_uri)
    ctx.card.inputs.update({"model_uri": model_uri, "serve.mode": scfg.mode})
    app = serving.build_app(serving.load(model_uri))
    if scfg.mode == "forever":
        print(f"[mlpipe] serving {model_uri} on http://{scfg.host}:{scfg.port} (Ctrl-C stops)", flush=True)
        serving.serve_forever(app, scfg.host, scfg.port)
        return
    if scfg.mode != "smoke":
        raise ConfigError(f"serve.mode={scfg.mode!r}; expected forever or smoke")
    rows = _test_rows(ctx, model_uri, scfg.smoke_rows)
    with serving.BackgroundServer(app, scfg.host, startup_timeout=scfg.startup_timeout) as url:
        result = serving.smoke(url, rows)
    ctx.log_json("smoke.json", result | {"model_uri": model_uri})
    ctx.card.add_checks([{"name": "smoke.status", "passed": True, "value": float(result["rows"]),
                          "expected": "HTTP 200 with one prediction per row", "note": "POST /invocations"}])
    ctx.card.outputs.update({k: v for k, v in result.items() if not isinstance(v, (list, dict))})
    mlflow.log_metric("serve.smoke_latency_ms", result["latency_ms"])
    ctx.summary(f"{result['rows']} rows -> 200 in {result['latency_ms']:.0f} ms")


def _test_rows(ctx: StepContext, model_uri: str, n: int):
    """Rows from the test split of the model's pipeline, else the model's own input example."""
    version = registry.version_for_uri(ctx.client, model_uri)
    preprocess_run_id = (version.tags or {}).get("lineage.preprocess_run_id") if version else None
    if preprocess_run_id:
        spec = handoff.read_json(ctx.client, preprocess_run_id, "feature_spec.json")
        test = handoff.read_frame(ctx.client, preprocess_run_id, "data/test.parquet")
        return test[spec["numeric"] + spec["categorical"]].head(n)
    from mlflow.models import Model

    example = Model.load(model_uri).load_input_example(mlflow.artifacts.download_artifacts(model_uri))
    return example.head(n)


if __name__ == "__main__":
    step_main("serve", run, extra_params=("model_uri",), cacheable=lambda cfg: cfg.serve.mode == "smoke")
