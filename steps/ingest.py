"""ingest: read `data.source`, validate it against its schema, hand it over as Parquet with its lineage."""

from mlpipe.data import sources
from mlpipe.data.rows import duplicated_rows, held_out
from mlpipe.errors import DataError
from mlpipe.pipeline import key_inputs
from mlpipe.quality import validation
from mlpipe.reports import sections
from mlpipe.run import outputs
from mlpipe.pipeline.harness import step_main
from mlpipe.run.context import StepContext


def run(ctx: StepContext) -> None:
    dcfg, vcfg = ctx.cfg.data, ctx.section("data.validation")
    digest = key_inputs.data_digest(ctx.key_input)
    ctx.card.inputs.update({"data.source": str(dcfg.source), "data digest": digest}
                           | ({"data.append": ", ".join(map(str, dcfg.append))} if dcfg.append else {}))
    source = sources.parse_source(dcfg.source)
    frame = sources.load_with_appended(dcfg.source, list(dcfg.append), dcfg.target)
    held = held_out(frame, dcfg.holdout_fraction)  # the team's evaluation set: never trained on
    frame = frame[~held].reset_index(drop=True)
    ctx.log_metrics({"data.holdout_rows": int(held.sum())})
    sources.check_frame(frame, dcfg.target, dcfg.min_rows, label=str(dcfg.source))
    task = sources.infer_task(frame[dcfg.target], dcfg.task, dcfg.max_classes)

    schema, schema_from = _reference_schema(ctx)
    duplicated = duplicated_rows(frame)  # one row hash: the duplicate check and the profile's count
    failures = validation.all_failures(frame, schema, dcfg.target, task, vcfg, duplicated)
    if schema is None:
        schema, schema_from = validation.infer_schema(frame, vcfg), "inferred"
    ctx.set_tags({outputs.SCHEMA_FROM_TAG: schema_from})
    ctx.log_text(validation.schema_to_yaml(schema), outputs.SCHEMA_ARTIFACT)
    ctx.log_metrics({"validation.failures": len(failures)})
    ctx.card.inputs["schema"] = schema_from
    sections.ingest(ctx.card, frame, dcfg.target, task, failures, schema_from)
    if len(failures):
        ctx.log_text(failures.to_csv(index=False), "validation/failures.csv")
        against = "the first-ingest checks" if schema_from == "inferred" else f"the schema from {schema_from}"
        raise DataError(validation.summarise(failures, str(dcfg.source), against, vcfg["summary_items"]))
    ctx.set_tags({outputs.SCHEMA_STORED_TAG: "true"})

    ctx.log_frame("raw", frame)
    ctx.log_dataset(frame, source=_dataset_source(ctx, source), targets=dcfg.target, name=dcfg.name,
                    digest=sources.frame_digest(frame), context="ingest")
    profile = sources.profile(frame, dcfg, task, int(duplicated.sum()))
    ctx.log_json(outputs.PROFILE_ARTIFACT, profile)
    ctx.log_metrics({"data.rows": frame.shape[0], "data.columns": frame.shape[1], "data.duplicate_rows": profile["duplicate_rows"],
                     "data.memory_mb": float(frame.memory_usage(deep=True).sum()) / 2**20})
    ctx.hand_over(outputs.IngestOutput(task=task, data_source=str(dcfg.source), data_digest=digest))
    ctx.card.outputs.update({"rows": frame.shape[0], "columns": frame.shape[1], "task": task,
                             "data": outputs.RAW_ARTIFACT, "schema": outputs.SCHEMA_ARTIFACT})
    ctx.summary(f"rows={frame.shape[0]} task={task}")


def _reference_schema(ctx: StepContext):
    """(schema, where it came from): data.schema if set, else the newest stored one, else (None, "inferred")."""
    if ctx.cfg.data.schema:
        text = validation.read_configured(ctx.cfg.data.schema)
        return validation.schema_from_yaml(text, ctx.cfg.data.schema), ctx.cfg.data.schema
    stored = ctx.newest_artifact("ingest", {outputs.SCHEMA_STORED_TAG: "true"}, {"data.source": str(ctx.cfg.data.source)},
                                 outputs.SCHEMA_ARTIFACT)
    if stored is None:
        return None, "inferred"
    run_id, text = stored
    return validation.schema_from_yaml(text, f"{outputs.SCHEMA_ARTIFACT} of run {run_id}"), run_id


def _dataset_source(ctx: StepContext, source: sources.Source) -> str:
    """MLflow needs a real URI; bundled data is recorded as the Parquet copy this run logged."""
    if source.kind == "sklearn":
        return ctx.artifact_source(outputs.RAW_ARTIFACT)
    return source.uri


if __name__ == "__main__":
    step_main("ingest", run)
