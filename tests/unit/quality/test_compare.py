"""mlpipe/quality/compare.py: every metric as scikit-learn computes it, the paired interval, the
leaderboard ranked by any metric."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from sklearn import metrics

from mlpipe.quality import compare

rng = np.random.default_rng(0)
LABELS = rng.integers(0, 3, 200)
PREDICTED = np.where(rng.random(200) < 0.7, LABELS, rng.integers(0, 3, 200))
BINARY = rng.integers(0, 2, 200)
SCORES = np.clip(BINARY * 0.3 + rng.random(200) * 0.7, 0, 1)
VALUES = rng.normal(size=200)
ESTIMATES = VALUES + rng.normal(scale=0.5, size=200)


@pytest.mark.parametrize("metric, truth, answers, sklearn_value", [
    ("accuracy", LABELS, PREDICTED, metrics.accuracy_score(LABELS, PREDICTED)),
    ("f1_score", LABELS, PREDICTED, metrics.f1_score(LABELS, PREDICTED, average="macro")),
    ("roc_auc", BINARY, SCORES, metrics.roc_auc_score(BINARY, SCORES)),
    ("r2", VALUES, ESTIMATES, metrics.r2_score(VALUES, ESTIMATES)),
    ("rmse", VALUES, ESTIMATES, metrics.root_mean_squared_error(VALUES, ESTIMATES)),
    ("mae", VALUES, ESTIMATES, metrics.mean_absolute_error(VALUES, ESTIMATES)),
])
def test_each_metric_is_scikit_learns(metric, truth, answers, sklearn_value):
    assert compare.value(metric, truth, answers) == pytest.approx(sklearn_value, rel=1e-12)


def test_a_macro_f1_of_a_resample_averages_only_the_classes_it_holds():
    truth, predicted = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
    assert compare.value("f1_score", truth, predicted) == pytest.approx(metrics.f1_score(truth, predicted,
                                                                                         average="macro"))
    assert compare.value("f1_score", np.array([2, 2]), np.array([2, 2])) == 1.0  # classes 0 and 1 absent


def test_a_paired_interval_is_narrower_than_an_unpaired_one_and_covers_the_truth():
    """Two models that agree on most rows: pairing cancels the rows' own difficulty."""
    r = np.random.default_rng(0)
    truth = np.ones(400, dtype=int)
    hard = r.random(400) < 0.3  # rows both models get wrong
    base = np.where(hard, 0, 1)
    better = base.copy()
    better[np.flatnonzero(hard)[:40]] = 1  # right on 40 of the hard rows: +0.1
    delta, low, high = compare.paired_difference("accuracy", truth, better, base, alpha=0.05, n_boot=2000, seed=1)
    assert delta == pytest.approx(0.1)
    assert 0 < low < 0.1 < high < 0.2
    unpaired = np.std(better) * np.sqrt(2 / 400) * 1.96 * 2
    assert high - low < 0.7 * unpaired
    assert compare.paired_difference("accuracy", truth, base, base, 0.05, 500, 1) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="same non-zero length"):
        compare.paired_difference("accuracy", [1], [1, 0], [1, 0], alpha=0.05, n_boot=10, seed=0)


def test_the_interval_is_the_same_however_many_resamples_are_held_at_once(monkeypatch):
    args = ("r2", VALUES, ESTIMATES, VALUES * 0.9, 0.05, 300, 3)
    whole = compare.paired_difference(*args)
    monkeypatch.setattr(compare, "RESAMPLED_CELLS", 7 * VALUES.size)  # 7 resamples per chunk
    assert compare.paired_difference(*args) == pytest.approx(whole)


def candidate(label, answers, error=""):
    return SimpleNamespace(label=label, model_uri=f"models:/m.{label}/1", version="1", member=label, answers=answers,
                           error=error)


def test_the_leaderboard_is_best_first_against_the_team_champion():
    r = np.random.default_rng(2)
    truth = np.ones(300, dtype=int)
    champ = (r.random(300) < 0.8).astype(int)
    board = compare.leaderboard([candidate("team champion", champ), candidate("alice", np.ones(300, dtype=int)),
                                 candidate("carol", None, "refused: no qa run")], truth, "accuracy", 0.05, 500, 0)
    rows = board.rows
    assert board.metric == "accuracy" and [r["label"] for r in rows] == ["alice", "team champion", "carol"]
    assert rows[0]["delta"] > 0 and rows[0]["ci_low"] > 0 and rows[1]["delta"] == 0
    assert rows[2]["error"] == "refused: no qa run" and "accuracy" not in rows[2]


def test_a_metric_better_when_smaller_ranks_the_smallest_first():
    board = compare.leaderboard([candidate("team champion", ESTIMATES), candidate("bob", VALUES + 0.01),
                                 candidate("carol", VALUES * 3)], VALUES, "rmse", 0.05, 200, 0)
    assert [r["label"] for r in board.rows] == ["bob", "team champion", "carol"]
    assert board.rows[0]["rmse"] == pytest.approx(0.01) and board.rows[0]["delta"] < 0
