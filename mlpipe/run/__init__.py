"""Run handling: the harness (the one writer of a step's run), typed hand-offs between steps,
resource monitoring and artifact storage.

May import: `mlpipe.config`, `mlpipe.errors`, `mlpipe.pipeline` (step table, cache keys),
`mlpipe.data.frames` and `mlpipe.reports`. Steps import the harness; core packages do not.
"""
