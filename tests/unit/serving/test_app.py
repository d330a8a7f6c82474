"""mlpipe/serving/app.py over real HTTP on 127.0.0.1 (uvicorn in a thread) with models saved to tmp_path, under both runtimes:
routing policies and feedback, cheaply, without a pipeline. The full server through `mlflow run`
is tests/e2e/test_serving.py."""

import json

import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from mlpipe.config import compose, to_container
from mlpipe.serving import app, server, smoke, variants
from mlpipe.serving.spec import ServeSpec
from tests.unit.serving.conftest import save_served_model


class Paths(list):
    """The saved models' paths, and the runtime the tests serve them with."""

    runtime = "onnx"


@pytest.fixture(scope="module", params=["onnx", "sklearn"])
def model_paths(request, tmp_path_factory):
    X, y = load_iris(return_X_y=True, as_frame=True)
    paths = Paths()
    paths.runtime = request.param
    for name, c in (("a", 1.0), ("b", 0.01)):
        path = tmp_path_factory.mktemp("m") / name
        save_served_model(path, LogisticRegression(C=c, max_iter=500), X, y)
        paths.append(str(path))
    return paths, X


def _spec(tmp_path, paths, *overrides):
    arms = f"[{{name: a, model_uri: '{paths[0]}'}}, {{name: b, model_uri: '{paths[1]}'}}]"
    # models saved to paths: no qa run vouches for them (the trust check: test_variants.py)
    scfg = to_container(compose([f"serve.variants={arms}", "serve.allow_unvalidated=true",
                                 f"serve.runtime={paths.runtime}",
                                 f"serve.feedback.secret_file={tmp_path / 'feedback.secret'}", *overrides]))["serve"]
    spec = ServeSpec.from_config(scfg, "unused", str(tmp_path / "records.db"), "cloudpickle", [])
    spec.seed = 0  # deterministic random routing
    return spec


def _served(spec):
    """The app of `spec` on a free port of 127.0.0.1, its models loaded: a context giving its URL."""
    return smoke.BackgroundServer(app.create_app(spec, variants.load_variants(spec)), "127.0.0.1", startup_timeout=60, shutdown_timeout=5,
                                  log_level="warning")


def _post(url, path, payload, headers=None):
    import urllib.request

    req = urllib.request.Request(url + path, data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.headers, json.loads(resp.read())


def _label(url, headers, label):
    return _post(url, "/feedback", {"request_id": headers["X-Request-Id"], "token": headers["X-Feedback-Token"],
                                    "label": label})


def test_thompson_routing_moves_traffic_to_the_arm_with_better_feedback(tmp_path, model_paths):
    paths, X = model_paths
    spec = _spec(tmp_path, paths, "serve.routing.policy=thompson", "serve.routing.thompson_refresh_seconds=0.2",
                 "serve.records_flush_ms=20")
    row = {"dataframe_records": X.head(1).to_dict(orient="records")}
    with _served(spec) as url:
        # Feedback on the arm the router chose: a is always right, b always wrong.
        for _ in range(80):
            headers, body = _post(url, "/invocations", row)
            prediction = body["predictions"][0]
            _label(url, headers, prediction if headers["X-Variant"] == "a" else prediction + 1)
        import time

        time.sleep(1.0)  # the bandit re-reads feedback every 0.2 s
        chosen = [_post(url, "/invocations", row)[0]["X-Variant"] for _ in range(100)]
    assert chosen.count("a") >= 95


def test_weighted_routing_without_keys_follows_the_weights(tmp_path, model_paths):
    paths, X = model_paths
    spec = _spec(tmp_path, paths)
    spec.variants[1]["weight"] = 3.0
    row = {"dataframe_records": X.head(1).to_dict(orient="records")}
    with _served(spec) as url:
        chosen = [_post(url, "/invocations", row)[0]["X-Variant"] for _ in range(400)]
    assert 0.68 < chosen.count("b") / 400 < 0.82


def test_a_prediction_over_the_time_limit_is_504_and_recorded(tmp_path, model_paths):
    import urllib.error

    paths, X = model_paths
    spec = _spec(tmp_path, paths, "serve.limits.request_timeout_s=0.001", "serve.records_flush_ms=20",
                 "serve.routing.allow_override=true")
    many = {"dataframe_records": X.sample(20000, replace=True, random_state=0).to_dict(orient="records")}
    with _served(spec) as url:
        with pytest.raises(urllib.error.HTTPError) as info:
            _post(url, "/invocations", many, {"X-Variant-Override": "a"})
        metrics = smoke.request(f"{url}/metrics", None, 30)[1].decode()
    assert info.value.code == 504
    assert "serve.limits.request_timeout_s=0.001" in json.loads(info.value.read())["message"]
    assert 'variant="a",model_version="unregistered",status="504"} 1' in metrics


def test_a_taken_port_or_unwritable_records_stop_start_up_with_one_clear_error(tmp_path, model_paths):
    import socket

    from mlpipe.errors import ServingError

    paths, _ = model_paths
    spec = _spec(tmp_path, paths)
    scfg = to_container(compose([]))["serve"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        scfg["port"] = taken.getsockname()[1]
        with pytest.raises(ServingError, match=rf"cannot listen on 127.0.0.1:{scfg['port']}: .*choose another"):
            server.serve(spec, [], scfg)
    scfg["port"] = smoke.free_port("127.0.0.1")
    (tmp_path / "a-file").write_text("not a folder")
    spec.records = str(tmp_path / "a-file" / "records.db")
    with pytest.raises(ServingError, match="cannot open the serving records at .*set serve.records"):
        server.serve(spec, [], scfg)


def test_start_up_objects_are_moved_out_of_the_collectors_reach(tmp_path, model_paths):
    """A full collection over everything start-up loaded paused every request for 200-250 ms
    (issue 16's p99); the app freezes it once the models are loaded, and still answers."""
    import gc

    paths, X = model_paths
    spec = _spec(tmp_path, paths)
    gc.unfreeze()
    try:
        served = app.create_app(spec, variants.load_variants(spec))
        assert gc.get_freeze_count() == 0
        with smoke.BackgroundServer(served, "127.0.0.1", startup_timeout=60, shutdown_timeout=5, log_level="warning") as url:
            frozen = gc.get_freeze_count()
            assert frozen > 100_000, frozen  # MLflow, scikit-learn, pandas, the models
            _, body = _post(url, "/invocations", {"dataframe_records": X.head(2).to_dict(orient="records")})
            assert len(body["predictions"]) == 2
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("adaptive, waits", [("true", 0), ("false", 3)])
def test_variants_show_the_batches_that_waited(tmp_path, model_paths, adaptive, waits):
    """serve.batching.adaptive reaches the batcher: one client, one request after another; the
    fixed wait holds every batch, the adaptive one none."""
    paths, X = model_paths
    spec = _spec(tmp_path, paths, f"serve.batching.adaptive={adaptive}", "serve.routing.allow_override=true")
    row = {"dataframe_records": X.head(1).to_dict(orient="records")}
    with _served(spec) as url:
        for _ in range(3):
            _post(url, "/invocations", row, {"X-Variant-Override": "a"})
        view = json.loads(smoke.request(f"{url}/variants", None, 30)[1])
    a = next(v for v in view["variants"] if v["name"] == "a")
    assert (a["batches"], a["requests"], a["waits"]) == (3, 3, waits)


def test_feedback_whose_body_does_not_arrive_is_408(tmp_path, model_paths):
    import http.client
    from urllib.parse import urlsplit

    paths, _ = model_paths
    spec = _spec(tmp_path, paths, "serve.limits.body_timeout_s=0.5")
    with _served(spec) as url:
        parts = urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        try:  # 100 bytes promised, 15 sent: the server waits for the rest
            conn.putrequest("POST", "/feedback")
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", "100")
            conn.endheaders(b'{"request_id": ')
            answer = conn.getresponse()
            status, text = answer.status, answer.read().decode()
        finally:
            conn.close()
    assert status == 408 and "serve.limits.body_timeout_s=0.5" in json.loads(text)["message"]


def _status(url, path, payload, headers=None):
    import urllib.error

    try:
        return 200, _post(url, path, payload, headers)[1]
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_feedback_needs_the_answers_token_once_and_one_label_per_row(tmp_path, model_paths):
    """The attacks on /feedback: no token, another answer's token, a replay, labels that are not
    one per row, a body over the limit; each refused with its status and nothing written."""
    paths, X = model_paths
    spec = _spec(tmp_path, paths, "serve.feedback.max_body_kb=1", "serve.feedback.max_label_chars=8")
    rows = {"dataframe_records": X.head(3).to_dict(orient="records")}
    with _served(spec) as url:
        first, body = _post(url, "/invocations", rows)
        second, _ = _post(url, "/invocations", rows)
        rid = first["X-Request-Id"]
        assert len(first["X-Feedback-Token"]) == 32 and first["X-Feedback-Token"] != second["X-Feedback-Token"]
        labels = body["predictions"]
        cases = [({"request_id": rid, "label": labels}, 403, "with no token"),
                 ({"request_id": rid, "token": second["X-Feedback-Token"], "label": labels}, 403,
                  "with a token that is not this answer's"),
                 ({"request_id": rid, "token": first["X-Feedback-Token"], "label": labels[:2]}, 400,
                  "2 label(s) for a request of 3 row(s)"),
                 ({"request_id": rid, "token": first["X-Feedback-Token"], "label": ["x" * 9] * 3}, 400,
                  "a label of 9 characters; at most serve.feedback.max_label_chars=8"),
                 ({"request_id": rid, "token": first["X-Feedback-Token"], "label": [[1]] * 3}, 400,
                  "a label of type list"),
                 ({"request_id": rid, "token": first["X-Feedback-Token"], "label": [0] * 600}, 413,
                  "feedback body over serve.feedback.max_body_kb=1"),
                 ({"request_id": rid, "token": first["X-Feedback-Token"], "label": labels}, 200, None),
                 ({"request_id": rid, "token": first["X-Feedback-Token"], "label": labels}, 409,
                  "has its labels already: one label set per answer")]
        for payload, status, message in cases:
            got, answer = _status(url, "/feedback", payload)
            assert (got, message is None or message in answer["message"]) == (status, True), (payload, answer)
        # the token may come as a header too
        assert _status(url, "/feedback", {"request_id": second["X-Request-Id"], "label": labels},
                       {"X-Feedback-Token": second["X-Feedback-Token"]})[0] == 200
    import sqlite3

    with sqlite3.connect(tmp_path / "records.db") as db:
        assert db.execute("SELECT request_id, label FROM feedback ORDER BY id").fetchall() == [
            (rid, json.dumps(labels)), (second["X-Request-Id"], json.dumps(labels))]


def test_the_override_header_is_refused_unless_allowed_and_never_counts(tmp_path, model_paths):
    from mlpipe.serving.records import db, reads

    paths, X = model_paths
    row = {"dataframe_records": X.head(1).to_dict(orient="records")}
    with _served(_spec(tmp_path, paths)) as url:
        status, answer = _status(url, "/invocations", row, {"X-Variant-Override": "b"})
    assert status == 403 and answer["message"] == ("X-Variant-Override is off (serve.routing.allow_override=false): "
                                                   "a client does not choose its variant")
    spec = _spec(tmp_path, paths, "serve.routing.allow_override=true", "serve.records_flush_ms=20")
    with _served(spec) as url:
        for arm in ("a", "b", "b"):
            headers, body = _post(url, "/invocations", row, {"X-Variant-Override": arm})
            assert headers["X-Variant"] == arm
            _label(url, headers, body["predictions"][0])
        headers, body = _post(url, "/invocations", row, {"X-Request-Key": "k"})
        _label(url, headers, body["predictions"][0])
    store = db.Db(tmp_path / "records.db", 5)
    counted = reads.labelled_stream(store, "default")
    assert {arm: len(rows) for arm, rows in counted.items()} == {headers["X-Variant"]: 1}
    assert store.execute("SELECT COUNT(*) FROM requests WHERE overridden = 1") == [(3,)]


def test_a_full_record_store_still_answers_and_refuses_feedback(tmp_path, model_paths):
    import time

    paths, X = model_paths
    spec = _spec(tmp_path, paths, "serve.limits.max_records_mb=0.01", "serve.records_flush_ms=20")
    row = {"dataframe_records": X.head(50).to_dict(orient="records")}
    with _served(spec) as url:
        for _ in range(40):  # about 40 KB of predictions and row keys
            headers, _ = _post(url, "/invocations", row)
        time.sleep(1.5)  # the writer checks the size at most once a second
        headers, body = _post(url, "/invocations", row)
        assert len(body["predictions"]) == 50
        status, answer = _status(url, "/feedback", {"request_id": headers["X-Request-Id"],
                                                   "token": headers["X-Feedback-Token"], "label": [0] * 50})
        metrics = smoke.request(f"{url}/metrics", None, 30)[1].decode()
    assert status == 507 and "serve.limits.max_records_mb" in answer["message"]
    dropped = int(next(line for line in metrics.splitlines() if line.startswith("mlpipe_records_dropped_total ")).split()[1])
    assert dropped >= 1


def test_the_server_keeps_the_sampled_requests_rows_and_reads_them_back_with_their_labels(tmp_path, model_paths):
    """serve.inputs: a private column never kept, both JSON formats kept, a CSV request answered
    but not kept; served_frame gives the rows with their predictions and, once labelled, labels."""
    import time

    from mlpipe.serving.records.reads import served_frame

    paths, X = model_paths
    private = X.columns[0]
    spec = _spec(tmp_path, paths, f"serve.inputs.private=['{private}']", "serve.records_flush_ms=20")
    rows = X.head(3)
    with _served(spec) as url:
        first, answer = _post(url, "/invocations", {"dataframe_records": rows.to_dict(orient="records")})
        _post(url, "/invocations", {"dataframe_split": rows.to_dict(orient="split")})
        import urllib.request

        csv = urllib.request.Request(url + "/invocations", data=rows.to_csv(index=False).encode(),
                                     headers={"Content-Type": "text/csv"})
        assert urllib.request.urlopen(csv, timeout=30).status == 200
        _label(url, first, [0, 1, 2])
        time.sleep(0.2)  # the writer's flush
    served = served_frame(spec.records, spec.experiment, 30)
    assert list(served.columns[:3]) == list(X.columns[1:]) and private not in served.columns
    assert len(served) == 6 and served["request_id"].nunique() == 2  # the CSV request: not a JSON frame
    assert served[list(X.columns[1:])].to_numpy().tolist() == rows[X.columns[1:]].to_numpy().tolist() * 2
    assert served["label"].tolist() == [0, 1, 2, None, None, None]
    assert served["prediction"].tolist()[:3] == answer["predictions"]


def test_a_sample_rate_of_zero_keeps_no_rows(tmp_path, model_paths):
    from mlpipe.serving.records.reads import served_frame

    paths, X = model_paths
    spec = _spec(tmp_path, paths, "serve.inputs.sample_rate=0")
    with _served(spec) as url:
        for _ in range(5):
            _post(url, "/invocations", {"dataframe_records": X.head(2).to_dict(orient="records")})
    assert served_frame(spec.records, spec.experiment, 30).empty
