"""serve: a model server for one or more variants (A/B tests), or the A/B report.

serve.mode=forever serves until SIGINT/SIGTERM; serve.mode=smoke (what main uses) starts it on a
free port, sends test rows to /invocations over HTTP, checks the answers and stops;
serve.mode=report computes the A/B report over the serving records (mlpipe/serving/abreport.py)."""

from mlpipe.errors import ConfigError
from mlpipe.run import outputs
from mlpipe.pipeline.harness import step_main
from mlpipe.run.context import StepContext
from mlpipe.serving import abreport, abtest, app, server, smoke, variants
from mlpipe.serving.records import db, reads
from mlpipe.serving.spec import ServeSpec
from mlpipe.team import members


def run(ctx: StepContext) -> None:
    scfg, rcfg = ctx.section("serve"), ctx.cfg.registry
    if scfg["mode"] == "report":
        return report(ctx, scfg)
    if scfg["mode"] not in ("forever", "smoke"):
        raise ConfigError(f"serve.mode={scfg['mode']!r}; expected forever, smoke or report")
    model_uri = ctx.params["model_uri"] or f"models:/{rcfg.model_name}@{rcfg.champion_alias}"
    if scfg["team_variants"]:  # every member's champion, an arm each (docs/team.md)
        scfg = {**scfg, "variants": members.champions(ctx.client, ctx.cfg.team, rcfg.champion_alias)}
    records_file = ctx.workdir / "smoke-records.db" if scfg["mode"] == "smoke" else \
        abreport.records_path(scfg, ctx.tracking_uri)  # the smoke test's requests are not A/B traffic
    spec = ServeSpec.from_config(scfg, model_uri, str(records_file), *ctx.trust, ctx.cfg.trust, ctx.cfg.team)
    served = variants.load_variants(spec)
    ctx.set_tags({outputs.MODEL_URI_TAG: served[0].model_uri}
                 | {f"serve.variant.{v.name}": f"{v.model_uri} (version {v.version}, weight {v.weight:g})"
                    for v in served})
    ctx.card.inputs.update({"variants": ", ".join(f"{v.name}={v.model_uri}" for v in served),
                            "serve.mode": scfg["mode"], "records": db.display(records_file)})
    if scfg["mode"] == "forever":
        server.check_startable(spec, scfg)
        print(f"[mlpipe] serving {', '.join(f'{v.name}={v.model_uri} (v{v.version})' for v in served)} on "
              f"http://{scfg['host']}:{scfg['port']} with {scfg['workers']} worker(s); records: {db.display(records_file)}",
              flush=True)
        stopped_by = server.serve(spec, served, scfg)
        ctx.set_tags({outputs.STOPPED_BY_TAG: stopped_by or "exit"})
        if stopped_by == "SIGINT":  # Ctrl-C: `mlflow run` would leave the run FAILED
            ctx.finished_after_interrupt()
        ctx.summary(f"served until {stopped_by or 'exit'}")
        return
    rows = smoke.test_rows(ctx.client, served[0].model_uri, scfg["smoke_rows"])
    result = smoke.smoke_test(app.create_app(spec, served), scfg, rows)
    ctx.log_json("smoke.json", result | {"model_uri": served[0].model_uri})
    ctx.card.add_checks([{"name": "smoke.status", "passed": True, "value": float(result["rows"]),
                          "expected": "HTTP 200 with one prediction per row", "note": "POST /invocations"}])
    ctx.card.outputs.update({k: v for k, v in result.items() if not isinstance(v, (list, dict))})
    ctx.log_metrics({"serve.smoke_latency_ms": result["latency_ms"]})
    ctx.summary(f"{result['rows']} rows -> 200 in {result['latency_ms']:.0f} ms")


def report(ctx: StepContext, scfg: dict) -> None:
    """serve.mode=report: the A/B report over the records, and with serve.ab.promote the champion moved."""
    rcfg, ab = ctx.section("registry"), scfg["ab"]
    path = abreport.records_path(scfg, ctx.tracking_uri)
    configured = [v["name"] for v in abtest.configured_variants(scfg) or [] if isinstance(v, dict)]
    served = reads.served_models(path, scfg["experiment"], scfg["records_timeout_s"])
    task = ab["task"] or abreport.task_of(ctx.client, served, ab.get("control") or next(iter(served), None))
    result = abreport.build(path, scfg["experiment"], ab, configured, task, scfg["records_timeout_s"])
    ctx.card.inputs.update({"records": db.display(path), "experiment": scfg["experiment"], "task": task})
    ctx.log_json("ab/report.json", {k: v for k, v in result.items() if k != "latencies"})
    abreport.fill_card(ctx.card, result, ab)
    ctx.log_metrics(abreport.arm_metrics(result))
    tags = {"ab.recommendation": result["recommendation"][:5000], "ab.winner": result["winner"] or "none"}
    moved = abreport.promote_winner(ctx.client, result, served, rcfg, ctx.cfg.team, ctx.cfg.trust) if ab["promote"] else None
    if moved:
        tags |= {"ab.promoted_version": moved["version"], "ab.previous_version": moved["previous_version"]}
        ctx.card.outputs["promoted"] = f"{moved['model']}@{moved['alias']}: {moved['previous_version']} -> " \
                                       f"{moved['version']}"
    ctx.set_tags(tags)
    print(abreport.format_report(result), abreport.promotion_line(ab["promote"], moved, result), sep="\n", flush=True)
    ctx.summary(result["recommendation"][:200])


if __name__ == "__main__":
    step_main("serve", run, extra_params=("model_uri",), cacheable=lambda cfg: cfg.serve.mode == "smoke")
