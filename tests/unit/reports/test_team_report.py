"""The team report's pure part: paired intervals, per-row outcomes, the monitoring tables."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from mlpipe.reports import team


def test_a_paired_interval_is_narrower_than_an_unpaired_one_and_covers_the_truth():
    """Two models that agree on most rows: pairing cancels the rows' own difficulty."""
    rng = np.random.default_rng(0)
    hard = rng.random(400) < 0.3  # rows both models get wrong
    base = (~hard).astype(float)
    better = base.copy()
    better[np.flatnonzero(hard)[:40]] = 1.0  # right on 40 of the hard rows: +0.1
    delta, low, high = team.paired_ci(better, base, alpha=0.05, n_boot=2000, seed=1)
    assert delta == pytest.approx(0.1)
    assert 0 < low < 0.1 < high < 0.2
    unpaired = np.std(better) * np.sqrt(2 / 400) * 1.96 * 2
    assert high - low < 0.7 * unpaired
    same = team.paired_ci(base, base, alpha=0.05, n_boot=500, seed=1)
    assert same == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="same non-zero length"):
        team.paired_ci([1.0], [1.0, 0.0], alpha=0.05, n_boot=10, seed=0)


def test_outcomes_are_hits_or_absolute_errors():
    assert team.outcomes("classification", np.array([1, 2, 2]), np.array([1, 2, 0])).tolist() == [1, 1, 0]
    assert team.outcomes("classification", np.array(["a"]), np.array(["a"])).tolist() == [1]
    assert team.outcomes("regression", np.array([1.5, 2.0]), np.array([1.0, 3.0])).tolist() == [0.5, 1.0]


def _run(member, step, status="FINISHED", seconds=2.0, rss=100.0, error="", failed=""):
    tags = {"team.member": member, "pipeline.step": step}
    if error:
        tags["error.type"] = error
    if failed:
        tags["qa.failed_checks"] = failed
    return SimpleNamespace(info=SimpleNamespace(status=status, start_time=1_000_000, end_time=1_000_000 + seconds * 1000),
                           data=SimpleNamespace(tags=tags, metrics={"step.peak_rss_mb": rss}))


def test_monitoring_counts_runs_failures_by_type_and_qa_failures_by_check():
    table = team.run_table([_run("alice", "train", seconds=4), _run("alice", "train", seconds=2, rss=300),
                            _run("bob", "qa", status="FAILED", error="GateError", failed="accuracy,drift.x"),
                            _run("bob", "ingest", status="FAILED", error="DataError")])
    found = team.monitoring_tables(table)
    assert found["steps"][0] == ["alice", "train", 2, 0, 3.0, 4.0, 300.0]
    assert ["bob", "qa", 1, 1, 2.0, 2.0, 100.0] in found["steps"]
    assert found["errors"] == [["bob", "DataError", 1], ["bob", "GateError", 1]]
    assert found["qa"] == [["bob", "accuracy", 1], ["bob", "drift.x", 1]]
    none = [["(none)", "", 0]]
    assert team.monitoring_tables(team.run_table([])) == {"steps": [], "errors": none, "qa": none}
    assert team.monitoring_tables(team.run_table([_run("carol", "train")]))["errors"] == none


def test_the_leaderboard_is_best_first_against_the_team_champion():
    rng = np.random.default_rng(2)
    champ = (rng.random(300) < 0.8).astype(float)
    found = [team.Candidate("team champion", "models:/m/1", "1", "bob", champ),
             team.Candidate("alice", "models:/m.alice/2", "2", "alice", np.ones(300)),
             team.Candidate("carol", "models:/m.carol/1", "1", "carol", None, "refused: no qa run")]
    board = team.leaderboard(found, "classification", alpha=0.05, n_boot=500, seed=0)
    assert [r["label"] for r in board] == ["alice", "team champion", "carol"]
    assert board[0]["delta"] > 0 and board[0]["ci_low"] > 0 and board[1]["delta"] == 0
    assert board[2]["error"] == "refused: no qa run" and "accuracy" not in board[2]


def test_a_model_whose_ingest_kept_the_evaluation_rows_is_not_scored():
    """The leaderboard scores only models whose ingest held out the same rows: the same source
    and data.holdout_fraction, read from the ingest run in the version's lineage."""
    params = {"i1": {"data.source": "sklearn:iris", "data.holdout_fraction": "0.2"},
              "i2": {"data.source": "sklearn:iris", "data.holdout_fraction": "0.0"},
              "i3": {"data.source": "sklearn:wine", "data.holdout_fraction": "0.2"}}
    client = SimpleNamespace(get_run=lambda run_id: SimpleNamespace(data=SimpleNamespace(params=params[run_id])))
    dcfg = SimpleNamespace(source="sklearn:iris", holdout_fraction=0.2)

    def reason(ingest):
        tags = {"lineage.ingest_run_id": ingest} if ingest else {}
        return team.unseen_rows(client, team.Candidate("bob", "models:/m.bob/1", "1", "bob", tags=tags), dcfg)

    assert reason("i1") == ""
    assert reason("i2") == ("not scored: its ingest held out data.holdout_fraction=0.0, not 0.2, so it may have "
                            "trained on evaluation rows")
    assert reason("i3") == "not scored: trained on sklearn:wine, not sklearn:iris"
    assert reason(None).startswith("not scored: no ingest run in its lineage")
