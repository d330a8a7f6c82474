"""mlpipe: the library behind the MLflow Project's steps; each folder is one part of the system.

The parts, each importing only parts listed above it (tests/unit/test_boundaries.py holds every
package to the `May import:` line of its own docstring, and finds no cycle):

- `errors.py`, `schema.py`, `config.py`: the error hierarchy, the types and ranges of every config
  key, composition; shared by every part
- `reports/`: report cards, plots and the team report's tables (pure)
- `run/`: one run's life (open, fail), the step's context (the one writer of a step's run), the
  typed hand-offs and their tag names, Parquet frames, artifact storage, locks, processes, monitoring
- `data/`: sources, rows, features, outliers, the fit worker
- `training/`: metric names, estimators from config, model files
- `quality/`: data validation, drift, the model gate (pure: frames, predictions, metrics in; checks out)
- `registry/`: versions, aliases, provenance, the champion to compare with, promotion
- `serving/`: the server, records, A/B tests
- `team/`: a team's server, members and report
- `pipeline/`: the step table and cache keys, the step harness, the driver behind `-e main`,
  jobs, sweeps, warm step processes

`steps/` (one module per MLproject entry point) imports this package; nothing here imports `steps/`.

May import: nothing (the package's own `__init__` runs before any part: it stays empty).
"""
