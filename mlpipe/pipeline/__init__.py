"""Pipeline wiring: the step table and the cache keys that decide reuse, the step harness around
every step's recipe, the driver behind `-e main` that chains steps with `mlflow.run` (on this
machine or as Kubernetes Jobs: backends.py), one pipeline job, Hydra sweeps, and the warm helper
that step processes hand their work to.

The top of the package: nothing here fits, scores or serves a model, but the keys read the data
and the registry. May import: `mlpipe.errors`, `mlpipe.config`, `mlpipe.run`, `mlpipe.reports`,
`mlpipe.data`, `mlpipe.registry`, `mlpipe.training.metric_names` (a sweep's direction).
"""
