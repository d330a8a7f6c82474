"""mlpipe/team/report.py: what the team report reads before it scores a model."""

from __future__ import annotations

from types import SimpleNamespace

from mlpipe.reports import team as tables
from mlpipe.team import report


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
        return report.unseen_rows(client, report.Candidate("bob", "models:/m.bob/1", "1", "bob", tags=tags), dcfg)

    assert reason("i1") == ""
    assert reason("i2") == ("not scored: its ingest held out data.holdout_fraction=0.0, not 0.2, so it may have "
                            "trained on evaluation rows")
    assert reason("i3") == "not scored: trained on sklearn:wine, not sklearn:iris"
    assert reason(None).startswith("not scored: no ingest run in its lineage")


def _run(member, step, status="FINISHED", seconds=2.0, rss=100.0, error="", failed=""):
    tags = {"team.member": member, "pipeline.step": step}
    if error:
        tags["error.type"] = error
    if failed:
        tags["qa.failed_checks"] = failed
    return SimpleNamespace(info=SimpleNamespace(status=status, start_time=1_000_000, end_time=1_000_000 + seconds * 1000),
                           data=SimpleNamespace(tags=tags, metrics={"step.peak_rss_mb": rss}))


def test_monitoring_counts_runs_failures_by_type_and_qa_failures_by_check():
    table = report.run_table([_run("alice", "train", seconds=4), _run("alice", "train", seconds=2, rss=300),
                            _run("bob", "qa", status="FAILED", error="GateError", failed="accuracy,drift.x"),
                            _run("bob", "ingest", status="FAILED", error="DataError")])
    found = tables.monitoring_tables(table)
    assert found["steps"][0] == ["alice", "train", 2, 0, 3.0, 4.0, 300.0]
    assert ["bob", "qa", 1, 1, 2.0, 2.0, 100.0] in found["steps"]
    assert found["errors"] == [["bob", "DataError", 1], ["bob", "GateError", 1]]
    assert found["qa"] == [["bob", "accuracy", 1], ["bob", "drift.x", 1]]
    none = [["(none)", "", 0]]
    assert tables.monitoring_tables(report.run_table([])) == {"steps": [], "errors": none, "qa": none}
    assert tables.monitoring_tables(report.run_table([_run("carol", "train")]))["errors"] == none


def test_the_report_lists_only_ab_tests_of_its_model_and_no_model_server_as_a_step():
    served = {"alice": ("models:/iris_model.alice/1", "1"), "bob": ("models:/iris_model.bob@champion", "2")}
    assert report.of_model(served, "iris_model")
    assert report.of_model({"a": ("models:/iris_model/3", "3")}, "iris_model")
    assert not report.of_model({"a": ("models:/wine_model/1", "1"), "b": ("models:/iris_model/1", "1")}, "iris_model")
    assert not report.of_model({"a": ("runs:/abc/model", "abc")}, "iris_model")
    assert not report.of_model({}, "iris_model")
    server = _run("alice", "serve", seconds=431)
    server.data.params = {"serve.mode": "forever"}
    smoke = _run("alice", "serve", seconds=1)
    smoke.data.params = {"serve.mode": "smoke"}
    table = report.run_table([server, smoke, _run("alice", "train")])
    assert sorted(table["duration_s"]) == [1.0, 2.0]  # the 431 s server is not a step's duration


def test_every_leaderboard_bar_names_its_member_and_version():
    assert tables.bar_label({"label": "team champion", "member": "bob", "version": "1"}) == "bob v1 (team champion)"
    assert tables.bar_label({"label": "alice", "member": "alice", "version": "4"}) == "alice v4"
    assert tables.bar_label({"label": "team champion", "member": "", "version": "2"}) == \
        "unknown member v2 (team champion)"
