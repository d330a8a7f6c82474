"""Data: sources (files, S3, scikit-learn's bundled and synthetic sets), Parquet frames, column
typing and the preprocessor, outliers, and the lean worker process that fits the preprocessor.

Pure functions over DataFrames. May import: `mlpipe.errors`, and for s3:// sources the one S3
client factory in `mlpipe.run.storage` (imported when used), so `python -m mlpipe.data.fit_worker`
starts without MLflow.
"""
