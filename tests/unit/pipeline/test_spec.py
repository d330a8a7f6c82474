"""mlpipe/pipeline/spec.py: step order, upstream parameters, step selection, forced steps."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from mlpipe.errors import ConfigError
from mlpipe.pipeline.spec import AFTER_SWEEP, ORDER, STEPS, forced_steps, select_steps


def test_order_and_upstreams():
    assert ORDER == ("ingest", "preprocess", "train", "qa", "register", "serve")
    assert {name: spec.upstream for name, spec in STEPS.items()} == {
        "ingest": None, "preprocess": "ingest", "train": "preprocess", "qa": "train",
        "register": "qa", "serve": "register",
    }
    assert AFTER_SWEEP == ("register", "serve")


def test_upstream_param_names():
    assert {name: spec.upstream_param for name, spec in STEPS.items()} == {
        "ingest": None,
        "preprocess": "ingest_run_id",
        "train": "preprocess_run_id",
        "qa": "train_run_id",
        "register": "qa_run_id",
        "serve": None,  # serve takes a model URI, not a run id
    }


def test_config_keys_are_top_level_groups():
    from mlpipe.config import compose, to_container

    groups = set(to_container(compose([])))
    for spec in STEPS.values():
        assert set(spec.config_keys) <= groups, spec.name
    assert STEPS["ingest"].config_keys == ("data",)
    assert "model" in STEPS["train"].config_keys
    assert "model" not in STEPS["preprocess"].config_keys


# -- select_steps ------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", ["all", None])
def test_select_all(steps):
    assert select_steps(steps) == list(ORDER)


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ("train,qa", ["train", "qa"]),
        ("qa,train", ["train", "qa"]),  # pipeline order, not the given order
        (" train , qa ,", ["train", "qa"]),
        ("ingest", ["ingest"]),
        (["preprocess", "train", "qa"], ["preprocess", "train", "qa"]),
        (("register", "serve"), ["register", "serve"]),
        (["qa", "qa"], ["qa"]),
    ],
)
def test_select_subset(steps, expected):
    assert select_steps(steps) == expected


def test_select_accepts_hydra_list():
    assert select_steps(OmegaConf.create({"s": ["train", "qa"]}).s) == ["train", "qa"]


def test_select_non_contiguous_names_skipped_step():
    with pytest.raises(ConfigError) as info:
        select_steps("ingest,train")
    message = str(info.value)
    assert "contiguous" in message
    assert message.endswith("skips preprocess")


def test_select_non_contiguous_lists_every_skipped_step():
    with pytest.raises(ConfigError, match=r"skips preprocess,qa$"):
        select_steps(["ingest", "train", "register"])


def test_select_unknown_step():
    with pytest.raises(ConfigError) as info:
        select_steps("train,tain")
    message = str(info.value)
    assert "['tain']" in message
    assert "ingest, preprocess, train, qa, register, serve" in message


def test_select_empty_selection():
    with pytest.raises(ConfigError, match="main.steps"):
        select_steps(" , ")


# -- forced_steps ------------------------------------------------------------------------------


def test_forced_true_false_none():
    assert forced_steps(True) == set(ORDER)
    assert forced_steps(False) == set()
    assert forced_steps(None) == set()


def test_forced_name_and_list():
    assert forced_steps("train") == {"train"}
    assert forced_steps(["train", "qa"]) == {"train", "qa"}
    assert forced_steps(OmegaConf.create({"f": ["ingest"]}).f) == {"ingest"}


def test_forced_unknown_step():
    with pytest.raises(ConfigError) as info:
        forced_steps(["train", "trian"])
    message = str(info.value)
    assert "['trian']" in message
    assert "main.force" in message
