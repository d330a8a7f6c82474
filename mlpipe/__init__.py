"""mlpipe: the library behind the MLflow Project's steps; each folder is one part of the system.

- `run/`: run handling (harness, typed hand-offs, monitoring, storage)
- `pipeline/`: the step table, the driver behind `-e main`, jobs, sweeps, cache keys
- `data/`: sources, frames, features, outliers, the fit worker
- `training/`: estimators from config, model files
- `quality/`: data validation, drift, the model gate
- `registry/`: versions, aliases, promotion
- `serving/`: the server, records, A/B tests
- `reports/`: report cards and plots
- `config.py` (composition), `schema.py` (the types and ranges of every config key) and
  `errors.py`: shared by every part

`steps/` (one module per MLproject entry point) imports this package; nothing here imports `steps/`.
"""
