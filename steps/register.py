"""register: register the qa-passed model with lineage tags, set challenger, maybe move champion."""

from mlpipe.errors import ModelValidationError
from mlpipe.training import metric_names
from mlpipe import signing
from mlpipe.registry import promotion, provenance, versions
from mlpipe.run import handoff, outputs
from mlpipe.pipeline.harness import step_main
from mlpipe.run.context import StepContext


def run(ctx: StepContext) -> None:
    qa, rcfg = ctx.upstream_output(outputs.QaOutput), ctx.cfg.registry
    # the gate's signed word, not the run's tags (registry/provenance.py)
    verdict = provenance.signed_verdict(ctx.upstream, signing.keyring(ctx.cfg.trust), f"qa run {ctx.upstream.info.run_id}",
                                        "nothing registered; rerun qa")
    validated = verdict.passed
    ctx.card.add_checks([{"name": "qa.passed", "passed": validated, "value": None, "expected": "true",
                          "note": f"failed checks: {qa.failed_checks or 'none'}"
                                  + (" (registry.allow_unvalidated=true)" if rcfg.allow_unvalidated else "")}])
    if not validated and not rcfg.allow_unvalidated:
        raise ModelValidationError(f"qa run {ctx.upstream.info.run_id} did not pass the gate "
                                   f"(failed: {qa.failed_checks or 'unknown'}); nothing registered. "
                                   "To register it anyway: registry.allow_unvalidated=true")
    model_uri = verdict.model_uri
    # the very files qa validated, not files swapped since
    provenance.check_files(model_uri, verdict.digest, "nothing registered; rerun train and qa")
    metric = rcfg.compare_metric or qa.primary_metric
    value = ctx.upstream.data.metrics.get(f"qa.{metric}")

    with versions.promotion_lock(rcfg.model_name, rcfg.lock_timeout_s):
        champion = versions.current(ctx.client, rcfg.model_name, rcfg.champion_alias)
        champion_value = versions.version_metric(champion, metric) if champion else None
        decision = promotion.decide(rcfg.promotion, metric, value, champion_value,
                                    metric_names.greater_is_better(metric), champion is not None, validated,
                                    replaces=qa.champion_replaced)

        lineage = handoff.lineage(ctx.run) | {f"qa.{metric}": "" if value is None else str(value),
                                              outputs.VERSION_METRIC_TAG: metric, "code.git_commit": ctx.run.data.tags.get("mlflow.source.git.commit", "")}
        author = {outputs.MEMBER_TAG: ctx.cfg.team.member} if ctx.cfg.team.member else {}
        author |= {outputs.LOOP_ORIGIN_TAG: str(ctx.cfg.loop.origin)} if ctx.cfg.loop.origin else {}
        version = versions.register(model_uri, rcfg.model_name, lineage | author | {
            "pipeline.register_run_id": ctx.run_id, "qa.passed": str(validated).lower()})
        if validated:
            versions.set_alias(ctx.client, rcfg.model_name, rcfg.challenger_alias, version.version)
        if decision.promote:
            versions.set_alias(ctx.client, rcfg.model_name, rcfg.champion_alias, version.version)
    version_uri = f"models:/{rcfg.model_name}/{version.version}"
    ctx.hand_over(outputs.RegisterOutput(model_name=rcfg.model_name, version=int(version.version),
                                         promoted=decision.promote, reason=decision.reason, model_uri=version_uri))
    ctx.card.inputs.update({"model_uri": model_uri, f"qa.{metric}": value,
                            f"champion ({rcfg.champion_alias})": f"v{champion.version}" if champion else "none",
                            f"champion qa.{metric}": champion_value})
    ctx.card.outputs.update({"registered": f"{rcfg.model_name} v{version.version}", "promoted": decision.promote,
                             "reason": decision.reason,
                             "aliases": ", ".join(a for a, on in ((rcfg.champion_alias, decision.promote),
                                                                  (rcfg.challenger_alias, validated)) if on) or "none"})
    role = "champion" if decision.promote else rcfg.challenger_alias if validated else "no alias"
    ctx.summary(f"v{version.version} {role}: {decision.reason}")


if __name__ == "__main__":
    step_main("register", run)
