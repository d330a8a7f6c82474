"""Run handling: the harness (the one writer of a step's run), the typed outputs each step hands
to the next (`outputs`) and how they travel (`handoff`), resource monitoring and artifact storage.

May import: `mlpipe.config`, `mlpipe.errors`, `mlpipe.pipeline` (step table, cache keys),
`mlpipe.data.frames` and `mlpipe.reports`. Steps import the harness; core packages do not.
"""
