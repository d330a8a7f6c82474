"""A team on one shared MLflow server with MLflow's basic-auth app, through the real commands:
`python -m mlpipe.team start|stop|as`, a member's pipeline by `mlflow run` under their login,
and denials over HTTP with real logins (SQLite backend; PostgreSQL in test_team_postgres.py)."""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import sys

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from services import free_port
from support import ROOT, error_lines

MODEL = "iris_model"
ALICE_MAIN = (sys.executable, "-m", "mlflow", "run", ".", "-e", "main", "--env-manager", "local",
              "-P", "steps=ingest,preprocess,train,qa,register",
              "-P", "overrides=data=iris model=logistic_regression train.cv_folds=2")


class Team:
    """The demo team's server in a temp state dir on a free port, driven by the real CLI."""

    def __init__(self, state, port: int, *extra: str):
        self.state, self.port = state, port
        self.overrides = [f"team.server.state_dir={state}", f"team.server.port={port}", *extra]
        self.url = f"http://127.0.0.1:{port}"
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("MLFLOW_TRACKING", "MLFLOW_REGISTRY", "MLFLOW_EXPERIMENT", "MLPIPE_TEAM"))}
        self.env["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"
        self.env["MLPIPE_SYSTEM_METRICS"] = "false"

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mlpipe.team", *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def start(self) -> subprocess.CompletedProcess:
        return self.cli("start", "--team", "demo", *self.overrides)

    def stop(self) -> subprocess.CompletedProcess:
        return self.cli("stop", "--team", "demo", *self.overrides)

    def as_member(self, member: str, *command: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return self.cli("as", "--team", "demo", member, *self.overrides, "--", *command, timeout=timeout)

    def password(self, member: str) -> str:
        return json.loads((self.state / "credentials.json").read_text())[member]

    def client(self, member: str, monkeypatch, password: str | None = None) -> MlflowClient:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", member)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password or self.password(member))
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        return MlflowClient(self.url, registry_uri=self.url)


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    team = Team(tmp_path_factory.mktemp("team") / "state", free_port())
    started = team.start()
    assert started.returncode == 0, started.stderr[-3000:]
    team.started = started
    yield team
    assert team.stop().returncode == 0


def gate(team, member: str, as_member: str = "alice") -> subprocess.CompletedProcess:
    """The team gate on a member's champion, run (by the lead, alice, unless said) in the gate experiment."""
    return team.as_member(as_member, sys.executable, "-m", "mlflow", "run", ".", "-e", "gate", "--env-manager", "local",
                          "--experiment-name", "demo/gate", "-P", f"candidate=models:/{MODEL}.{member}@champion",
                          "-P", "overrides=data=iris qa.champion.enabled=false")


@pytest.fixture(scope="module")
def alice_gated(team, alice_pipeline):
    """The lead's gate run on alice's champion (once a module: her champion does not move)."""
    result = gate(team, "alice")
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def alice_pipeline(team):
    """alice's pipeline through `mlflow run`, logged in as alice (no step reuses anything)."""
    result = team.as_member("alice", *ALICE_MAIN)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_start_prints_the_address_and_keeps_passwords_to_its_owner(team):
    out = team.started.stdout
    assert f"team demo: MLflow server started at {team.url}" in out
    assert "members: alice, bob, carol (lead: alice)" in out
    assert "team report:      python -m mlpipe.team as reader --team demo" in out
    assert stat.S_IMODE(team.state.stat().st_mode) == 0o700
    for name in ("credentials.json", "basic_auth.ini", "flask_secret"):
        assert stat.S_IMODE((team.state / name).stat().st_mode) == 0o600
    passwords = json.loads((team.state / "credentials.json").read_text())
    assert sorted(passwords) == ["admin", "alice", "bob", "carol", "reader"] and len(set(passwords.values())) == 5
    assert "password1234" not in passwords.values()
    said = out + team.started.stderr + (team.state / "server.log").read_text()
    assert not [p for p in passwords.values() if p in said]
    again = team.start()  # a second start finds it running
    assert again.returncode == 0 and "already running" in again.stdout
    # the commands it prints reach this server, copied as they are
    said = dict(re.findall(r"^(run as a member|status|stop it): +(.+)$", out, re.M))
    assert said["stop it"] == f"python -m mlpipe.team stop --team demo {' '.join(team.overrides)}"
    status = subprocess.run([sys.executable, *shlex.split(said["status"])[1:]], cwd=ROOT, env=team.env,
                            capture_output=True, text=True, timeout=120)
    assert status.stdout.startswith(f"team demo: server running (pid {(team.state / 'server.pid').read_text()}) "
                                    f"at {team.url}, answering; state {team.state}; members: alice, bob, carol"), status
    as_bob = shlex.split(said["run as a member"].split(" -- ")[0].replace("<member>", "bob"))[1:]
    whoami = subprocess.run([sys.executable, *as_bob, "--", sys.executable, "-c", "import os; print("
                             "os.environ['MLFLOW_TRACKING_URI'], os.environ['MLFLOW_TRACKING_USERNAME'])"],
                            cwd=ROOT, env=team.env, capture_output=True, text=True, timeout=120)
    assert whoami.stdout.split() == [team.url, "bob"], whoami.stderr
    # a second server from the same state dir on another port: refused, the state dir named
    other = team.cli("start", "--team", "demo", f"team.server.state_dir={team.state}", f"team.server.port={free_port()}")
    assert other.returncode != 0 and error_lines(other.stderr) == [
        f"error: team: ConfigError: team server: the server of {team.state} runs at {team.url}, not at "
        f"http://127.0.0.1:{other.args[-1].split('=')[1]}; stop it first, or give a second server its own "
        "team.server.state_dir=<folder>"]


def test_a_members_pipeline_registers_into_their_own_model_tagged_with_their_name(team, alice_pipeline,
                                                                                monkeypatch):
    client = team.client("alice", monkeypatch)
    version = client.get_model_version_by_alias(f"{MODEL}.alice", "champion")
    assert version.tags["team.member"] == "alice" and version.tags["qa.passed"] == "true"
    experiment = client.get_experiment_by_name("demo/alice")
    runs = client.search_runs([experiment.experiment_id], "tags.`pipeline.step` = 'register'")
    assert runs and runs[0].data.tags["team.member"] == "alice" and runs[0].info.status == "FINISHED"
    passwords = json.loads((team.state / "credentials.json").read_text())
    assert not [p for p in passwords.values() if p in alice_pipeline.stdout + alice_pipeline.stderr]
    with pytest.raises(MlflowException):  # the team model itself is not hers to register into
        client.get_model_version_by_alias(MODEL, "champion")


def test_a_members_identical_second_run_reuses_every_step_and_registers_nothing(team, alice_pipeline, monkeypatch):
    """The driver composes what its steps compose (team=demo from MLPIPE_TEAM), so the keys it
    looks up are the keys the steps wrote, and the parent run records the config they ran."""
    again = team.as_member("alice", *ALICE_MAIN)
    assert again.returncode == 0, again.stderr[-4000:]
    outcomes = dict(re.findall(r"^(\w+) +\w{32} +(ran|cached) ", again.stdout, re.M))
    assert outcomes == dict.fromkeys(["ingest", "preprocess", "train", "qa", "register"], "cached"), again.stdout
    client = team.client("alice", monkeypatch)
    assert [v.version for v in client.search_model_versions(f"name = '{MODEL}.alice'")] == ["1"]
    experiment = client.get_experiment_by_name("demo/alice")
    parent = client.search_runs([experiment.experiment_id], "tags.`pipeline.role` = 'pipeline'",
                                order_by=["attributes.start_time DESC"])[0]
    assert parent.info.run_id in again.stdout + again.stderr
    assert parent.data.params["team.name"] == "demo" and parent.data.params["data.holdout_fraction"] == "0.2"


def test_another_member_cannot_change_alices_model_or_the_team_champion(team, alice_pipeline, monkeypatch):
    """bob, logged in over HTTP: every change to alice's model or to the team model is refused
    with a 403, and nothing changed."""
    from mlpipe.errors import AccessDeniedError
    from mlpipe.registry import versions

    bob = team.client("bob", monkeypatch)
    name = f"{MODEL}.alice"
    champion = bob.get_model_version_by_alias(name, "champion")  # reading is allowed
    for call in (lambda: bob.set_registered_model_alias(name, "champion", champion.version),
                 lambda: bob.delete_model_version(name, champion.version),
                 lambda: bob.delete_registered_model_alias(name, "champion"),
                 lambda: bob.set_registered_model_alias(MODEL, "champion", "1")):
        with pytest.raises(MlflowException, match="403"):
            call()
    with pytest.raises(AccessDeniedError) as info:  # through the pipeline's own registry calls
        versions.set_alias(bob, name, "champion", champion.version)
    assert str(info.value) == (f"user 'bob' may not move {name}@champion: it needs EDIT on registered model {name}, "
                               "which the tracking server did not grant (HTTP 403); the alias was not moved")
    # (mlflow.set_registry_uri(None) would leave MLFLOW_REGISTRY_URI set for every later subprocess)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", team.url)
    with pytest.raises(AccessDeniedError, match=f"user 'bob' may not register a version of {name}: it needs EDIT on "
                                                f"registered model {name}.*; nothing registered"):
        versions.register(champion.source, name, {})
    alice = team.client("alice", monkeypatch)
    after = alice.get_model_version_by_alias(name, "champion")
    assert after.version == champion.version and len(alice.search_model_versions(f"name = '{name}'")) == 1


def test_the_read_only_identity_serves_every_members_champion_as_an_arm_named_after_them(team, alice_gated,
                                                                                         monkeypatch):
    """The team server runs as `reader` (its run in demo/reader); a member's login is refused
    before anything loads, with the command to use instead."""
    serve = (sys.executable, "-m", "mlflow", "run", ".", "-e", "serve", "--env-manager", "local", "-P",
             "overrides=data=iris serve.mode=smoke serve.team_variants=true")
    refused = team.as_member("alice", *serve)
    assert refused.returncode != 0
    assert error_lines(refused.stderr)[-1].startswith(
        "error: serve: ConfigError: serve.team_variants=true loads every member's model: run it as the team's "
        "READ-only identity, not as 'alice': python -m mlpipe.team as reader -- mlflow run . -e serve"), refused.stderr
    result = team.as_member("reader", *serve)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"no {MODEL}.<member>@champion yet for bob, carol: not served" in result.stderr
    alice = team.client("alice", monkeypatch)
    experiment = alice.get_experiment_by_name("demo/reader")
    (run,) = alice.search_runs([experiment.experiment_id], "tags.`mlflow.project.entryPoint` = 'serve'")
    assert run.info.status == "FINISHED" and run.data.tags["team.member"] == "reader"
    assert run.data.tags["serve.variant.alice"].startswith(f"models:/{MODEL}.alice@champion (version 1")
    assert not [key for key in run.data.tags if key.startswith("serve.variant.") and key != "serve.variant.alice"]


def test_a_wrong_password_is_one_clear_error_before_anything_runs(team, tmp_path):
    from mlpipe.team import members

    env = {**os.environ, "MLFLOW_TRACKING_USERNAME": "bob", "MLFLOW_TRACKING_PASSWORD": "not-his",
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    result = subprocess.run([sys.executable, "-c", f"from mlpipe.team import members; members.check_login({team.url!r})"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert (f"AccessDeniedError: the MLflow server at {team.url} refused the login of user 'bob' (HTTP 401): wrong "
            "password or no such user") in result.stderr
    # `as` with a member who is not in the team: one line, nothing started
    result = team.as_member("dave", sys.executable, "-c", f"open({str(tmp_path / 'ran')!r}, 'w')")
    assert result.returncode != 0 and not (tmp_path / "ran").exists()
    assert error_lines(result.stderr) == [
        "error: team: ConfigError: team.member='dave' is not a member of team demo (conf/team/demo.yaml): "
        "alice, bob, carol"]
    assert members is not None


def test_stop_stops_the_server_and_frees_the_port(tmp_path_factory):
    import socket

    team = Team(tmp_path_factory.mktemp("team2") / "state", free_port())
    started = team.start()
    assert started.returncode == 0, started.stderr[-3000:]
    pid = int((team.state / "server.pid").read_text())
    result = team.stop()
    assert result.returncode == 0
    assert result.stdout.strip() == f"team demo: server at {team.url} (state {team.state}) stopped"
    status = team.cli("status", "--team", "demo", *team.overrides)
    assert status.stdout.startswith(f"team demo: no server running from state {team.state} (it would run at "
                                    f"{team.url})"), status
    import psutil

    try:
        assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # exited, not yet reaped by init
    except psutil.NoSuchProcess:
        pass
    with socket.socket() as sock:  # a new server can listen there (as uvicorn does, with SO_REUSEADDR)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", team.port))
        sock.listen(1)


@pytest.fixture(scope="module")
def bob_pipeline(team):
    result = team.as_member("bob", sys.executable, "-m", "mlflow", "run", ".", "-e", "main", "--env-manager",
                            "local", "-P", "steps=ingest,preprocess,train,qa,register",
                            "-P", "overrides=data=iris model=random_forest model.n_estimators=20 "
                                  "train.cv_folds=2")
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def cross_team_ab(team, alice_gated, bob_pipeline, tmp_path_factory):
    """The team's READ-only identity serves alice's and bob's champions (serve.team_variants), each record tagged with the
    member whose model answered; labels agree with bob's answers every time and with alice's on 6
    in 10. Then bob's report and the lead's report, both with serve.ab.promote=true."""
    import signal
    import urllib.request

    from sklearn.datasets import load_iris

    from services import wait_for_port, wait_group_gone

    gated = gate(team, "bob")  # what the team serves, the lead's gate passed (alice's: alice_gated)
    assert gated.returncode == 0, gated.stderr[-3000:]
    work = tmp_path_factory.mktemp("cross")
    port, records = free_port(), work / "records.db"
    common = f"data=iris serve.experiment=cross serve.records={records} serve.records_flush_ms=50"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlpipe.team", "as", "--team", "demo", "reader", *team.overrides, "--", sys.executable,
         "-m", "mlflow", "run", ".", "-e", "serve", "--env-manager", "local", "-P",
         f"overrides={common} serve.port={port} serve.team_variants=true serve.refresh_seconds=0"],
        cwd=ROOT, env=team.env, stdout=(work / "serve.log").open("w"), stderr=subprocess.STDOUT,
        start_new_session=True)
    rows = load_iris(as_frame=True).frame.drop(columns="target")
    try:
        wait_for_port(port, server, timeout=180)
        for i in range(240):
            body = json.dumps({"dataframe_records": rows.iloc[[i % len(rows)]].to_dict(orient="records")}).encode()
            request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as response:
                member, request_id = response.headers["X-Variant"], response.headers["X-Request-Id"]
                token = response.headers["X-Feedback-Token"]
                prediction = json.loads(response.read())["predictions"][0]
            label = prediction if member == "bob" or i % 10 < 6 else (prediction + 1) % 3
            feedback = urllib.request.Request(f"http://127.0.0.1:{port}/feedback", headers={
                "Content-Type": "application/json"}, data=json.dumps({"request_id": request_id, "token": token, "label": label}).encode())
            assert urllib.request.urlopen(feedback, timeout=30).status == 200
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        wait_group_gone(server.pid, timeout=60)
    report = ["-m", "mlflow", "run", ".", "-e", "serve", "--env-manager", "local", "-P",
              f"overrides={common} serve.mode=report serve.ab.min_samples=50 serve.ab.promote=true "
              "serve.ab.repeats=each"]  # iris has 150 rows for 240 requests; each label is made per request
    denied = team.as_member("bob", sys.executable, *report)
    promoted = team.as_member("alice", sys.executable, *report)
    again = team.as_member("alice", sys.executable, *report)  # a re-run finds the copy it made
    return {"records": records, "denied": denied, "promoted": promoted, "again": again}


def test_a_cross_team_ab_test_promotes_a_copy_of_the_winner_into_the_team_model_by_the_lead_only(
        team, cross_team_ab, monkeypatch):
    """bob's own report may not promote (403, one line); the lead's report copies bob's version
    into the team model with its lineage and the evidence."""
    from mlpipe.registry import provenance

    denied, promoted = cross_team_ab["denied"], cross_team_ab["promoted"]
    assert denied.returncode != 0
    assert error_lines(denied.stderr)[-1].startswith(
        f"error: serve: AccessDeniedError: user 'bob' may not add a version to {MODEL}: it needs EDIT on registered "
        f"model {MODEL}"), denied.stderr[-3000:]
    assert promoted.returncode == 0, promoted.stderr[-3000:]
    assert "A/B experiment cross: promote bob: better than alice" in promoted.stdout
    assert [line.split()[-1] for line in promoted.stdout.splitlines() if line.startswith(("alice", "bob"))] \
        == ["alice", "bob"], promoted.stdout  # the member column
    assert re.search(r"^  bob vs alice: mSPRT \(always valid\), p=\S+, 95% confidence sequence for the difference "
                     r"\[0\.\d+, 0\.\d+\]$", promoted.stdout, re.M), promoted.stdout
    alice = team.client("alice", monkeypatch)
    assert cross_team_ab["again"].returncode == 0, cross_team_ab["again"].stderr[-3000:]
    (version,) = alice.search_model_versions(f"name = '{MODEL}'")  # none from bob's attempt or the re-run
    bob_version = alice.get_model_version_by_alias(f"{MODEL}.bob", "champion").version
    # what the lead's report changed, on a line of its own: the copy it made and the alias it moved
    assert [line for line in promoted.stdout.splitlines() if line.startswith("promoted:")] == [
        f"promoted: {MODEL}@champion is now version {version.version}, a copy of {MODEL}.bob/{bob_version} "
        "(no version held it before)"], promoted.stdout
    champion = alice.get_model_version_by_alias(MODEL, "champion")
    source = alice.get_model_version_by_alias(f"{MODEL}.bob", "champion")
    assert version.version == champion.version
    assert champion.tags["team.copied_from"] == f"{MODEL}.bob/{source.version}"
    assert champion.tags["team.member"] == "bob" and champion.tags["ab.promoted_by"] == "alice"
    assert champion.source == source.source and champion.run_id == source.run_id
    assert champion.tags["lineage.qa_run_id"] == source.tags["lineage.qa_run_id"]
    evidence = json.loads(champion.tags["ab.evidence"])
    assert evidence["method"] == "sequential" and evidence["p_value"] < 0.05 and evidence["ci_low"] > 0
    assert evidence["arms"]["bob"]["member"] == "bob" and evidence["arms"]["alice"]["labelled"] >= 50
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team.url)
    from mlpipe.config import compose

    # the team's word on it: the lead's gate run on bob's version, signed with the team gate key
    trust = provenance.trust_for(alice, compose([]).trust, compose(["team=demo"]).team)
    proof = provenance.validated(alice, f"models:/{MODEL}@champion", "", trust.keyring, trust.gate_experiment)
    gate_run = alice.get_run(proof.qa_run_id)
    assert gate_run.data.tags["pipeline.step"] == "gate" and gate_run.data.tags["team.member"] == "alice"
    assert gate_run.data.tags["pipeline.model_uri"] == source.source


def test_the_team_report_page_renders_its_leaderboard_and_charts_in_a_browser(team, cross_team_ab, monkeypatch,
                                                                              tmp_path):
    """The READ-only identity runs the team report: a page with the leaderboard (both members and the team
    champion on the held-out rows, with intervals), the promotion, the A/B test and the runs;
    opened in headless Chromium, its DOM has them and its screenshot is not blank."""
    import browser

    result = team.as_member("reader", sys.executable, "-m", "mlflow", "run", ".", "-e", "report", "--env-manager",
                            "local", "-P", f"overrides=data=iris serve.records={cross_team_ab['records']}")
    assert result.returncode == 0, result.stderr[-3000:]
    carol = team.client("carol", monkeypatch)  # any member reads it
    experiment = carol.get_experiment_by_name("demo/reader")
    (run,) = carol.search_runs([experiment.experiment_id], "tags.`pipeline.step` = 'report'")
    assert run.info.status == "FINISHED" and run.data.tags["report.champion"] == "1"
    # the terminal says where the page is
    assert re.search(rf"^\[mlpipe\] report ran in [\d.]+ s: .*; page: {re.escape(run.info.artifact_uri)}"
                     r"/team_report/index\.html$", result.stdout, re.M), result.stdout
    assert {"report.team_champion.accuracy", "report.alice.accuracy", "report.bob.accuracy"} <= set(run.data.metrics)
    page = carol.download_artifacts(run.info.run_id, "team_report", str(tmp_path))
    board = json.loads(open(f"{page}/leaderboard.json").read())
    assert {r["label"] for r in board} == {"team champion", "alice", "bob"}
    assert all(r["rows"] == board[0]["rows"] > 0 and r["ci_low"] <= r["delta"] <= r["ci_high"] for r in board)
    reason = browser.unavailable()
    if reason:
        pytest.skip(reason)
    dom = browser.dump_dom(tmp_path / "team_report" / "index.html")
    for text in ("Leaderboard: accuracy on", "team champion", "paired bootstrap interval", "promoted by",
                 "A/B tests of iris_model", "labelled rows", "cross", "Step runs of the last 7 days",
                 "qa failures by check", "The closed loop on iris_model: monitor runs that acted"):
        assert text in dom, text
    assert dom.count('src="data:image/png;base64,') == 2
    shot = browser.screenshot(tmp_path / "team_report" / "index.html", tmp_path / "page.png")
    assert browser.blank_fraction(shot) < 0.98


def test_only_the_lead_runs_the_gate_and_its_key_signs_it(team, alice_gated, monkeypatch):
    """The gate run is in demo/gate, signed by the team gate key; bob has no EDIT there, so his
    gate run is refused before it starts anything."""
    from mlpipe import signing
    from mlpipe.config import compose

    result = alice_gated
    assert re.search(rf"^\[mlpipe\] gate ran in [\d.]+ s: models:/{MODEL}\.alice@champion passed: accuracy=",
                     result.stdout, re.M), result.stdout
    alice = team.client("alice", monkeypatch)
    experiment = alice.get_experiment_by_name("demo/gate")
    source = alice.get_model_version_by_alias(f"{MODEL}.alice", "champion").source
    (run,) = alice.search_runs([experiment.experiment_id], f"tags.`pipeline.model_uri` = '{source}'")  # alice_gated's
    assert run.info.status == "FINISHED" and run.data.tags["qa.passed"] == "true"
    team_key = signing.keyring({"signing_key": compose(["team=demo"]).team.gate.key, "signers": [], "revoked": []})
    verdict = signing.verify(run.data.tags["qa.verdict"], run.data.tags["qa.verdict_signature"], team_key)
    assert verdict.passed and verdict.qa_run_id == run.info.run_id
    denied = gate(team, "alice", as_member="bob")
    # `mlflow run` itself is refused creating the run (MLflow's traceback), before any step starts
    assert denied.returncode != 0 and "runs/create failed with error code 403" in denied.stderr, denied.stderr[-3000:]
    assert len(alice.search_runs([experiment.experiment_id], "tags.`team.member` = 'bob'")) == 0


def test_a_members_forged_qa_run_reaches_neither_the_team_server_nor_the_team_report(
        team, alice_gated, bob_pipeline, monkeypatch, tmp_path):
    """bob, with MANAGE only on demo/bob and iris_model.bob, forges a qa run for a payload model
    in his own experiment and moves iris_model.bob@champion to it. The team server and the team
    report (both on the scikit-learn runtime, where a pickle would be loaded) leave bob's
    model out; the payload never runs. bob's champion is put back afterwards."""
    marker = tmp_path / "pwned"
    bob = team.client("bob", monkeypatch)
    genuine = bob.get_model_version_by_alias(f"{MODEL}.bob", "champion").version
    forged = team.as_member("bob", sys.executable, str(ROOT / "tests" / "e2e" / "attacks.py"), "forge-qa-run",
                            f"{MODEL}.bob", str(marker), "champion")
    assert forged.returncode == 0, forged.stderr[-3000:]
    try:
        served = team.as_member("reader", sys.executable, "-m", "mlflow", "run", ".", "-e", "serve", "--env-manager",
                                "local", "-P", "overrides=data=iris serve.mode=smoke serve.team_variants=true "
                                               "serve.runtime=sklearn")
        reported = team.as_member("reader", sys.executable, "-m", "mlflow", "run", ".", "-e", "report",
                                  "--env-manager", "local", "-P", "overrides=data=iris runtime=sklearn")
    finally:
        bob.set_registered_model_alias(f"{MODEL}.bob", "champion", genuine)
    assert not marker.exists(), "the payload ran"
    assert served.returncode == 0, served.stderr[-3000:]
    assert re.search(rf"variant 'bob': cannot load model models:/{MODEL}\.bob@champion: .*no passing verdict of "
                     r"the team gate .*; that arm is not served", served.stderr), served.stderr[-3000:]
    assert reported.returncode == 0, reported.stderr[-3000:]
    carol = team.client("carol", monkeypatch)
    run = carol.search_runs([carol.get_experiment_by_name("demo/reader").experiment_id],
                            "tags.`pipeline.step` = 'report'", order_by=["attributes.start_time DESC"])[0]
    board = json.loads(open(carol.download_artifacts(run.info.run_id, "team_report/leaderboard.json",
                                                     str(tmp_path))).read())
    (bobs,) = [r for r in board if r["label"] == "bob"]
    assert "no passing verdict of the team gate" in bobs["error"]


def test_a_gated_members_pickle_that_runs_in_the_team_server_can_change_nothing(team, alice_gated, bob_pipeline,
                                                                               monkeypatch, tmp_path):
    """bob registers a copy of his champion whose ONNX file is genuine and whose model.pkl is
    Python that, when unpickled, tries to tag the team model, write a run into the gate's
    experiment and tag alice's model. The gate scores the ONNX file and signs it. The team
    server on the default runtime (onnx) never runs it; on the scikit-learn runtime it runs (a
    pickle is code) with the READ-only identity's login, and every write is refused (403)."""
    marker = tmp_path / "pwned.json"
    bob = team.client("bob", monkeypatch)
    genuine = bob.get_model_version_by_alias(f"{MODEL}.bob", "champion").version
    made = team.as_member("bob", sys.executable, str(ROOT / "tests" / "e2e" / "attacks.py"), "gated-payload",
                          f"{MODEL}.bob", str(marker), MODEL)
    assert made.returncode == 0, made.stderr[-3000:]
    serve = (sys.executable, "-m", "mlflow", "run", ".", "-e", "serve", "--env-manager", "local", "-P",
             "overrides=data=iris serve.mode=smoke serve.team_variants=true")
    try:
        gated = gate(team, "bob")
        onnx = team.as_member("reader", *serve)
        assert gated.returncode == 0 and onnx.returncode == 0, gated.stderr[-3000:] + onnx.stderr[-3000:]
        assert not marker.exists(), "the payload ran on the onnx runtime"
        team.as_member("reader", *serve[:-1], serve[-1] + " serve.runtime=sklearn")  # bob's arm: no model after it
    finally:
        bob.set_registered_model_alias(f"{MODEL}.bob", "champion", genuine)
    tried = json.loads(marker.read_text())  # it ran, as the READ-only identity, and changed nothing
    assert tried.pop("user") == "reader"
    assert tried and all("PERMISSION_DENIED" in outcome or "403" in outcome for outcome in tried.values()), tried
    alice = team.client("alice", monkeypatch)
    assert "pwned" not in alice.get_registered_model(MODEL).tags
    assert "pwned" not in alice.get_registered_model(f"{MODEL}.alice").tags
    gate_runs = alice.search_runs([alice.get_experiment_by_name("demo/gate").experiment_id],
                                  "tags.`team.member` = 'reader'")
    assert gate_runs == [] and all(r.data.tags.get("team.member") == "alice" for r in alice.search_runs(
        [alice.get_experiment_by_name("demo/gate").experiment_id]))
