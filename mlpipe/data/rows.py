"""Rows by their content: duplicates found through one hash per row, and the held-out team
evaluation set (`data.holdout_fraction`) chosen by each row's hash (pure pandas)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def duplicated_rows(frame: pd.DataFrame) -> pd.Series:
    """`frame.duplicated()` (keep="first") in a fraction of its memory: rows are hashed to one
    64-bit number each and only rows whose hash repeats are compared exactly. pandas'
    own factorises every column (8 bytes per cell: 170 MB more at 1M x 21)."""
    hashed = pd.util.hash_pandas_object(frame, index=False)
    candidates = np.flatnonzero(hashed.duplicated(keep=False).to_numpy())
    out = np.zeros(len(frame), dtype=bool)
    if len(candidates):
        out[candidates] = frame.iloc[candidates].duplicated().to_numpy()
    return pd.Series(out, index=frame.index)


HOLDOUT_KEY = "mlpipe-holdout01"  # 16 bytes: pandas' hash key; changing it moves every row


def held_out(frame: pd.DataFrame, fraction: float) -> pd.Series:
    """True for the rows of a shared evaluation set (`data.holdout_fraction`): those whose hash
    of all values, mapped to [0, 1), falls below `fraction`. It depends on the row alone, so every
    member's ingest drops the same rows and the team report finds them again; equal rows fall on
    the same side, so no copy of an evaluation row is trained on."""
    if fraction <= 0 or frame.empty:
        return pd.Series(False, index=frame.index)
    hashed = pd.util.hash_pandas_object(frame, index=False, hash_key=HOLDOUT_KEY).to_numpy()
    return pd.Series(hashed / 2.0**64 < fraction, index=frame.index)
