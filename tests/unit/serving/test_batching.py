"""mlpipe/serving/batching.py: MLflow's parsing reused, batching and splitting, the micro-batcher.
Real pyfunc models (tests/unit/serving/conftest.py)."""

import asyncio
import json

import numpy as np
import pandas as pd
import pytest

from mlpipe.config import compose, to_container
from mlpipe.serving import batching
from mlpipe.serving.variants import LiveVariant

BATCHING = to_container(compose([]))["serve"]["batching"]  # the shipped settings (conf/serve/default.yaml)


def _parse(model, body, ctype="application/json"):
    return batching.parse(body if isinstance(body, bytes) else json.dumps(body).encode(), ctype, model.metadata,
                        model.metadata.get_input_schema())


def test_every_mlflow_payload_format_parses_to_the_same_frame(iris_model):
    model, X = iris_model
    rows = X.head(3)
    split = json.loads(rows.to_json(orient="split", index=False))
    formats = [{"dataframe_split": split}, {"dataframe_records": rows.to_dict(orient="records")},
               {"instances": rows.to_dict(orient="records")}, {"inputs": rows.to_dict(orient="list")}]
    for payload in formats:
        data, params = _parse(model, payload)
        assert np.allclose(np.asarray(pd.DataFrame(data)[list(X.columns)], dtype=float), rows.to_numpy())
    csv, _ = _parse(model, rows.to_csv(index=False).encode(), "text/csv")
    assert csv.shape == (3, 4)
    parquet, _ = _parse(model, rows.to_parquet(index=False), "application/vnd.apache.parquet")
    assert parquet.shape == (3, 4)


def test_wrong_content_type_is_mlflows_415(iris_model):
    data, (status, text, _) = _parse(iris_model[0], b"x", "application/xml")
    assert data is None and status == 415 and "only supports" in text


def test_malformed_json_is_mlflows_400(iris_model):
    with pytest.raises(Exception) as info:
        _parse(iris_model[0], b"{not json")
    status, body = batching.error_payload(info.value)
    assert status == 400 and "valid JSON" in json.loads(body)["message"]


def test_split_predictions_cuts_arrays_frames_and_lists():
    assert [p.tolist() for p in batching.split_predictions(np.arange(6), [1, 2, 3])] == [[0], [1, 2], [3, 4, 5]]
    parts = batching.split_predictions(pd.Series([5, 6, 7], index=[10, 11, 12]), [2, 1])
    assert [p.tolist() for p in parts] == [[5, 6], [7]] and list(parts[1].index) == [0]
    assert batching.split_predictions([1, 2], [1, 1]) == [[1], [2]]
    with pytest.raises(ValueError, match="3 predictions for 4 rows"):
        batching.split_predictions(np.arange(3), [2, 2])


def _records(frame):
    return json.dumps({"dataframe_records": frame.to_dict(orient="records")}).encode()


def _split(frame):
    return json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}).encode()


def test_merge_key_only_for_plain_json_frames_with_equal_columns(iris_model):
    _, X = iris_model
    key, rows = batching.merge_key(_records(X.head(2)), "application/json")
    assert key == ("dataframe_records", tuple(X.columns)) and len(rows) == 2
    key, rows = batching.merge_key(_split(X.head(3)), "application/json; charset=utf-8")
    assert key == ("dataframe_split", tuple(X.columns)) and len(rows) == 3
    ragged = json.dumps({"dataframe_records": [{"a": 1}, {"b": 2}]}).encode()
    with_params = json.dumps({"dataframe_records": [{"a": 1}], "params": {"k": 1}}).encode()
    for body, ctype in [(ragged, "application/json"), (with_params, "application/json"),
                        (_records(X.head(1)), "text/csv"), (b"{bad", "application/json"),
                        (json.dumps({"inputs": {"a": [1]}}).encode(), "application/json"),
                        (_records(X.head(1)), "application/json; charset=latin-1"), (_records(X.head(1)), None)]:
        assert batching.merge_key(body, ctype) is None


def test_row_keys_are_the_same_for_the_same_values_in_either_format_and_any_column_order(iris_model):
    _, X = iris_model
    rows = X.iloc[[0, 1, 0]]
    by_records = batching.row_keys(*_found(_records(rows)))
    by_split = batching.row_keys(*_found(_split(rows)))
    reordered = batching.row_keys(*_found(_records(rows[list(reversed(X.columns))])))
    assert by_records == by_split == reordered
    assert by_records[0] == by_records[2] != by_records[1] and len(by_records[0]) == 16
    changed = rows.copy()
    changed.iloc[0, 0] += 0.1
    assert batching.row_keys(*_found(_records(changed)))[0] != by_records[0]


def _found(body):
    (_, columns), rows = batching.merge_key(body, "application/json")
    return columns, rows


def test_answers_carry_their_row_keys_merged_or_alone_and_none_for_csv(iris_model):
    model, X = iris_model
    schema = model.metadata.get_input_schema()
    frames = [X.iloc[[3]], X.iloc[[3, 7]], X.iloc[[7]]]
    merged = batching.predict_batch(model, schema, [(_records(f), "application/json") for f in frames], max_rows=64)
    alone = batching.predict_batch(model, schema, [(_split(frames[1]), "application/json")], max_rows=64)
    assert merged[1].keys == alone[0].keys == merged[0].keys + merged[2].keys
    csv = batching.predict_batch(model, schema, [(frames[1].to_csv(index=False).encode(), "text/csv")], max_rows=64)
    assert csv[0].error is None and csv[0].rows == 2 and csv[0].keys is None


def test_a_batch_answers_like_single_calls(iris_model):
    model, X = iris_model
    schema = model.metadata.get_input_schema()
    frames = [X.iloc[[i]] for i in range(0, 150, 15)] + [X.iloc[20:25]]
    requests = [(_records(f) if i % 2 else _split(f), "application/json") for i, f in enumerate(frames)]
    answers = batching.predict_batch(model, schema, requests, max_rows=64)
    for frame, answer in zip(frames, answers):
        assert answer.error is None and answer.rows == len(frame)
        assert list(answer.predictions) == list(model.predict(frame))


def test_batches_respect_max_rows(iris_model):
    model, X = iris_model
    schema = model.metadata.get_input_schema()
    requests = [(_records(X.iloc[i:i + 3]), "application/json") for i in range(0, 30, 3)]
    answers = batching.predict_batch(model, schema, requests, max_rows=7)
    assert [list(a.predictions) for a in answers] == [list(model.predict(X.iloc[i:i + 3])) for i in range(0, 30, 3)]


def test_one_bad_request_in_a_batch_fails_alone_and_says_why_the_batch_split(iris_model, capsys):
    model, X = iris_model
    schema = model.metadata.get_input_schema()
    bad = X.head(1).astype(object)
    bad.iloc[0, 0] = "not-a-number"
    requests = [(_records(X.iloc[[0]]), "application/json"), (_records(bad), "application/json"),
                (_records(X.iloc[[100]]), "application/json"), (b"x", "application/xml")]
    answers = batching.predict_batch(model, schema, requests, max_rows=64)
    assert list(answers[0].predictions) == list(model.predict(X.iloc[[0]]))
    assert list(answers[2].predictions) == list(model.predict(X.iloc[[100]]))
    status, body = batching.error_payload(answers[1].error)
    assert status == 400 and "sepal length (cm)" in json.loads(body)["message"]
    assert answers[3].http[0] == 415
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and said[0].startswith("[mlpipe] serve: a merged predict call of 3 requests failed (")
    assert said[0].endswith("); answering them one by one")


def test_wrong_columns_name_the_missing_and_extra_ones_without_the_payload_or_the_schema(iris_model):
    """MLflow's own message carries every row and the whole schema; the answer keeps its 400 and
    error code (what `mlflow models serve` answers) with only the cause."""
    model, X = iris_model
    schema = model.metadata.get_input_schema()
    wrong = X.head(2).rename(columns={"petal width (cm)": "petal_width"})
    (answer,) = batching.predict_batch(model, schema, [(_records(wrong), "application/json")], max_rows=64)
    status, body = batching.error_payload(answer.error)
    error = json.loads(body)
    assert status == 400 and error["error_code"] == "INVALID_PARAMETER_VALUE"
    assert error["message"] == ("the request does not fit the model's input schema: Model is missing inputs "
                                "['petal width (cm)']. Note that there were extra inputs: ['petal_width'].")
    assert "Failed to enforce" in str(answer.error)  # what MLflow said, cut down


def test_micro_batcher_merges_concurrent_requests(iris_model):
    model, X = iris_model
    variant = LiveVariant("a", "uri", 1.0, model, "7")

    async def go():
        batcher = batching.MicroBatcher(variant, model.metadata.get_input_schema(),
                                        BATCHING | {"max_rows": 64, "max_wait_ms": 20})
        batcher.start()
        try:
            answers = await asyncio.gather(*(batcher.submit(_records(X.iloc[[i]]), "application/json")
                                             for i in range(40)))
        finally:
            batcher.close()
        return answers, batcher.batches

    answers, batches = asyncio.run(go())
    assert [int(a.predictions[0]) for a in answers] == [int(p) for p in model.predict(X.iloc[:40])]
    assert {a.version for a in answers} == {"7"}
    assert batches < 40 / 4  # merged, not one predict per request


# -- when a batch waits for more (serve.batching.adaptive) ---------------------------------------

# The rule's weights as the tests below work them out (serve.batching.adaptive_smoothing and
# adaptive_threshold ship with these values).
RULE = {"smoothing": 0.2, "threshold": 0.5}


def test_the_rule_the_tests_work_out_is_the_shipped_one():
    assert (BATCHING["adaptive_smoothing"], BATCHING["adaptive_threshold"]) == (RULE["smoothing"], RULE["threshold"])

def test_arrival_window_learns_to_wait_from_bursts_and_to_stop_when_quiet():
    window = batching.ArrivalWindow(0.002, **RULE)
    assert not window.should_wait()  # nothing seen yet: start at once
    now = 0.0
    for _ in range(3):  # a burst of 20 arrives inside each batch's first 2 ms
        window.opened(now)
        for k in range(20):
            window.arrived(now + 0.0001 * k)
        now += 0.02
        assert window.should_wait()
    for _ in range(30):  # one client: its next request comes after its answer, outside the window
        window.opened(now)
        window.arrived(now + 0.015)
        now += 0.02
        window.should_wait()
    assert not window.should_wait()


def test_arrival_window_counts_nobody_who_came_after_the_batch_answered():
    window = batching.ArrivalWindow(0.05, **RULE)
    for k in range(10):  # a fast model: the lone client's next request is inside 50 ms, but after its answer
        window.opened(k * 0.01)
        window.answered(k * 0.01 + 0.004)
        window.arrived(k * 0.01 + 0.005)
        assert not window.should_wait()


def test_arrival_window_remembers_and_keeps_its_end_when_answered_late():
    window = batching.ArrivalWindow(0.002, **RULE)
    for k in range(3):
        window.opened(k * 0.02)
        for _ in range(20):
            window.arrived(k * 0.02 + 0.001)
        window.answered(k * 0.02 + 0.015)
        window.should_wait()
    window.opened(0.1)
    window.answered(0.115)  # answered after the window ended: it does not reopen it
    window.arrived(0.110)
    assert window.should_wait()  # one quiet batch after bursts: still expects some (a moving average)
    assert window.expected == pytest.approx(0.8 * 9.76)  # 4, 7.2, 9.76 after the bursts; nobody in the last


def test_arrival_window_never_waits_without_a_wait_and_counts_nothing_between_windows():
    never = batching.ArrivalWindow(0.0, **RULE)
    never.opened(0.0)
    for _ in range(50):
        never.arrived(0.0)
    assert not never.should_wait()
    window = batching.ArrivalWindow(0.002, **RULE)
    window.opened(0.0)
    assert not window.should_wait()  # the window is closed by should_wait: later arrivals count for nothing
    for _ in range(50):
        window.arrived(0.001)
    assert not window.should_wait()


class _GatedModel:
    """A real pyfunc model whose predict waits for `gate`: the test decides when a batch ends."""

    def __init__(self, model):
        import threading

        self.model, self.metadata, self.gate = model, model.metadata, threading.Event()

    def predict(self, data, params=None):
        assert self.gate.wait(30), "the test never opened the gate"
        return self.model.predict(data)


def _run_batcher(model, X, pattern, **options):
    variant = LiveVariant("a", "uri", 1.0, model, "7")

    async def go():
        batcher = batching.MicroBatcher(variant, model.metadata.get_input_schema(), BATCHING | options)
        batcher.start()
        try:
            answers = await pattern(batcher, lambda i: batcher.submit(_records(X.iloc[[i]]), "application/json"))
        finally:
            batcher.close()
        return answers, batcher.batches, batcher.waits

    return asyncio.run(go())


async def _until(condition):
    for _ in range(30_000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("timed out")


async def _one_client(batcher, send):
    return [await send(i) for i in range(6)]


def test_adaptive_batching_does_not_hold_a_lone_client_the_fixed_wait_holds_every_batch(iris_model):
    model, X = iris_model
    answers, batches, waits = _run_batcher(model, X, _one_client, max_rows=64, max_wait_ms=50)
    assert [int(a.predictions[0]) for a in answers] == [int(p) for p in model.predict(X.iloc[:6])]
    assert (batches, waits) == (6, 0)
    _, batches, waits = _run_batcher(model, X, _one_client, max_rows=64, max_wait_ms=50, adaptive=False)
    assert (batches, waits) == (6, 6)


def test_adaptive_batching_learns_to_wait_when_requests_come_in_bursts(iris_model):
    """Ordered by events, not by sleeps: the first request predicts alone (nothing seen yet) and
    holds the predictor until a burst of 20 has queued inside its window; the next batch takes
    the burst and, having learnt, waits for more: the 22nd request, sent only once the burst has
    left the queue, joins it (max_rows=21 ends the wait; max_wait is a minute)."""
    model, X = iris_model
    gated = _GatedModel(model)

    async def pattern(batcher, send):
        first = asyncio.ensure_future(send(0))
        await _until(lambda: batcher.batches == 1)
        burst = [asyncio.ensure_future(send(i)) for i in range(1, 21)]
        await _until(lambda: batcher.queue.qsize() == 20)
        gated.gate.set()
        await _until(lambda: first.done() and batcher.queue.qsize() == 0)
        return await asyncio.gather(first, *burst, send(21))

    answers, batches, waits = _run_batcher(gated, X, pattern, max_rows=21, max_wait_ms=60_000)
    assert [int(a.predictions[0]) for a in answers] == [int(p) for p in model.predict(X.iloc[:22])]
    assert (batches, waits) == (2, 1)
