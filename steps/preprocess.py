"""preprocess: type the columns, split train/validation/test, fit the imputing/encoding transformer."""

from mlpipe.data import features, fit_worker, outliers, sources
from mlpipe.quality import drift
from mlpipe.reports import sections
from mlpipe.run import outputs
from mlpipe.pipeline.harness import step_main
from mlpipe.run.context import StepContext
from mlpipe.training import model_io


def log_split(ctx: StepContext, spec: features.FeatureSpec, name: str, part) -> tuple[str, str]:
    """One split as a Parquet artifact and as the run's MLflow dataset input: (local path, digest)."""
    local = ctx.workdir / ctx.log_frame(name, part[spec.columns + [spec.target]])
    digest = sources.frame_digest(part)
    ctx.log_dataset(part, source=ctx.artifact_source(outputs.split_artifact(name)), targets=spec.target,
                    name=f"{ctx.cfg.data.name}-{name}", digest=digest, context=name)
    return local, digest


def run(ctx: StepContext) -> None:
    task = ctx.upstream_output(outputs.IngestOutput).task
    profile = ctx.upstream_json(outputs.PROFILE_ARTIFACT)
    frame = ctx.upstream_frame("raw")
    spec = features.feature_spec(frame, profile["target"], task)
    frame = features.normalise_types(frame, spec)
    pcfg = ctx.section("preprocess")
    # consume: the columns move into the splits one at a time, so one set of rows is in memory
    splits = features.split(frame, spec, pcfg, ctx.cfg.seed, consume=True)

    # The drift reference: the training split as it came in (before any outlier action).
    reference = splits["train"][spec.columns]
    ctx.log_json(outputs.DRIFT_PROFILE_ARTIFACT,
                 drift.reference_profile(reference, spec.numeric, spec.categorical, pcfg["drift"]["bins"]))
    if len(reference) > pcfg["drift"]["reference_rows"]:
        reference = reference.sample(pcfg["drift"]["reference_rows"], random_state=ctx.cfg.seed)
    ctx.log_frame("drift_reference", reference)

    # Outliers: bounds and counts from the training split, the action applied to it alone.
    ocfg = pcfg["outliers"]
    limits = outliers.bounds(splits["train"], spec.numeric, ocfg)
    report = outliers.report(splits["train"], limits, ocfg)
    splits["train"] = outliers.apply(splits["train"], limits, ocfg["action"])
    ctx.log_json("outliers.json", report)
    sections.preprocess(ctx.card, splits, spec.target, spec.task, report)
    ctx.log_metrics({"outliers.train_rows_with_outliers": report["rows_with_outliers"],
                     "outliers.train_values": sum(c["count"] for c in report["columns"].values()),
                     "outliers.train_rows_dropped": report["rows"] - len(splits["train"])})

    rows = {name: len(part) for name, part in splits.items()}
    logged = {name: log_split(ctx, spec, name, splits[name]) for name in rows}
    train = splits.pop("train")
    del splits  # logged: only the training rows stay in memory for the fit

    train_mb = train.memory_usage(deep=True).sum() / 2**20
    if fit_worker.wanted(train_mb, pcfg["fit_worker_min_mb"]):
        del train, reference  # the worker reads the logged training split; this process lets its rows go
        preprocessor, fitted_in = fit_worker.fit_in_worker(spec, pcfg, logged["train"][0], ctx.workdir), "worker"
    else:
        preprocessor, fitted_in = features.fit_preprocessor(spec, pcfg, train), "step"
    ctx.log_json(outputs.FEATURE_SPEC_ARTIFACT, spec.to_dict())
    transformer = model_io.save_transformer(preprocessor, ctx.workdir, outputs.TRANSFORMER_NAME, ctx.cfg.serialization)
    ctx.log_files(transformer)
    ctx.log_metrics({f"split.{name}_rows": n for name, n in rows.items()}
                    | {"features.out": len(preprocessor.get_feature_names_out())})
    ctx.hand_over(outputs.PreprocessOutput(task=spec.task, fitted_in=fitted_in,
                                           **{f"{name}_digest": logged[name][1] for name in outputs.SPLITS}),
                  model_io.seal_tags(transformer, ctx.run, ctx.cfg.trust))  # train checks it before unpickling
    ctx.card.outputs.update({f"{name} rows": n for name, n in rows.items()}
                            | {"numeric columns": len(spec.numeric), "categorical columns": len(spec.categorical),
                               "dropped (empty) columns": ", ".join(spec.dropped) or "none",
                               "drift reference": f"{outputs.DRIFT_PROFILE_ARTIFACT}, {outputs.DRIFT_REFERENCE_ARTIFACT}",
                               "transformer fitted in": f"{fitted_in} ({train_mb:.1f} MB of training rows)"})
    ctx.summary(" ".join(f"{name}={n}" for name, n in rows.items()))


if __name__ == "__main__":
    step_main("preprocess", run)
