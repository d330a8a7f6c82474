"""mlpipe/team/__main__.py: the team commands run with the configured client timeouts."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

from mlpipe.config import PROJECT_ROOT


def test_as_a_member_against_a_server_that_is_not_there_fails_fast_in_one_line(tmp_path):
    """`as` asks the server's /health first, bounded by team.server.probe_timeout_s: one line
    naming the address and the keys, exit 14 (StorageError), nothing run; not MLflow's retries
    (storage.http: 4 min 14 s with the shipped settings) and a traceback."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "credentials.json").write_text(json.dumps({"alice": "pw", "bob": "pw", "carol": "pw"}))
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "mlpipe.team", "as", "alice", f"team.server.state_dir={state}",
                             f"team.server.port={port}", "--", sys.executable, "-c",
                             f"open({str(tmp_path / 'ran')!r}, 'w')"], cwd=PROJECT_ROOT, capture_output=True,
                            text=True, timeout=120)
    assert time.monotonic() - started < 30
    assert result.returncode == 14, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith(f"error: team: StorageError: no MLflow server answers at http://127.0.0.1:{port} ("), \
        lines[0]
    assert lines[0].endswith("waited at most team.server.probe_timeout_s=5 s): start it (python -m mlpipe.team start) "
                             "or set team.server.host / team.server.port to where it runs"), lines[0]
    assert not (tmp_path / "ran").exists()


def test_the_driver_under_hydras_app_composes_the_team_its_steps_compose():
    """A sweep (or any command line Hydra runs itself) under `as <member>`: the driver adds
    team=<MLPIPE_TEAM> as compose() does for the steps, so its keys are theirs."""
    import os

    env = {**os.environ, "MLPIPE_TEAM": "demo", "MLFLOW_TRACKING_USERNAME": "alice"}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run([sys.executable, "-m", "steps.main", "--cfg", "job", "--package", "team"],
                            cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("# @package team\nname: demo\n"), result.stdout[:2000]


def test_traffic_against_a_server_that_is_not_there_is_one_line():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = subprocess.run([sys.executable, "-m", "mlpipe.team", "traffic", "--url", f"http://127.0.0.1:{port}",
                             "--requests", "3", "data=iris"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 14, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: team: StorageError: traffic: no model server answers at http://127.0.0.1:{port} ("), result.stderr
    nothing = subprocess.run([sys.executable, "-m", "mlpipe.team", "traffic", "data=iris"], cwd=PROJECT_ROOT,
                             capture_output=True, text=True, timeout=120)
    assert nothing.returncode == 11 and "give --requests N or --seconds T" in nothing.stderr, nothing.stderr


def test_the_start_message_repeats_only_the_overrides_that_say_which_server():
    """The printed as/status/stop commands carry state dir, host and port, never the backend
    store's URL (it may hold a PostgreSQL password)."""
    from mlpipe.team.__main__ import where_overrides

    given = ["team.server.state_dir=/s", "team.server.port=5051", "team.server.host=0.0.0.0",
             "team.server.backend_store_uri=postgresql://u:secret@db/x", "team.models=[iris_model]"]
    assert where_overrides(given) == ["team.server.state_dir=/s", "team.server.port=5051", "team.server.host=0.0.0.0"]
