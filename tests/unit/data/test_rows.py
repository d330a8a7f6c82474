"""mlpipe/data/rows.py: duplicates by row hash, and the held-out team evaluation rows."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlpipe.data.rows import duplicated_rows, held_out


def test_duplicated_rows_matches_pandas_on_repeats_missing_values_and_mixed_types():
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"a": rng.integers(0, 3, 400).astype(float), "b": rng.choice(["x", "y", None], 400),
                          "c": rng.integers(0, 2, 400)})
    frame.loc[rng.choice(400, 30, replace=False), "a"] = np.nan
    assert duplicated_rows(frame).equals(frame.duplicated())
    unique = pd.DataFrame({"a": np.arange(50.0), "b": ["s"] * 50})
    assert not duplicated_rows(unique).any() and duplicated_rows(unique).equals(unique.duplicated())


def test_the_held_out_rows_are_a_stable_share_that_keeps_equal_rows_together():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=5000), "y": rng.integers(0, 3, 5000)})
    held = held_out(frame, 0.2)
    assert 0.18 < held.mean() < 0.22
    assert held.equals(held_out(frame.copy(), 0.2))  # the same rows every time
    shuffled = frame.sample(frac=1, random_state=1)
    assert held_out(shuffled, 0.2).sort_index().equals(held)  # a row's fate does not depend on its position
    doubled = pd.concat([frame, frame], ignore_index=True)
    twice = held_out(doubled, 0.2).to_numpy()
    assert (twice[:5000] == twice[5000:]).all()
    assert not held_out(frame, 0.0).any()
