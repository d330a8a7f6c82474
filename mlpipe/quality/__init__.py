"""Quality: data validation and the stored reference schema, drift against the training split,
and the model gate (metric names and directions, checks, the MLflow evaluation edge).

Pure checks return `gate.Check`s; only `model_checks` and `schema_store` touch MLflow.
May import: `mlpipe.errors`, `mlpipe.config`, `mlpipe.data`, `mlpipe.registry`, `mlpipe.run.handoff`.
"""
