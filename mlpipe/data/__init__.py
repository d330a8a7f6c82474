"""Data: sources (files, S3, scikit-learn's bundled and synthetic sets), rows (duplicates, the
held-out evaluation set), column typing and the preprocessor, outliers, and the lean worker
process that fits the preprocessor.

Pure functions over DataFrames, but for reading sources and the fit worker. May import:
`mlpipe.errors`, `mlpipe.run.storage` (the one S3 client factory),
`mlpipe.run.frames` (the Parquet format) and `mlpipe.run.processes` (the worker stops with its
step): none of them imports MLflow, so `python -m mlpipe.data.fit_worker` starts without it.
"""
