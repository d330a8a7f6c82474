"""mlpipe/pipeline/jobs.py: the MLproject command line as Hydra's."""

from __future__ import annotations

import pytest

from mlpipe.errors import ConfigError
from mlpipe.pipeline.jobs import hydra_argv


def test_hydra_argv_plain_hydra_command_line_is_untouched():
    assert hydra_argv(["main.py", "model=ridge", "-m"]) == ["main.py", "model=ridge", "-m"]


def test_hydra_argv_defaults_from_mlproject():
    assert hydra_argv(["main.py", "--steps=all", "--overrides="]) == ["main.py"]


def test_hydra_argv_steps_and_overrides():
    argv = ["main.py", "--steps=train,qa", "--overrides=model=ridge seed=3"]
    assert hydra_argv(argv) == ["main.py", "model=ridge", "seed=3", "main.steps=[train,qa]"]


def test_hydra_argv_sweep():
    argv = ["main.py", "--steps=all", "--overrides=-m model.n_estimators=50,100"]
    assert hydra_argv(argv) == ["main.py", "-m", "model.n_estimators=50,100"]


def test_hydra_argv_quoted_values_and_spaces_in_steps():
    argv = ["main.py", "--steps", " train , qa ,", "--overrides", "seed=1 'data.source=/a b/c.csv'"]
    assert hydra_argv(argv) == ["main.py", "seed=1", "data.source=/a b/c.csv", "main.steps=[train,qa]"]


def test_hydra_argv_keeps_other_arguments():
    argv = ["main.py", "--overrides=seed=1", "hydra.verbose=true"]
    assert hydra_argv(argv) == ["main.py", "hydra.verbose=true", "seed=1"]


def test_hydra_argv_bad_quoting():
    with pytest.raises(ConfigError, match="cannot parse overrides"):
        hydra_argv(["main.py", "--overrides=data.source='/a b"])
