"""Run handling: a run's life (`lifecycle`: open one, fail one), what a step writes through
(`context.StepContext`, the one writer of a step's run), the typed outputs each step hands to
the next and every shared tag name (`outputs`), how they travel (`handoff`, `frames`: Parquet),
where artifacts go (`storage`), and the process side (`monitor`, `processes`, `locks`,
`interrupted`).

Below every domain part: it knows runs, not models or data. May import: `mlpipe.errors`,
`mlpipe.config`, `mlpipe.reports`.
"""
