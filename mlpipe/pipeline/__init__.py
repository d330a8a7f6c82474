"""Pipeline wiring: the step table, the driver behind `-e main` that chains steps with
`mlflow.run` (on this machine or as Kubernetes Jobs: backends.py), one pipeline job, Hydra
sweeps, and the cache keys that decide reuse.

May import: `mlpipe.config`, `mlpipe.errors`, `mlpipe.run`, `mlpipe.reports.cards`, the metric
directions of `mlpipe.quality.metric_names`, and the data and registry lookups that enter a
cache key. Nothing here fits, scores or serves a model.
"""
