"""ingest: read `data.source`, check it, hand it over as Parquet with its dataset lineage."""

import mlflow

from mlpipe import data
from mlpipe.harness import StepContext, step_main


def run(ctx: StepContext) -> None:
    dcfg = ctx.cfg.data
    source = data.parse_source(dcfg.source)
    frame = data.load_source(dcfg.source)
    data.check_frame(frame, dcfg.target, dcfg.min_rows, label=str(dcfg.source))
    task = data.infer_task(frame[dcfg.target], dcfg.task, dcfg.max_classes)

    ctx.log_frame("raw", frame)
    dataset = mlflow.data.from_pandas(
        frame, source=_dataset_source(ctx, source), targets=dcfg.target, name=dcfg.name
    )
    mlflow.log_input(dataset, context="ingest")
    profile = {
        "source": str(dcfg.source),
        "target": dcfg.target,
        "task": task,
        "rows": int(frame.shape[0]),
        "columns": [str(c) for c in frame.columns],
        "dtypes": {str(c): str(t) for c, t in frame.dtypes.items()},
        "missing": {str(c): int(n) for c, n in frame.isna().sum().items() if n},
    }
    ctx.log_json("data_profile.json", profile)
    mlflow.log_metrics({"data.rows": frame.shape[0], "data.columns": frame.shape[1]})
    mlflow.set_tags({"data.task": task, "lineage.data_source": str(dcfg.source)})
    ctx.summary(f"rows={frame.shape[0]} task={task}")


def _dataset_source(ctx: StepContext, source: data.Source) -> str:
    """MLflow needs a real URI; bundled data is recorded as the Parquet copy this run logged."""
    if source.kind == "sklearn":
        return f"{ctx.run.info.artifact_uri}/data/raw.parquet"
    return source.uri


if __name__ == "__main__":
    step_main("ingest", run, data_digest=lambda cfg: data.source_digest(cfg.data.source))
