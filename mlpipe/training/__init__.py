"""Training: the estimator built from config, cross-validation, fitting and scoring, and how
fitted scikit-learn objects are saved and loaded (cloudpickle or skops).

May import: `mlpipe.errors`, `mlpipe.config`, `mlpipe.data`, `mlpipe.quality.metric_names`,
`mlpipe.run.handoff` (reading a fitted object back from its run).
"""
