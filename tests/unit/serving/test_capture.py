"""serving/capture.py: which columns and requests the server keeps of its inputs, and their encoding."""

import random

import pytest

from mlpipe.serving.capture import TOO_LONG, Policy, decode, encode

RECORDS = (("dataframe_records", ("a", "email", "b")), [{"a": 1, "email": "x@y", "b": 2.5}, {"a": 3, "email": "z@w", "b": None}])
SPLIT = (("dataframe_split", ("a", "email", "b")), [[1, "x@y", 2.5], [3, "z@w", None]])


@pytest.mark.parametrize("frame", [RECORDS, SPLIT], ids=["records", "split"])
def test_private_columns_are_left_out_and_either_format_encodes_the_same(frame):
    policy = Policy(1.0, None, ("email",), 1000)
    assert decode(encode(frame, policy)) == (["a", "b"], [[1, 2.5], [3, None]])


def test_the_allow_list_keeps_only_its_columns_and_a_private_column_only_by_name():
    assert Policy(1.0, ("b",), (), 1000).kept(["a", "email", "b"]) == ["b"]
    assert Policy(1.0, ("email", "a"), ("email",), 1000).kept(["a", "email", "b"]) == ["a", "email"]
    assert encode(RECORDS, Policy(1.0, ("zzz",), (), 1000)) == ""  # nothing kept: no rows recorded


def test_rows_over_max_chars_are_not_kept():
    assert encode(RECORDS, Policy(1.0, None, (), 20)) == TOO_LONG
    assert decode(TOO_LONG) is None and decode("") is None


def test_the_sample_rate_keeps_that_share_of_requests():
    rng = random.Random(0)
    assert not any(Policy(0.0).draw(rng) for _ in range(1000))
    assert all(Policy(1.0).draw(rng) for _ in range(1000))
    kept = sum(Policy(0.25).draw(rng) for _ in range(4000))
    assert 900 < kept < 1100  # 1000 expected; 5 standard deviations is 137


def test_policy_from_config():
    from mlpipe.config import compose, to_container

    icfg = to_container(compose(["serve.inputs.private=[email]"]))["serve"]["inputs"]
    assert Policy.from_config(icfg) == Policy(1.0, None, ("email",), 65536)


@pytest.mark.parametrize("body", [b'{"dataframe_records": [{"a": 1, "b": 2.5}, {"a": 3, "b": null}]}',
                                  b'{"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2.5], [3, null]]}}'])
def test_with_every_column_kept_the_body_is_kept_as_it_came_and_reads_back_the_same(body):
    from mlpipe.serving.capture import Pending

    kept = Pending(((None, ("a", "b")), []), Policy(1.0, None, (), 1000), body).encode()
    assert kept == body.decode() and decode(kept) == (["a", "b"], [[1, 2.5], [3, None]])
    assert Pending(((None, ("a", "b")), []), Policy(1.0, None, (), 10), body).encode() == TOO_LONG
