"""qa: the gate's checks (conf/qa), its report logged before it fails, its verdict signed."""

import sys

from mlpipe.data import features, sources
from mlpipe.errors import ModelValidationError, one_line
from mlpipe.pipeline.harness import step_main
from mlpipe.quality import assessment, parity
from mlpipe.registry import champion, provenance
from mlpipe.reports import sections
from mlpipe.run import outputs
from mlpipe.run.context import StepContext
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

    # Loaded past the trust boundary, not by evaluate(); serve and register check the files against its digest.
    model, digest = model_io.load_model(trained.model_uri, *ctx.trust)
    evaluation = ctx.evaluate(model, test, spec.target, trained.task, qa.plot_dpi)
    onnx, served = parity.of_logged_model(trained.model_uri, digest, model.get_raw_model(), test[spec.columns],
                                          trained.task, qa.onnx) if ctx.cfg.runtime == "onnx" else (None, None)
    evidence = assessment.Evidence(evaluation.metrics, _champion(ctx, trained, test, spec.target),
                                   model_io.answer_serving_input(model, trained.model_uri, served), onnx, served)
    result = assessment.assess(qa, model, trained.model_uri, trained.task, train[spec.target], test, spec.target,
                               ctx.upstream.data.metrics, evidence, _drift_inputs(ctx, splits_run.info.run_id, spec, test))
    ctx.log_json(outputs.QA_REPORT_ARTIFACT, result.report)
    if result.classes:
        ctx.log_json("confusion_matrix.json", {"labels": result.classes["labels"], "matrix": result.classes["confusion_matrix"]})
    ctx.log_metrics(result.metrics)
    ctx.card.add_checks(result.checks)
    sections.qa(ctx.card, result.report, result.truth, result.predictions, evaluation.images)
    ctx.card.outputs.update({"passed": not result.failed, result.primary: result.primary_value, "report": outputs.QA_REPORT_ARTIFACT})
    output = outputs.QaOutput(passed=not result.failed, model_uri=trained.model_uri, task=trained.task,
                              primary_metric=result.primary, failed_checks=",".join(c.name for c in result.failed),
                              champion_replaced=bool(result.report["champion"].get("replaced")), model_digest=digest)
    ctx.hand_over(output, provenance.verdict_tags(output, ctx.run, ctx.cfg.trust))  # mlpipe/signing.py
    if result.failed and not qa.allow_unvalidated:
        raise ModelValidationError(assessment.failure_message(result, trained.model_uri, trained.task))
    if result.failed:
        print(f"warning: qa: {assessment.failure_message(result, trained.model_uri, trained.task)} "
              "(registry.allow_unvalidated=true: the run finishes)", file=sys.stderr)
    ctx.summary(assessment.summary_line(result))


def _champion(ctx: StepContext, trained, test, target: str) -> champion.Champion | None:
    """The champion, past the trust boundary, evaluated on the same rows in a nested run (plots on no card)."""
    rcfg = ctx.cfg.registry
    found = champion.find(ctx.client, rcfg.model_name, rcfg.champion_alias, trained.model_uri, trained.task, test,
                          target, ctx.trust, ctx.cfg.trust) if ctx.cfg.qa.champion.enabled else None
    try:
        if found is not None and found.model is not None:
            found.metrics = ctx.evaluate(found.model, test, target, trained.task, ctx.cfg.qa.champion.plot_dpi,
                                         nested=f"qa: {rcfg.model_name} v{found.version} on this test split").metrics
    except Exception as exc:  # noqa: BLE001 - a champion this data cannot score is a decision of the gate
        found.reason = f"the champion could not be evaluated on this data: {one_line(exc)[:300]}"
    return found


def _drift_inputs(ctx: StepContext, splits_run_id: str, spec, test) -> assessment.DriftInputs | None:
    """preprocess's drift reference, the test split and the qa.data_source batch, when drift is on."""
    source = ctx.cfg.qa.data_source
    batches = {"test": test} | ({"batch": sources.load_batch(source, spec.numeric, spec.categorical)} if source else {})
    return assessment.DriftInputs(ctx.upstream_json(outputs.DRIFT_PROFILE_ARTIFACT, splits_run_id),
                                  ctx.upstream_frame("drift_reference", splits_run_id), batches,
                                  str(source) if source else None) if ctx.cfg.qa.drift.enabled else None


if __name__ == "__main__":
    step_main("qa", run)
