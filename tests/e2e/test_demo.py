"""`make demo`'s command end to end, in its short form (fewer requests): the whole team story
through the real CLI, then the state it leaves behind, read from the server it used (started
again for the check, stopped after)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from services import free_port
from support import ROOT
from test_team import Team

MODEL = "synthetic_classification_model"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    state = tmp_path_factory.mktemp("demo") / "state"
    port, serve_port = free_port(), free_port()
    team = Team(state, port, f"team.models=[{MODEL}]")
    result = subprocess.run([sys.executable, "-m", "mlpipe.team", "demo", "--state-dir", str(state), "--port",
                             str(port), "--serve-port", str(serve_port), "--requests", "200", "--feedback-delay-s", "1"],
                            cwd=ROOT, env=team.env, capture_output=True, text=True, timeout=1500)
    team.serve_port = serve_port
    return team, result


# slow: every command the demo strings together is proven by test_team.py in the default run
# (the team server, each member's pipeline under their login, every member's champion served as
# an arm, the cross-team A/B test promoted by the lead, the team report in a browser); this
# re-runs them all as `python -m mlpipe.team demo` does (2 minutes, the most of any module)
@pytest.mark.slow
def test_the_demo_tells_the_whole_story_and_stops_what_it_started(demo, monkeypatch, tmp_path):
    team, result = demo
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for step in ("1/6", "2/6 alice", "2/6 bob", "2/6 carol", "2/6 alice (the lead) runs the team gate on bob's",
                 "3/6", "half-way, carol reads the A/B report",
                 "4/6", "5/6", "6/6", "where to look:", "the whole demo took"):
        assert step in out, step
    assert "A/B experiment demo-cross: promote " in out
    assert (f"3/6 reader (the team's READ-only login) serves every member's champion on "
            f"http://127.0.0.1:{team.serve_port} ") in out  # --serve-port
    page = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.strip().startswith("team report:"))
    assert page.endswith("index.html") and "Leaderboard: accuracy on" in open(page).read()
    status = team.cli("status", "--team", "demo", *team.overrides)
    assert status.stdout.startswith("team demo: no server running from state ")  # the demo stopped it
    assert team.start().returncode == 0
    try:
        alice = team.client("alice", monkeypatch)
        for member in ("alice", "bob", "carol"):
            version = alice.get_model_version_by_alias(f"{MODEL}.{member}", "champion")
            assert version.tags["team.member"] == member and version.tags["qa.passed"] == "true"
        (champion,) = alice.search_model_versions(f"name = '{MODEL}'")
        assert alice.get_model_version_by_alias(MODEL, "champion").version == champion.version
        evidence = json.loads(champion.tags["ab.evidence"])
        assert evidence["p_value"] < 0.05 and evidence["winner"] == champion.tags["team.member"]
        assert champion.tags["team.copied_from"].startswith(f"{MODEL}.{evidence['winner']}/")
        gates = alice.search_runs([alice.get_experiment_by_name("demo/gate").experiment_id],
                                  "tags.`pipeline.step` = 'gate'")
        assert sorted(r.data.tags["pipeline.model_uri"] for r in gates if r.info.status == "FINISHED") == sorted(
            alice.get_model_version_by_alias(f"{MODEL}.{m}", "champion").source for m in ("alice", "bob", "carol"))
        experiment = alice.get_experiment_by_name("demo/reader")  # the team report's, and the team server's run
        (report,) = alice.search_runs([experiment.experiment_id], "tags.`pipeline.step` = 'report'")
        (served,) = alice.search_runs([experiment.experiment_id], "tags.`pipeline.step` = 'serve'")
        assert report.data.tags["team.member"] == served.data.tags["team.member"] == "reader"
        assert report.info.status == "FINISHED" and report.data.tags["report.champion"] == champion.version
        artifacts = {a.path for a in alice.list_artifacts(report.info.run_id, "team_report")}
        assert {"team_report/index.html", "team_report/leaderboard.png", "team_report/durations.png"} <= artifacts
    finally:
        assert team.stop().returncode == 0
