"""qa: the model against a trivial baseline, conf/qa thresholds and the champion on the same test
rows, overfitting gaps, per-class recall, inference and drift checks; the report is logged before it fails."""

import sys

from mlpipe.data import features, sources
from mlpipe.errors import ModelValidationError
from mlpipe.quality import assessment, gate
from mlpipe.reports import sections
from mlpipe.run import outputs
from mlpipe.run.harness import StepContext, step_main
from mlpipe.training import model_io


def run(ctx: StepContext) -> None:
    trained, qa = ctx.upstream_output(outputs.TrainOutput), ctx.cfg.qa
    splits_run = ctx.client.get_run(trained.preprocess_run_id)
    splits = ctx.upstream_output(outputs.PreprocessOutput, splits_run)
    train, test = (ctx.upstream_frame(name, splits_run.info.run_id) for name in ("train", "test"))
    spec = features.FeatureSpec.from_dict(ctx.upstream_json(outputs.FEATURE_SPEC_ARTIFACT, splits_run.info.run_id))
    ctx.log_dataset(test, source=ctx.artifact_source(outputs.split_artifact("test"), splits_run), targets=spec.target,
                    name=f"{ctx.cfg.data.name}-test", digest=splits.test_digest, context="evaluation")
    ctx.card.inputs.update({"model_uri": trained.model_uri, "test rows": len(test),
                            "preprocess run": splits_run.info.run_id, "qa.data_source": qa.data_source or "none"})
    assessment.primary_metric(qa, trained.task)  # a bad qa.primary_metric fails before the model loads

    # Loaded here, past the trust boundary, not by evaluate() (its 1 s environment check is not needed);
    # the digest of the files it validates is what serve and register check the model against later.
    model, digest = model_io.load_model(trained.model_uri, ctx.cfg.serialization, ctx.cfg.skops_trusted_types)
    result = assessment.assess(ctx.client, qa, ctx.cfg.registry, model, trained.model_uri, trained.task,
                               train[spec.target], test, spec.target, ctx.upstream.data.metrics,
                               _drift_inputs(ctx, splits_run.info.run_id, spec, test),
                               (ctx.cfg.serialization, ctx.cfg.skops_trusted_types))

    ctx.log_json("qa_report.json", result.report)
    if result.classes:
        ctx.log_json("confusion_matrix.json", {"labels": result.classes["labels"],
                                               "matrix": result.classes["confusion_matrix"]})
    ctx.log_metrics(result.metrics)
    ctx.card.add_checks(result.checks)
    sections.qa(ctx.card, result.report, result.truth, result.predictions, result.images)
    passed = not result.failed
    ctx.card.outputs.update({"passed": passed, result.primary: result.primary_value, "report": "qa_report.json"})
    ctx.hand_over(outputs.QaOutput(passed=passed, model_uri=trained.model_uri, task=trained.task,
                                   primary_metric=result.primary,
                                   failed_checks=",".join(c.name for c in result.failed),
                                   champion_replaced=bool(result.report["champion"].get("replaced")),
                                   model_digest=digest))
    message = (f"model {trained.model_uri} failed the qa gate on {len(test)} test rows: "
               + gate.failure_line(result.failed, trained.task))
    if result.failed and not qa.allow_unvalidated:
        raise ModelValidationError(message)
    if result.failed:
        print(f"warning: qa: {message} (registry.allow_unvalidated=true: the run finishes)", file=sys.stderr)
    shown = "missing" if result.primary_value is None else f"{result.primary_value:.4f}"
    ctx.summary(f"{result.primary}={shown} lift={result.baseline.lift:+.4f} p={result.baseline.p_value:.2g}"
                + (f" FAILED {len(result.failed)} checks (registry.allow_unvalidated)" if result.failed else ""))


def _drift_inputs(ctx: StepContext, splits_run_id: str, spec, test) -> assessment.DriftInputs | None:
    """preprocess's drift reference, the test split and the qa.data_source batch, when drift is on."""
    qa = ctx.cfg.qa
    if not qa.drift.enabled:
        return None
    batches = {"test": test}
    if qa.data_source:
        batches["batch"] = sources.load_batch(qa.data_source, spec.numeric, spec.categorical)
    return assessment.DriftInputs(ctx.upstream_json(outputs.DRIFT_PROFILE_ARTIFACT, splits_run_id),
                                  ctx.upstream_frame("drift_reference", splits_run_id), batches,
                                  str(qa.data_source) if qa.data_source else None)


if __name__ == "__main__":
    step_main("qa", run)
