"""train: cross-validate, fit on the training split, log the model (raw rows in) with metrics."""

import re

from mlpipe.data import features
from mlpipe.reports import sections
from mlpipe.run import outputs
from mlpipe.pipeline.harness import step_main
from mlpipe.run.context import StepContext
from mlpipe.training import estimators, model_io, onnx_export


def run(ctx: StepContext) -> None:
    splits = ctx.upstream_output(outputs.PreprocessOutput)
    spec = features.FeatureSpec.from_dict(ctx.upstream_json(outputs.FEATURE_SPEC_ARTIFACT))
    train = ctx.upstream_frame("train")
    ctx.log_dataset(train, source=ctx.artifact_source(outputs.split_artifact("train"), ctx.upstream),
                    targets=spec.target, name=f"{ctx.cfg.data.name}-train", digest=splits.train_digest,
                    context="training")
    preprocessor = model_io.load_transformer(ctx.client, ctx.upstream, outputs.TRANSFORMER_NAME, ctx.workdir,
                                             ctx.cfg.serialization, ctx.cfg.skops_trusted_types, ctx.cfg.trust)
    estimator = estimators.build_estimator(ctx.section("model"), spec.task)
    metric = estimators.metric_name(spec.task, ctx.cfg.train.metric)

    X, y = train[spec.columns], train[spec.target].copy()
    cv = estimators.cross_validate(preprocessor, estimator, X, y, spec.task, ctx.cfg.train.cv_folds, metric, ctx.cfg.seed)
    example, rows = X.head(ctx.cfg.train.input_example_rows).copy(), len(X)  # copies: a view would keep every column alive
    transformed = estimators.transform(preprocessor, X)
    # The raw rows go before the estimator fits on their transform (at 1M rows: 109 MB off the
    # step's peak), and the validation split is read once they are gone.
    del train, X
    model, predicted = estimators.fit_transformed(preprocessor, estimator, transformed, y)
    del transformed

    scores = {f"train.{k}": v for k, v in estimators.score(spec.task, y, predicted).items()}
    validation = ctx.upstream_frame("validation")
    scores |= {f"validation.{k}": v for k, v in
               estimators.score(spec.task, validation[spec.target], model.predict(validation[spec.columns])).items()}
    del validation
    if len(cv):
        scores |= {f"cv.{metric}_mean": float(cv.mean()), f"cv.{metric}_std": float(cv.std())}
    ctx.log_metrics(scores)
    sections.train(ctx.card, model, cv, metric, scores)

    fmt = model_io.check_format(ctx.cfg.serialization)
    name = re.sub(r"[^\w-]", "_", f"{ctx.cfg.data.name}-{type(estimator).__name__}")  # its name in MLflow's UI
    onnx = onnx_export.logged_files(model, spec.numeric, spec.categorical, spec.task, ctx.cfg.train.onnx.opset,
                                    ctx.cfg.train.onnx.ml_opset) if ctx.cfg.runtime == "onnx" else {}
    model_uri = ctx.log_model(model, example, name, files=onnx,
                              serialization_format=fmt, pip_requirements=model_io.pip_requirements(fmt),
                              skops_trusted_types=model_io.trusted_types(model, ctx.cfg.skops_trusted_types) if fmt == "skops" else None)
    ctx.hand_over(outputs.TrainOutput(model_uri=model_uri, task=spec.task, model_class=type(estimator).__name__,
                                      preprocess_run_id=ctx.upstream.info.run_id))
    ctx.card.outputs.update({"model_uri": model_uri, "model": type(estimator).__name__,
                             "train rows": rows, "features": len(spec.columns),
                             "onnx": onnx_export.describe(onnx) if onnx else "runtime=sklearn: none"})
    ctx.summary(f"validation.{metric}={scores[f'validation.{metric}']:.4f}")


if __name__ == "__main__":
    step_main("train", run)
