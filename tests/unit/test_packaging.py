"""Project packaging: the same exact pins in python_env.yaml, conda.yaml and requirements.txt, and
MLproject entry points that match the steps and their parameters."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from mlpipe.pipeline.spec import STEPS

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[0-9][^\s;,=<>!~]*)$")
ENTRY_POINTS = ("main", "ingest", "preprocess", "train", "qa", "register", "serve")
UPSTREAM_PARAMS = {"preprocess": "ingest_run_id", "train": "preprocess_run_id", "qa": "train_run_id",
                   "register": "qa_run_id", "serve": "model_uri", "main": "steps"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(lines: list[str], origin: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in lines:
        match = PIN.match(str(line).strip())
        assert match, f"{origin}: {line!r} is not an exact pin (name==version)"
        name = _normalise(match["name"])
        assert name not in pins, f"{origin}: {name} is listed twice"
        pins[name] = match["version"]
    return pins


def _load(name: str):
    path = ROOT / name
    assert path.is_file(), f"{name} is missing"
    return yaml.safe_load(path.read_text())


def python_env_pins() -> dict[str, str]:
    return _pins(_load("python_env.yaml")["dependencies"], "python_env.yaml")


def conda_pins() -> dict[str, str]:
    deps = _load("conda.yaml")["dependencies"]
    pip_lists = [d["pip"] for d in deps if isinstance(d, dict) and "pip" in d]
    assert len(pip_lists) == 1, "conda.yaml needs one `pip:` sub-list under dependencies"
    return _pins(pip_lists[0], "conda.yaml")


def requirements_pins() -> dict[str, str]:
    path = ROOT / "requirements.txt"
    assert path.is_file(), "requirements.txt is missing"
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return _pins([line for line in lines if line], "requirements.txt")


# -- pins --------------------------------------------------------------------------------------


def test_python_env_pins_are_exact():
    env = _load("python_env.yaml")
    assert re.fullmatch(r"3\.\d+\.\d+", str(env["python"])), "python_env.yaml: python must be an exact version"
    pins = python_env_pins()
    for needed in ("mlflow", "hydra-core", "omegaconf", "scikit-learn", "pandas", "numpy", "pyarrow",
                   "cloudpickle", "skops"):
        assert needed in pins


def test_conda_yaml_matches_python_env():
    deps = _load("conda.yaml")["dependencies"]
    python = str(_load("python_env.yaml")["python"])
    assert f"python={python}" in deps
    assert conda_pins() == python_env_pins()


def test_requirements_txt_matches_python_env():
    assert requirements_pins() == python_env_pins()


def test_pin_parser_rejects_loose_pins():
    for bad in ("mlflow>=3.0", "mlflow", "mlflow==", "mlflow == 3.1"):
        with pytest.raises(AssertionError):
            _pins([bad], "test")
    assert _pins(["Scikit_Learn==1.9.1"], "test") == {"scikit-learn": "1.9.1"}


# -- MLproject ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlproject() -> dict:
    return _load("MLproject")


def test_mlproject_uses_python_env(mlproject):
    assert mlproject["python_env"] == "python_env.yaml"


def test_entry_points_exist(mlproject):
    assert set(ENTRY_POINTS) <= set(mlproject["entry_points"])


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_entry_point_takes_overrides(mlproject, name):
    params = mlproject["entry_points"][name]["parameters"]
    assert params["overrides"] == {"type": "string", "default": ""}


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_entry_point_parameters(mlproject, name):
    params = set(mlproject["entry_points"][name]["parameters"])
    expected = {"overrides"} | ({UPSTREAM_PARAMS[name]} if name in UPSTREAM_PARAMS else set())
    assert params == expected


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_entry_point_command_forwards_every_parameter(mlproject, name):
    entry = mlproject["entry_points"][name]
    command = entry["command"]
    assert command.startswith(f"python -m steps.{name} ")
    for param in entry["parameters"]:
        assert f"--{param.replace('_', '-')}={{{param}}}" in command, param


def test_upstream_params_match_pipeline(mlproject):
    """The harness parses `--<upstream>-run-id` from pipeline.STEPS: MLproject must pass the same."""
    for name, spec in STEPS.items():
        if spec.upstream_param:
            assert spec.upstream_param in mlproject["entry_points"][name]["parameters"], name
    assert STEPS["serve"].upstream_param is None


def test_main_steps_default_is_all(mlproject):
    assert mlproject["entry_points"]["main"]["parameters"]["steps"]["default"] == "all"
