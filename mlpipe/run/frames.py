"""Frames on disk and in memory: the Parquet hand-off format, read and written with the least
memory, and a step's memory setting (freed frames leave RSS). Imports pandas and Arrow
only, so a lean worker process (`mlpipe.data.fit_worker`) can use it without MLflow."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq


def read_parquet(path: str | Path) -> pd.DataFrame:
    """`pd.read_parquet(path)` read one column at a time: the same frame (columns, dtypes, index)
    for about its own size plus one column, where a whole read holds Arrow's table and pandas'
    copy at once (peak +450 MB for a 160 MB frame, against +200 MB)."""
    schema = pq.read_schema(path)
    stored_index = {c for c in (schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)}
    columns = [name for name in schema.names if name not in stored_index]
    if len(columns) < 2 or len(set(columns)) < len(columns):
        return pd.read_parquet(path)
    frame = pd.read_parquet(path, columns=columns[:1], use_threads=False)
    for name in columns[1:]:
        part = pd.read_parquet(path, columns=[name], use_threads=False)
        frame[part.columns[0]] = part.iloc[:, 0]
    return frame


def write_parquet(frame: pd.DataFrame, path: str | Path) -> None:
    """`frame.to_parquet(path, index=False)` with dictionary encoding for the non-float columns
    only. Arrow's dictionary builder for a float column of mostly distinct values is discarded
    after its first megabyte (the column is then stored plain, as it is here), but glibc kept
    the memory: +43 MB of RSS for good after writing 650k x 21 floats, +1 MB without it."""
    dictionary = [str(name) for name, dtype in frame.dtypes.items() if not pd.api.types.is_float_dtype(dtype)]
    frame.to_parquet(path, index=False, use_dictionary=dictionary)


# glibc's mallopt parameter number, and the size from which an allocation gets its own mapping.
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1 << 20


def return_freed_memory() -> None:
    """Let a step's big arrays go back to the OS when freed, so peak RSS follows the live data.

    Arrow allocates through malloc instead of its own mimalloc pool, which kept what it freed
    resident and out of NumPy's reach (270 MB after a 1M x 20 floats Parquet read was freed).
    glibc gives every allocation of 1 MB or more its own mapping: by default it raises that
    threshold after the first big free, and later arrays stay in the heap once freed (130 MB of
    the raw frame after preprocess split it, measured)."""
    import ctypes
    import ctypes.util

    import pyarrow

    pyarrow.set_memory_pool(pyarrow.system_memory_pool())
    libc = ctypes.util.find_library("c")
    mallopt = getattr(ctypes.CDLL(libc), "mallopt", None) if libc and sys.platform == "linux" else None
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
