"""Training: the metric names and their directions, the estimator built from config,
cross-validation, fitting and scoring, and how fitted scikit-learn objects and logged models
are saved, loaded and checked (cloudpickle or skops; the serving payload round trip).

May import: `mlpipe.errors`, `mlpipe.config`, `mlpipe.signing`, `mlpipe.data`, `mlpipe.run.handoff` (a fitted
object read back from its run).
"""
