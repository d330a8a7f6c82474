"""gate: the team's gate on a member's candidate (docs/team.md#the-team-gate), run by the lead or CI:
its ONNX conversion scored on the team evaluation set (nothing of it unpickled or run), conf/qa's
thresholds and the team champion, and the verdict signed with the team's gate key (team.gate.key)."""

from mlpipe.data import sources
from mlpipe.errors import ConfigError, ModelValidationError
from mlpipe.pipeline.harness import step_main
from mlpipe.quality import assessment
from mlpipe.registry import provenance
from mlpipe.run import outputs
from mlpipe.run.context import StepContext
from mlpipe.team import gate, report


def run(ctx: StepContext) -> None:
    team, dcfg = ctx.cfg.team, ctx.cfg.data
    if not ctx.params["candidate"]:
        raise ConfigError("gate: no candidate: -P candidate=models:/<model>.<member>@champion (or /<version>)")
    if not team.name or not team.gate.experiment:
        raise ConfigError("the gate needs a team: team=<name> (conf/team/<name>.yaml), see docs/team.md")
    if ctx.client.get_experiment(ctx.run.info.experiment_id).name != team.gate.experiment:
        raise ConfigError(f"gate: its run must be in the team's gate experiment {team.gate.experiment!r} "
                          f"(team.gate.experiment): mlflow run . -e gate --experiment-name {team.gate.experiment}")
    features, truth = report.holdout(dcfg)
    task = sources.infer_task(truth, dcfg.task, dcfg.max_classes)
    result = gate.assess(ctx.client, ctx.params["candidate"], features, truth, task, ctx.cfg.qa, team, dcfg,
                         ctx.cfg.registry.champion_alias)
    failed = ",".join(c.name for c in result.failed)
    output = outputs.QaOutput(passed=not result.failed, model_uri=result.model_uri, task=task,
                              primary_metric=assessment.primary_metric(ctx.cfg.qa, task), failed_checks=failed,
                              champion_replaced=False, model_digest=result.digest)
    ctx.card.inputs.update({"candidate": f"{result.candidate} (version {result.version.version} of "
                                         f"{result.version.name})", "model": result.model_uri,
                            "evaluation set": f"{len(truth)} held-out rows of {dcfg.source}"})
    ctx.card.add_checks([c.as_dict() for c in result.checks])
    ctx.log_metrics({f"gate.{k}": v for k, v in result.metrics.items()})
    signed = provenance.verdict_tags(output, ctx.run, {"signing_key": team.gate.key}, step="gate") \
        if result.digest else {}
    ctx.hand_over(output, signed)
    ctx.card.outputs.update({"passed": not result.failed, "signed": bool(signed)})
    if result.failed:
        raise ModelValidationError(f"the team gate refused {result.candidate}: "
                                   + "; ".join(c.describe() for c in result.failed))
    ctx.summary(f"{result.candidate} passed: " + ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items()))


if __name__ == "__main__":
    step_main("gate", run, extra_params=("candidate",), cacheable=lambda cfg: False)
