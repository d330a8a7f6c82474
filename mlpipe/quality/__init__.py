"""Quality: data validation, drift against the training split, and the model gate (checks,
the baseline test, the champion comparison, inference and overfitting checks).

Pure: frames, predictions, metric values and config in; `gate.Check`s and reports out. No MLflow,
no registry, no tracking store: the qa step evaluates, reads the champion and logs (through
`StepContext`). May import: `mlpipe.errors`, `mlpipe.config`, `mlpipe.data`, `mlpipe.training`.
"""
