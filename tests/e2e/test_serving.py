"""The model server end to end: `mlflow run . -e serve` in its own process on 127.0.0.1 with two
variants of a model a pipeline registered, real HTTP clients, `mlflow models serve` beside it
for the wire format, the A/B report through `mlflow run`, and a graceful SIGTERM."""

from __future__ import annotations

import asyncio
import io
import json
import re
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from services import free_port, stop, wait_for_port, wait_group_gone
from support import MODEL, ROOT, Store, error_lines, register_wine

sys.path.insert(0, str(ROOT / "benchmarks"))
from loadgen import run_load  # noqa: E402

def http(url: str, body: bytes | None = None, content_type: str = "application/json", headers: dict | None = None,
         timeout: float = 30) -> tuple[int, Any, bytes]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": content_type, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def records_body(frame: pd.DataFrame) -> bytes:
    return json.dumps({"dataframe_records": frame.to_dict(orient="records")}).encode()


def label(url: str, headers, labels) -> int:
    """POST /feedback for the answer whose headers these are, with its token: the status."""
    return http(f"{url}/feedback", json.dumps({"request_id": headers["X-Request-Id"], "token": headers["X-Feedback-Token"],
                                               "label": labels}).encode())[0]


def keys_for(experiment: str, arm: str, n: int, arms: tuple = ("a", "b")) -> list[str]:
    """`n` X-Request-Key values the router sends to `arm` (its sticky assignment, equal weights):
    A/B traffic routed as users' would be, not overridden (overridden requests never count)."""
    import random

    from mlpipe.serving import abtest

    found, i = [], 0
    while len(found) < n:
        key, i = f"user-{i}", i + 1
        if arms[abtest.assign([1.0] * len(arms), experiment, key, random.Random(0))] == arm:
            found.append(key)
    return found


class Server:
    """A server process started by `mlflow run`, in its own process group, stopped by PID."""

    def __init__(self, store: Store, log: Path, args: list[str], port: int):
        self.port, self.url, self.log = port, f"http://127.0.0.1:{port}", log
        self.proc = subprocess.Popen([sys.executable, "-m", "mlflow", *args], cwd=ROOT, env=store.env,
                                     stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_port(port, self.proc, timeout=120)
        except AssertionError:
            stop(self.proc)
            raise AssertionError(log.read_text()[-3000:])

    def stop(self) -> None:
        stop(self.proc)


@pytest.fixture(scope="module")
def registered(store: Store):
    return register_wine(store)


@pytest.fixture(scope="module", params=["onnx", "sklearn"])
def ab_server(request, store: Store, registered, tmp_path_factory):
    """Variants a (the champion) and b, under each serve.runtime: every test using it runs twice
    (the champion back at v1 first: the A/B report's promotion moves it)."""
    store.client.set_registered_model_alias(MODEL, "champion", registered["v1"])
    workdir = tmp_path_factory.mktemp("ab")
    variants = workdir / "variants.yaml"
    variants.write_text(f"- {{name: a, model_uri: 'models:/{MODEL}@champion', weight: 1}}\n"
                        f"- {{name: b, model_uri: 'models:/{MODEL}/{registered['v2']}', weight: 1}}\n")
    port = free_port()
    records = workdir / "records.db"
    overrides = (f"serve.port={port} serve.variants_file={variants} serve.experiment=e2e serve.records={records} "
                 "serve.refresh_seconds=1 serve.records_flush_ms=50 serve.limits.max_body_mb=1 "
                 f"serve.limits.body_timeout_s=2 serve.runtime={request.param} serve.routing.allow_override=true")
    server = Server(store, workdir / "server.log", ["run", ".", "-e", "serve", "--env-manager", "local",
                                                    "-P", f"overrides={overrides}"], port)
    server.records = records
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mlflow_serve(store: Store, registered, tmp_path_factory):
    """`mlflow models serve` on the same model, for the wire format."""
    port = free_port()
    log = tmp_path_factory.mktemp("mlflow-serve") / "serve.log"
    server = Server(store, log, ["models", "serve", "-m", f"models:/{MODEL}/{registered['v1']}", "-p", str(port),
                                 "--env-manager", "local"], port)
    for _ in range(100):  # it listens before the model is loaded
        try:
            if http(f"{server.url}/ping", timeout=5)[0] == 200:
                break
        except OSError:
            pass
        time.sleep(0.2)
    yield server
    server.stop()


def test_variants_answer_with_their_name_version_and_a_request_id(ab_server, registered):
    body = records_body(registered["rows"].head(1))
    seen = {}
    for i in range(60):
        status, headers, payload = http(f"{ab_server.url}/invocations", body, headers={"X-Request-Key": f"user-{i}"})
        assert status == 200 and len(json.loads(payload)["predictions"]) == 1
        assert len(headers["X-Request-Id"]) == 32
        seen[headers["X-Variant"]] = headers["X-Model-Version"]
    assert seen == {"a": registered["v1"], "b": registered["v2"]}


def test_the_same_key_always_gets_the_same_variant(ab_server, registered):
    body = records_body(registered["rows"].head(1))
    for key in ("alice", "bob", "carol"):
        variants = {http(f"{ab_server.url}/invocations", body, headers={"X-Request-Key": key})[1]["X-Variant"]
                    for _ in range(8)}
        assert len(variants) == 1


def test_the_override_header_forces_a_variant(ab_server, registered):
    body = records_body(registered["rows"].head(1))
    for name in ("a", "b"):
        status, headers, _ = http(f"{ab_server.url}/invocations", body, headers={"X-Variant-Override": name})
        assert status == 200 and headers["X-Variant"] == name
    status, _, payload = http(f"{ab_server.url}/invocations", body, headers={"X-Variant-Override": "zz"})
    assert status == 400 and "no variant 'zz'; variants: a, b" in json.loads(payload)["message"]


def _payloads(rows: pd.DataFrame) -> list[tuple[str, bytes, str]]:
    split = json.loads(rows.to_json(orient="split", index=False))
    bad_type = rows.head(1).astype(object)
    bad_type.iloc[0, 0] = "lots"
    parquet = io.BytesIO()
    rows.to_parquet(parquet, index=False)
    return [
        ("dataframe_split", json.dumps({"dataframe_split": split}).encode(), "application/json"),
        ("dataframe_records", records_body(rows), "application/json"),
        ("instances", json.dumps({"instances": rows.to_dict(orient="records")}).encode(), "application/json"),
        ("inputs", json.dumps({"inputs": rows.to_dict(orient="list")}).encode(), "application/json"),
        ("csv", rows.to_csv(index=False).encode(), "text/csv"),
        ("parquet", parquet.getvalue(), "application/vnd.apache.parquet"),
        ("malformed json", b'{"dataframe_split": ', "application/json"),
        ("no format key", b'{"rows": []}', "application/json"),
        ("wrong columns", records_body(rows.head(1).rename(columns=lambda c: c + "_x")), "application/json"),
        ("wrong types", records_body(bad_type), "application/json"),
        ("wrong content type", b"<rows/>", "application/xml"),
        ("latin-1 charset", records_body(rows), "application/json; charset=latin-1"),
    ]


def test_wire_compatible_with_mlflow_models_serve(ab_server, mlflow_serve, registered):
    rows = registered["rows"].head(3)
    for name, body, ctype in _payloads(rows):
        ours = http(f"{ab_server.url}/invocations", body, ctype, headers={"X-Variant-Override": "a"})
        theirs = http(f"{mlflow_serve.url}/invocations", body, ctype)
        assert ours[0] == theirs[0], f"{name}: ours {ours[0]} {ours[2][:200]!r}, mlflow {theirs[0]} {theirs[2][:200]!r}"
        if ours[0] == 200:
            assert json.loads(ours[2]) == json.loads(theirs[2]), name
        else:
            assert json.loads(ours[2])["error_code"] == json.loads(theirs[2])["error_code"] if \
                ours[0] == 400 else ours[2] == theirs[2], name
    for path in ("/ping", "/health", "/version"):
        ours, theirs = http(f"{ab_server.url}{path}"), http(f"{mlflow_serve.url}{path}")
        assert (ours[0], ours[2]) == (theirs[0], theirs[2]) == (200, theirs[2])


def _raw_answer(sock: socket.socket, until: bytes = b"}") -> str:
    data = b""
    while not data.rstrip().endswith(until):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.decode()


def test_a_body_over_the_limit_is_413_and_the_server_keeps_serving(ab_server, registered):
    big = records_body(pd.concat([registered["rows"]] * 200, ignore_index=True))
    assert len(big) > 1024 * 1024
    # Declared too large: refused before the body is read.
    with socket.create_connection(("127.0.0.1", ab_server.port), timeout=10) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(big)}\r\n\r\n".encode() + big[:65536])
        answer = _raw_answer(sock)
    assert answer.startswith("HTTP/1.1 413") and "serve.limits.max_body_mb=1" in answer
    # Chunked, no length given: refused once the limit is passed.
    with socket.create_connection(("127.0.0.1", ab_server.port), timeout=10) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        for start in range(0, 1024 * 1024 + 65536 * 2, 65536):
            part = big[start:start + 65536]
            try:
                sock.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            except OSError:
                break
        answer = _raw_answer(sock)
    assert answer.startswith("HTTP/1.1 413")
    assert http(f"{ab_server.url}/invocations", records_body(registered["rows"].head(1)))[0] == 200


def test_a_slow_client_gets_408_and_others_are_served_meanwhile(ab_server, registered):
    with socket.create_connection(("127.0.0.1", ab_server.port), timeout=10) as slow:
        slow.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 500\r\n\r\n{\"dataframe_records\": ")
        started = time.monotonic()
        # While it dawdles, a normal client is answered at once.
        assert http(f"{ab_server.url}/invocations", records_body(registered["rows"].head(1)))[0] == 200
        assert time.monotonic() - started < 1.5
        answer = _raw_answer(slow)
    assert answer.startswith("HTTP/1.1 408") and "body_timeout_s=2" in answer


def test_a_burst_of_500_connections_gets_clean_answers(ab_server, registered):
    result = asyncio.run(run_load(f"{ab_server.url}/invocations", records_body(registered["rows"].head(1)),
                                  clients=500, seconds=3, timeout=30))
    assert result["errors"] == 0, result
    assert result["requests"] >= 500
    assert http(f"{ab_server.url}/ping")[0] == 200


def test_metrics_count_requests_per_variant_and_status(ab_server, registered):
    body = records_body(registered["rows"].head(1))
    before = _metric(ab_server, "a", registered["v1"], "200")
    for _ in range(5):
        http(f"{ab_server.url}/invocations", body, headers={"X-Variant-Override": "a"})
    text = http(f"{ab_server.url}/metrics")[2].decode()
    assert _metric(ab_server, "a", registered["v1"], "200") == before + 5
    assert f'mlpipe_requests_total{{experiment="e2e",variant="b",model_version="{registered["v2"]}",status="200"}}' \
        in text
    assert 'status="413"' in text and 'status="400"' in text
    assert "mlpipe_request_latency_seconds_bucket" in text and 'le="+Inf"' in text


def _metric(server, variant, version, status) -> int:
    text = http(f"{server.url}/metrics")[2].decode()
    prefix = f'mlpipe_requests_total{{experiment="e2e",variant="{variant}",model_version="{version}",status="{status}"}}'
    return next((int(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix)), 0)


def test_feedback_needs_the_answers_token(ab_server):
    status, _, payload = http(f"{ab_server.url}/feedback", json.dumps({"request_id": "nope", "label": 1}).encode())
    assert status == 403 and json.loads(payload)["message"].startswith("feedback for 'nope' with no token: send the "
                                                                        "answer's X-Feedback-Token")
    status, _, payload = http(f"{ab_server.url}/feedback", b'{"label": 1}')
    assert status == 400 and "request_id" in json.loads(payload)["message"]


def test_feedback_cannot_steer_the_ab_test(store: Store, ab_server, registered):
    """The attack: one request per arm chosen with the override header, then 300 label sets on
    each request id (right ones for b, wrong ones for a), then the promoting report. Overridden
    requests never count, a second label set is 409, so the report has nothing to decide on."""
    rows = registered["rows"].head(1)
    for arm, right in (("a", False), ("b", True)):
        status, headers, payload = http(f"{ab_server.url}/invocations", records_body(rows),
                                        headers={"X-Variant-Override": arm})
        assert status == 200 and headers["X-Variant"] == arm
        prediction = json.loads(payload)["predictions"][0]
        statuses = [label(ab_server.url, headers, prediction if right else (prediction + 1) % 3) for _ in range(300)]
        assert (statuses[0], set(statuses[1:])) == (200, {409})
    overrides = (f"serve.mode=report serve.experiment=e2e serve.records={ab_server.records} serve.ab.min_samples=1 "
                 "serve.ab.burn_in=2 serve.ab.promote=true serve.ab.repeats=each")
    result = store.mlflow_run("-P", f"overrides={overrides}", entry="serve")
    assert result.returncode == 0, result.output[-3000:]
    assert "promote b" not in result.stdout and "promoted:" not in result.stdout, result.stdout
    assert str(store.client.get_model_version_by_alias(MODEL, "champion").version) == registered["v1"]


def test_ab_report_finds_the_better_variant_and_promotion_reaches_the_running_server(store: Store, ab_server,
                                                                                     registered):
    """Constructed traffic: 25 requests of 10 rows per arm; labels agree with a's predictions on 6 rows
    in 10 and with b's on 9 in 10 (b serves the same model, so only the labels differ). The report
    must pick b, move champion to b's version, and the server's champion variant must follow
    without a restart. b's traffic comes first and the report is run as README shows it (no
    variants file): the control is the one the server recorded, a, not the first arm seen."""
    rows = registered["rows"]
    for name, agree in (("b", 9), ("a", 6)):
        for i, key in enumerate(keys_for("e2e", name, 25)):  # routed by the users' keys, as traffic is
            part = rows.iloc[[(i * 10 + j) % len(rows) for j in range(10)]]
            status, headers, payload = http(f"{ab_server.url}/invocations", records_body(part),
                                            headers={"X-Request-Key": key})
            assert status == 200 and headers["X-Variant"] == name
            predictions = json.loads(payload)["predictions"]
            labels = [p if j < agree else (p + 1) % 3 for j, p in enumerate(predictions)]
            assert label(ab_server.url, headers, labels) == 200
    # the labels are made per position in the request, so a row's repeats differ: count every row
    overrides = (f"serve.mode=report serve.experiment=e2e serve.records={ab_server.records} "
                 "serve.ab.min_samples=200 serve.ab.promote=true serve.ab.repeats=each")
    result = store.mlflow_run("-P", f"overrides={overrides}", entry="serve")
    assert result.returncode == 0, result.output[-3000:]
    run = store.newest("tags.`ab.winner` = 'b'")
    assert run is not None and run.info.status == "FINISHED"
    assert run.data.tags["ab.promoted_version"] == registered["v2"]
    assert run.data.tags["ab.recommendation"].startswith("promote b: better than a")
    assert "A/B experiment e2e: promote b: better than a" in result.stdout
    # its own line says what moved in the registry
    assert [line for line in result.stdout.splitlines() if line.startswith("promoted:")] == [
        f"promoted: {MODEL}@champion is now version {registered['v2']} (it was version {registered['v1']})"], result.stdout
    # one line per arm, the control first and marked (requests and errors include this module's other tests)
    assert re.search(r"^a \(control\) +\S+ +\d+ +\d+ +250 +0\.6000 ", result.stdout, re.M), result.stdout
    assert re.search(r"^b +\S+ +\d+ +\d+ +250 +0\.9000 ", result.stdout, re.M), result.stdout
    assert run.data.metrics["ab.a.accuracy"] == pytest.approx(0.6, abs=0.02)
    assert run.data.metrics["ab.b.accuracy"] == pytest.approx(0.9, abs=0.02)
    assert str(store.client.get_model_version_by_alias(MODEL, "champion").version) == registered["v2"]
    assert json.loads(store.client.get_model_version(MODEL, registered["v2"]).tags["ab.evidence"])["winner"] == "b"
    report = json.load(open(store.client.download_artifacts(run.info.run_id, "ab/report.json", str(store.path))))
    assert report["tests"][0]["p_value"] < 0.001 and report["arms"][0]["labelled"] >= 250
    card = Path(store.client.download_artifacts(run.info.run_id, "card/card.html", str(store.path))).read_text()
    assert "promote b" in card and "data:image/png;base64" in card and "<svg" in card
    # The running server re-resolves models:/wine_model@champion every second.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        _, headers, _ = http(f"{ab_server.url}/invocations", records_body(rows.head(1)),
                             headers={"X-Variant-Override": "a"})
        if headers["X-Model-Version"] == registered["v2"]:
            break
        time.sleep(0.5)
    assert headers["X-Model-Version"] == registered["v2"]


def test_traffic_replays_rows_with_their_labels_against_a_running_server(store: Store, ab_server):
    """`python -m mlpipe.team traffic`: no code to write for an A/B test's traffic. After the A/B
    report test (it counts this experiment's labelled rows exactly)."""
    import sqlite3

    def labels() -> int:
        with sqlite3.connect(ab_server.records) as db:
            return db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]

    before = labels()
    result = subprocess.run([sys.executable, "-m", "mlpipe.team", "traffic", "--url", ab_server.url, "--requests", "20",
                             "--rows-per-request", "3", "--feedback-delay-s", "0.2", "data=wine"], cwd=ROOT,
                            env=store.env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    first, last = result.stdout.strip().splitlines()
    assert first == (f"[mlpipe] traffic: all rows (178) to {ab_server.url}, 3 a request, back to back, true labels "
                     "0.2 s later")
    assert re.fullmatch(r"\[mlpipe\] traffic: 20 requests in [\d.]+ s, per arm \{.+\}; 20 labelled", last), last
    deadline = time.monotonic() + 30  # the server writes its records in batches
    while labels() < before + 20 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert labels() == before + 20



def test_a_row_sent_again_counts_once_in_the_ab_report(store: Store, registered, tmp_path):
    """The day-two case: one misclassified row sent again and again. Counted per request row
    (serve.ab.repeats=each) it makes b significantly worse than a on the same model; counted once
    per distinct row (the default) the arms are even, and the report says how many it left out."""
    variants = tmp_path / "variants.yaml"
    variants.write_text(f"- {{name: a, model_uri: 'models:/{MODEL}/{registered['v1']}'}}\n"
                        f"- {{name: b, model_uri: 'models:/{MODEL}/{registered['v1']}'}}\n")
    port, records = free_port(), tmp_path / "records.db"
    server = Server(store, tmp_path / "server.log", [
        "run", ".", "-e", "serve", "--env-manager", "local", "-P",
        f"overrides=serve.port={port} serve.variants_file={variants} serve.experiment=repeats "
        f"serve.records={records} serve.records_flush_ms=50"], port)
    rows = registered["rows"].drop_duplicates()
    key = {arm: keys_for("repeats", arm, 1)[0] for arm in ("a", "b")}

    def send(arm: str, frame: pd.DataFrame, wrong: bool) -> None:
        status, headers, payload = http(f"{server.url}/invocations", records_body(frame),
                                        headers={"X-Request-Key": key[arm]})
        assert status == 200 and headers["X-Variant"] == arm, payload
        labels = [(p + 1) % 3 if wrong else p for p in json.loads(payload)["predictions"]]
        assert label(server.url, headers, labels) == 200
    try:
        for i in range(len(rows)):  # b's first row comes back twice a round, labelled wrong
            send("a", rows.iloc[[i]], wrong=False)
            send("b", rows.iloc[[i]], wrong=False)
            send("b", rows.iloc[[0]], wrong=True)
            send("b", rows.iloc[[0]], wrong=True)
    finally:
        server.stop()
    n = len(rows)
    report = f"overrides=serve.mode=report serve.experiment=repeats serve.records={records} serve.ab.min_samples=20"
    each = store.mlflow_run("-P", f"{report} serve.ab.repeats=each", entry="serve")
    assert each.returncode == 0, each.output[-3000:]
    assert "A/B experiment repeats: keep a: b significantly worse" in each.stdout, each.stdout
    assert re.search(rf"^b +\S+ +{3 * n} +0 +{3 * n} +{1 / 3:.4f} ", each.stdout, re.M), each.stdout
    once = store.mlflow_run("-P", report, entry="serve")
    assert once.returncode == 0, once.output[-3000:]
    assert "A/B experiment repeats: keep a: no significant difference" in once.stdout, once.stdout
    assert re.search(rf"^b +\S+ +{3 * n} +0 +{n} +1\.0000 ", once.stdout, re.M), once.stdout
    assert f"labelled = distinct rows; repeats of a row counted once (serve.ab.repeats=once), left out: b {2 * n}" \
        in once.stdout
    run = store.newest("tags.`ab.recommendation` = 'keep a: no significant difference'")
    card = Path(store.client.download_artifacts(run.info.run_id, "card/card.html", str(tmp_path))).read_text()
    assert "<th>labelled (distinct rows)</th><th>repeats left out</th>" in card
    assert re.search(rf"<td>b</td>(<td>[^<]*</td>){{4}}<td>{n}</td><td>{2 * n}</td>", card), card[:3000]

def test_sigterm_drains_the_request_in_flight(ab_server, registered):
    """Last in this module: stops the shared server."""
    row = registered["rows"].head(1)
    big = json.dumps({"dataframe_split": {"columns": list(row.columns), "data": row.values.tolist() * 10000}}).encode()
    assert len(big) < 1024 * 1024

    async def go():
        reader, writer = await asyncio.open_connection("127.0.0.1", ab_server.port)
        writer.write(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(big)}\r\n\r\n".encode() + big)
        await writer.drain()
        await asyncio.sleep(0.3)  # received, being predicted
        os.killpg(ab_server.proc.pid, signal.SIGTERM)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        length = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0].split(b":")[1])
        return head, await reader.readexactly(length)

    head, payload = asyncio.run(go())
    assert head.startswith(b"HTTP/1.1 200") and len(json.loads(payload)["predictions"]) == 10000
    ab_server.proc.wait(timeout=30)
    # `mlflow run` exits on SIGTERM at once; the server process drains and writes the queued
    # records before it exits (checking before that was the flaky part)
    wait_group_gone(ab_server.proc.pid, timeout=60)
    with sqlite3.connect(ab_server.records) as conn:
        assert conn.execute("SELECT COUNT(*) FROM requests WHERE rows = 10000 AND status = 200").fetchone() == (1,)


def test_the_server_run_ended_finished_by_sigterm(store: Store, ab_server):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        runs = store.runs("tags.`serve.stopped_by` = 'SIGTERM'")
        if runs:
            break
        time.sleep(0.5)
    assert runs and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["serve.variant.a"].startswith(f"models:/{MODEL}@champion")


@pytest.mark.slow
def test_variants_with_different_inputs_stop_start_up(store: Store, registered, tmp_path):
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.dummy import DummyClassifier

    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0]})
    model = DummyClassifier().fit(frame, [0, 1, 1])
    path = tmp_path / "other"
    mlflow.sklearn.save_model(model, str(path), signature=infer_signature(frame, model.predict(frame)),
                              pip_requirements=["scikit-learn"])
    overrides = (f"\"serve.variants=[{{name: a, model_uri: 'models:/{MODEL}@champion'}}, "
                 f"{{name: odd, model_uri: '{path}'}}]\" serve.port={free_port()} serve.allow_unvalidated=true "
                 "serve.runtime=sklearn")  # a model saved without its ONNX conversion
    result = store.mlflow_run("-P", f"overrides={overrides}", entry="serve")
    assert result.returncode != 0
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "variants 'a' and 'odd' take different inputs" in lines[0] and "[x:double]" in lines[0]


def test_a_model_that_cannot_load_stops_start_up(store: Store, registered):
    result = store.mlflow_run("-P", "model_uri=models:/no_such_model@champion", "-P",
                              f"overrides=serve.port={free_port()}", entry="serve")
    assert result.returncode != 0
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "variant 'default': cannot load model models:/no_such_model@champion" in lines[0]
    failed = store.newest("tags.`pipeline.step` = 'serve' and attributes.status = 'FAILED'")
    # the store's answer keeps its class: no such registered model is the serve step's input missing
    assert failed is not None and failed.data.tags.get("error.type") == "UpstreamError"


EVIL_MODEL = """
import mlflow
from sklearn.preprocessing import FunctionTransformer
# what anyone with write access to the store can log: a skops file holding builtins.eval, and an
# MLmodel that tells skops to trust it
with mlflow.start_run():
    info = mlflow.sklearn.log_model(FunctionTransformer(func=eval), name="model", serialization_format="skops",
                                    skops_trusted_types=["builtins.eval"])
mlflow.register_model(info.model_uri, "evil")
"""


# slow: the skops refusal is unit-tested where it is made (tests/unit/training/test_model_io.py),
# and the refused-at-start-up path through serve by the tests around this one
@pytest.mark.slow
def test_a_model_holding_an_untrusted_type_is_refused_at_start_up(store: Store):
    """skops's boundary on its own (serve.runtime=sklearn: the runtime that loads it): even with
    serve.allow_unvalidated=true."""
    store.python("-c", EVIL_MODEL, check=True)
    result = store.mlflow_run("-P", "model_uri=models:/evil/1", "-P",
                              "overrides=serve.mode=smoke serve.allow_unvalidated=true serve.runtime=sklearn", entry="serve")
    assert result.returncode != 0
    errors = error_lines(result.stderr)
    assert len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith("error: serve: UntrustedModelError: variant 'default': cannot load model models:/evil/1: ")
    assert "holds or trusts types outside skops_trusted_types: builtins.eval; refused, nothing loaded" in errors[0]
    run = store.newest("tags.`mlflow.project.entryPoint` = 'serve'")
    assert run.info.status == "FAILED" and run.data.tags["error.type"] == "UntrustedModelError"


ATTACK = """
import os, sys
import mlflow
from mlflow import MlflowClient

class Shell:  # what the pickle holds: a shell command run when it is unpickled
    def __reduce__(self):
        return os.system, (f"touch {sys.argv[1]}",)

client = MlflowClient()
champion = client.get_model_version_by_alias("wine_model", "champion")
import pickle
from pathlib import Path
from sklearn.dummy import DummyClassifier

with mlflow.start_run():
    info = mlflow.sklearn.log_model(DummyClassifier().fit([[0]], [0]), name="model", serialization_format="cloudpickle",
                                    pip_requirements=["scikit-learn"])
where = client.get_logged_model(info.model_id).artifact_location.removeprefix("file://")
(Path(where) / "model.pkl").write_bytes(pickle.dumps(Shell()))
# under the champion's name, with every tag of the real champion copied onto it
version = client.create_model_version("wine_model", info.model_uri, model_id=info.model_id, tags=champion.tags)
client.set_registered_model_alias("wine_model", "attack", version.version)
"""


def _refused(result, marker: Path) -> str:
    assert result.returncode != 0 and not marker.exists(), "the pickle was loaded"
    errors = error_lines(result.stderr)
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


def test_a_version_with_the_champions_tags_copied_is_refused_before_unpickling(store: Store, registered, tmp_path):
    """The attack the trust check stops: a model whose pickle runs a shell command, registered
    under the champion's name with the champion's tags, served through an alias."""
    marker = tmp_path / "pwned"
    store.python("-c", ATTACK, str(marker), check=True)
    result = store.mlflow_run("-P", f"model_uri=models:/{MODEL}@attack", "-P", "overrides=serve.mode=smoke",
                              entry="serve")
    error = _refused(result, marker)
    assert error.startswith(f"error: serve: UntrustedModelError: variant 'default': cannot load model "
                            f"models:/{MODEL}@attack: models:/{MODEL}@attack (version ")
    assert re.search(r"its source models:/m-\w+ is not the model qa run \w+ validated \(models:/m-\w+\); refused, "
                     r"nothing loaded; serve a version qa validated, or set serve.allow_unvalidated=true$", error), error
    run = store.newest("tags.`mlflow.project.entryPoint` = 'serve'")
    assert run.info.status == "FAILED" and run.data.tags["error.type"] == "UntrustedModelError"


def test_a_validated_models_files_swapped_in_the_store_are_refused(store: Store, registered, tmp_path):
    """The champion's pickle replaced in the artifact store after qa: the digest qa recorded no
    longer matches, and nothing is unpickled (the real file is put back afterwards)."""
    import pickle

    class Shell:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    marker = tmp_path / "pwned"
    pkl = Path(store.client.get_model_version_download_uri(MODEL, registered["v1"])) / "model.pkl"
    real = pkl.read_bytes()
    try:
        pkl.write_bytes(pickle.dumps(Shell()))
        result = store.mlflow_run("-P", f"model_uri=models:/{MODEL}/{registered['v1']}", "-P",
                                  "overrides=serve.mode=smoke", entry="serve")
    finally:
        pkl.write_bytes(real)
    error = _refused(result, marker)
    assert error.startswith("error: serve: UntrustedModelError: "), error
    assert re.search(rf"cannot load model models:/{MODEL}/{registered['v1']}: models:/{MODEL}/{registered['v1']}: its "
                     r"files changed since qa validated them \(digest sha256:\w+, qa recorded sha256:\w+\): refused, "
                     r"nothing loaded$", error), error


@pytest.mark.parametrize("how", ["SIGTERM to mlflow run", "Ctrl-C"])
def test_a_stop_signal_to_the_outer_mlflow_run_stops_the_server_and_leaves_no_process(store: Store, registered,
                                                                                       tmp_path, how):
    """What a process manager or `kill <pid>` does (SIGTERM to `mlflow run` alone), and what
    Ctrl-C does (SIGINT to the terminal's foreground process group). Either way the server
    process stops too, drains, frees the port, and ends its run FINISHED with serve.stopped_by."""
    import psutil

    port = free_port()
    server = Server(store, tmp_path / "serve.log", ["run", ".", "-e", "serve", "--env-manager", "local",
                                                    "-P", f"overrides=serve.port={port} serve.refresh_seconds=0"], port)
    children = psutil.Process(server.proc.pid).children(recursive=True)
    assert children, "the serve step runs in a process of its own"
    if how == "Ctrl-C":
        os.killpg(server.proc.pid, signal.SIGINT)
    else:
        server.proc.send_signal(signal.SIGTERM)  # the outer process only, not its group
    server.proc.wait(timeout=30)
    gone, alive = psutil.wait_procs(children, timeout=60)
    assert not alive, [p.cmdline() for p in alive]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # the port is free again
    # after Ctrl-C, `mlflow run` marks the run FAILED as it exits; the step's watcher puts FINISHED
    # back once it is gone (mlpipe/run/interrupted.py)
    deadline = time.monotonic() + 30
    while (run := store.newest("tags.`mlflow.project.entryPoint` = 'serve'")).info.status != "FINISHED" \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    assert run.info.status == "FINISHED", (run.info.status, (tmp_path / "serve.log").read_text()[-2000:])
    assert run.data.tags["serve.stopped_by"] == ("SIGINT" if how == "Ctrl-C" else "SIGTERM")
