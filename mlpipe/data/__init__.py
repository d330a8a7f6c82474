"""Data: sources (files, S3, scikit-learn's bundled and synthetic sets), Parquet frames, column
typing and the preprocessor, outliers, and the lean worker process that fits the preprocessor.

Pure functions over DataFrames. May import: `mlpipe.errors` only (no MLflow), so
`python -m mlpipe.data.fit_worker` starts without the tracking client.
"""
