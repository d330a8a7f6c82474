"""serve: a model server for one or more variants (A/B tests), or the A/B report.

serve.mode=forever serves until SIGINT/SIGTERM; serve.mode=smoke (what main uses) starts it on a
free port, sends test rows to /invocations over HTTP, checks the answers and stops;
serve.mode=report computes the A/B report over the serving records (mlpipe/serving/abreport.py)."""

import mlflow

from mlpipe.errors import ConfigError
from mlpipe.registry import versions
from mlpipe.run import handoff
from mlpipe.run.harness import StepContext, step_main
from mlpipe.serving import abreport, abtest, records, smoke
from mlpipe.serving.server import ServeSpec, check_startable, create_app, load_variants, serve


def run(ctx: StepContext) -> None:
    scfg, rcfg = ctx.config["serve"], ctx.cfg.registry
    if scfg["mode"] == "report":
        return report(ctx, scfg)
    if scfg["mode"] not in ("forever", "smoke"):
        raise ConfigError(f"serve.mode={scfg['mode']!r}; expected forever, smoke or report")
    model_uri = ctx.params["model_uri"] or f"models:/{rcfg.model_name}@{rcfg.champion_alias}"
    records_file = abreport.records_path(scfg, mlflow.get_tracking_uri())
    if scfg["mode"] == "smoke":  # the smoke test's requests are not A/B traffic
        records_file = ctx.workdir / "smoke-records.db"
    spec = ServeSpec.from_config(scfg, model_uri, str(records_file))
    variants = load_variants(spec)
    mlflow.set_tag(handoff.MODEL_URI_TAG, variants[0].model_uri)
    mlflow.set_tags({f"serve.variant.{v.name}": f"{v.model_uri} (version {v.version}, weight {v.weight:g})"
                     for v in variants})
    ctx.card.inputs.update({"variants": ", ".join(f"{v.name}={v.model_uri}" for v in variants),
                            "serve.mode": scfg["mode"], "records": str(records_file)})
    if scfg["mode"] == "forever":
        check_startable(spec, scfg)
        print(f"[mlpipe] serving {', '.join(f'{v.name}={v.model_uri} (v{v.version})' for v in variants)} on "
              f"http://{scfg['host']}:{scfg['port']} with {scfg['workers']} worker(s); records: {records_file}",
              flush=True)
        stopped_by = serve(spec, variants, scfg)
        mlflow.set_tag("serve.stopped_by", stopped_by or "exit")
        ctx.summary(f"served until {stopped_by or 'exit'}")
        return
    rows = _test_rows(ctx, variants[0].model_uri, scfg["smoke_rows"])
    with smoke.BackgroundServer(create_app(spec, variants), scfg["host"],
                                  startup_timeout=scfg["startup_timeout"]) as url:
        result = smoke.smoke(url, rows)
    ctx.log_json("smoke.json", result | {"model_uri": variants[0].model_uri})
    ctx.card.add_checks([{"name": "smoke.status", "passed": True, "value": float(result["rows"]),
                          "expected": "HTTP 200 with one prediction per row", "note": "POST /invocations"}])
    ctx.card.outputs.update({k: v for k, v in result.items() if not isinstance(v, (list, dict))})
    mlflow.log_metric("serve.smoke_latency_ms", result["latency_ms"])
    ctx.summary(f"{result['rows']} rows -> 200 in {result['latency_ms']:.0f} ms")


def report(ctx: StepContext, scfg: dict) -> None:
    rcfg, ab = ctx.config["registry"], scfg["ab"]
    path = abreport.records_path(scfg, mlflow.get_tracking_uri())
    configured = [v["name"] for v in abtest.configured_variants(scfg) or [] if isinstance(v, dict)]
    served = records.served_models(path, scfg["experiment"])
    task = ab["task"] or _task_of(ctx, served, ab.get("control") or next(iter(served), None))
    result = abreport.build(path, scfg["experiment"], ab, configured, task)
    ctx.card.inputs.update({"records": str(path), "experiment": scfg["experiment"], "task": task})
    ctx.log_json("ab/report.json", {k: v for k, v in result.items() if k != "latencies"})
    abreport.fill_card(ctx.card, result)
    metrics = {}
    for arm in result["arms"]:
        for key in ("requests", "labelled", "accuracy", "mae", "latency_p50_ms", "latency_p99_ms"):
            if key in arm and arm[key] == arm[key]:  # not NaN
                metrics[f"ab.{arm['variant']}.{key}"] = float(arm[key])
    mlflow.log_metrics(metrics)
    tags = {"ab.recommendation": result["recommendation"][:5000], "ab.winner": result["winner"] or "none"}
    if ab["promote"] and result["winner"]:
        moved = abreport.promote(ctx.client, result, served, rcfg["model_name"], rcfg["champion_alias"])
        tags |= {"ab.promoted_version": moved["version"], "ab.previous_version": moved["previous_version"]}
        ctx.card.outputs["promoted"] = f"{moved['model']}@{moved['alias']}: {moved['previous_version']} -> " \
                                       f"{moved['version']}"
    mlflow.set_tags(tags)
    ctx.summary(result["recommendation"][:200])


def _task_of(ctx: StepContext, served: dict, arm: str | None) -> str:
    """The task the control's model was trained for (its train run's `data.task` tag)."""
    if arm and arm in served:
        version = versions.version_for_uri(ctx.client, served[arm][0])
        if version is not None and version.run_id:
            task = ctx.client.get_run(version.run_id).data.tags.get("data.task")
            if task:
                return task
    raise ConfigError("cannot tell the A/B task from the served model; set serve.ab.task to classification or "
                      "regression")


def _test_rows(ctx: StepContext, model_uri: str, n: int):
    """Rows from the test split of the model's pipeline, else the model's own input example."""
    version = versions.version_for_uri(ctx.client, model_uri)
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
