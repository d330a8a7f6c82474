"""mlpipe/pipeline/cache.py: source closures, code digests and step cache keys."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mlpipe.config import compose, to_container
from mlpipe.pipeline import cache


def _relative(paths, root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in paths}


@pytest.fixture
def project_copy(tmp_path, project_root) -> Path:
    """The files code_digest reads (steps/, mlpipe/, MLproject, python_env.yaml) under tmp_path."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("steps", "mlpipe"):
        shutil.copytree(project_root / folder, tmp_path / folder, ignore=ignore)
    for name in cache.ENV_FILES:
        shutil.copy2(project_root / name, tmp_path / name)
    cache.code_digest.cache_clear()
    yield tmp_path
    cache.code_digest.cache_clear()


def _digest(step: str, root: Path) -> str:
    cache.code_digest.cache_clear()  # lru_cached per (step, root): the files changed under it
    return cache.code_digest(step, root)


# -- source_closure ----------------------------------------------------------------------------


def test_train_closure(project_root):
    files = _relative(cache.source_closure(project_root / "steps" / "train.py", project_root), project_root)
    for expected in ("steps/train.py", "mlpipe/__init__.py", "mlpipe/training/__init__.py", "mlpipe/training/estimators.py",
                     "mlpipe/data/__init__.py", "mlpipe/data/features.py",
                     "mlpipe/training/model_io.py", "mlpipe/pipeline/harness.py", "mlpipe/run/context.py", "mlpipe/errors.py"):
        assert expected in files
    for unrelated in ("mlpipe/pipeline/driver.py", "mlpipe/pipeline/sweep.py", "mlpipe/pipeline/jobs.py", "mlpipe/serving/smoke.py",
                      "steps/main.py", "steps/ingest.py"):
        assert unrelated not in files
    assert all(f.startswith(("steps/", "mlpipe/")) for f in files)


def test_ingest_closure_excludes_training(project_root):
    files = _relative(cache.source_closure(project_root / "steps" / "ingest.py", project_root), project_root)
    assert {"steps/ingest.py", "mlpipe/data/sources.py", "mlpipe/pipeline/harness.py"} <= files
    assert "mlpipe/training/estimators.py" not in files
    assert "mlpipe/data/features.py" not in files


def test_closure_follows_function_level_and_transitive_imports(tmp_path):
    (tmp_path / "steps").mkdir()
    (tmp_path / "mlpipe").mkdir()
    (tmp_path / "mlpipe" / "__init__.py").write_text("")
    (tmp_path / "mlpipe" / "a.py").write_text("from mlpipe.b import thing\n")
    (tmp_path / "mlpipe" / "b.py").write_text("import os\nthing = 1\n")
    (tmp_path / "mlpipe" / "c.py").write_text("")
    (tmp_path / "mlpipe" / "unused.py").write_text("")
    entry = tmp_path / "steps" / "x.py"
    entry.write_text("import json\n\ndef run():\n    from mlpipe import a\n    import mlpipe.c as c\n")
    assert _relative(cache.source_closure(entry, tmp_path), tmp_path) == {
        "steps/x.py", "mlpipe/__init__.py", "mlpipe/a.py", "mlpipe/b.py", "mlpipe/c.py"}


def test_closure_follows_subpackages_their_inits_and_relative_imports(tmp_path):
    for folder in ("steps", "mlpipe/run", "mlpipe/data"):
        (tmp_path / folder).mkdir(parents=True)
    for init in ("mlpipe", "mlpipe/run", "mlpipe/data"):
        (tmp_path / init / "__init__.py").write_text("")
    (tmp_path / "mlpipe" / "run" / "harness.py").write_text("from .handoff import x\nfrom ..data import frames\n")
    (tmp_path / "mlpipe" / "run" / "handoff.py").write_text("x = 1\n")
    (tmp_path / "mlpipe" / "data" / "frames.py").write_text("")
    (tmp_path / "mlpipe" / "data" / "sources.py").write_text("")
    entry = tmp_path / "steps" / "x.py"
    entry.write_text("from mlpipe.run.harness import step_main\n")
    assert _relative(cache.source_closure(entry, tmp_path), tmp_path) == {
        "steps/x.py", "mlpipe/__init__.py", "mlpipe/run/__init__.py", "mlpipe/run/harness.py",
        "mlpipe/run/handoff.py", "mlpipe/data/__init__.py", "mlpipe/data/frames.py"}


# -- code_digest -------------------------------------------------------------------------------


def test_code_digest_depends_on_content_not_location(project_copy, project_root):
    assert _digest("train", project_copy) == _digest("train", project_root)
    assert _digest("train", project_copy) != _digest("ingest", project_copy)


def test_code_digest_changes_with_an_imported_module(project_copy):
    before = {step: _digest(step, project_copy) for step in ("ingest", "train")}
    with (project_copy / "mlpipe" / "training" / "estimators.py").open("a") as fh:
        fh.write("\n# an edit\n")
    assert _digest("train", project_copy) != before["train"]
    assert _digest("ingest", project_copy) == before["ingest"]  # ingest does not import training


STEP_NAMES = ("ingest", "preprocess", "train", "qa", "register", "serve", "main")


@pytest.mark.parametrize("module, importers", [
    # one room each: an edit there changes exactly the steps that import it, nothing else
    ("mlpipe/serving/records/writer.py", {"serve"}),
    ("mlpipe/data/outliers.py", {"preprocess"}),
    ("mlpipe/quality/drift.py", {"preprocess", "qa"}),
    ("mlpipe/registry/promotion.py", {"register"}),
    ("mlpipe/pipeline/jobs.py", {"main"}),
    # a package's __init__ runs on every import of a module inside it
    ("mlpipe/serving/__init__.py", {"serve"}),
    ("mlpipe/training/__init__.py", {"preprocess", "train", "qa", "register", "serve"}),
    ("mlpipe/run/__init__.py", set(STEP_NAMES)),
])
def test_editing_a_module_in_a_subpackage_changes_exactly_its_importers_keys(project_copy, module, importers):
    before = {step: _digest(step, project_copy) for step in STEP_NAMES}
    with (project_copy / module).open("a") as fh:
        fh.write("\n# an edit\n")
    changed = {step for step in STEP_NAMES if _digest(step, project_copy) != before[step]}
    assert changed == importers


def test_code_digest_ignores_unrelated_module(project_copy):
    before = _digest("train", project_copy)
    with (project_copy / "mlpipe" / "pipeline" / "sweep.py").open("a") as fh:
        fh.write("\n# an edit\n")
    assert _digest("train", project_copy) == before


def test_code_digest_changes_with_the_step_module(project_copy):
    before = _digest("train", project_copy)
    path = project_copy / "steps" / "train.py"
    path.write_text(path.read_text() + "\n# an edit\n")
    assert _digest("train", project_copy) != before


@pytest.mark.parametrize("env_file", cache.ENV_FILES)
def test_code_digest_changes_with_env_files(project_copy, env_file):
    before = {step: _digest(step, project_copy) for step in ("ingest", "serve")}
    with (project_copy / env_file).open("a") as fh:
        fh.write("\n# an edit\n")
    after = {step: _digest(step, project_copy) for step in ("ingest", "serve")}
    assert after["ingest"] != before["ingest"]
    assert after["serve"] != before["serve"]


def test_code_digest_is_cached_per_step_and_root(project_copy):
    first = cache.code_digest("train", project_copy)
    with (project_copy / "mlpipe" / "training" / "estimators.py").open("a") as fh:
        fh.write("\n# an edit\n")
    assert cache.code_digest("train", project_copy) == first  # same process, cached
    assert _digest("train", project_copy) != first


# -- step_key ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_config() -> dict:
    return to_container(compose([]))


def _key(step, config, params=None, data=None, root=None):
    return cache.step_key(step, config, params or {}, data, **({"root": root} if root else {}))


def test_step_key_is_deterministic(base_config):
    assert _key("train", base_config, {"preprocess_run_id": "abc"}) == \
        _key("train", dict(base_config), {"preprocess_run_id": "abc"})
    assert len(_key("train", base_config)) == 64


def test_step_key_changes_with_config_slice(base_config):
    changed = to_container(compose(["model.n_estimators=10"]))
    assert _key("train", changed) != _key("train", base_config)


def test_step_key_changes_with_seed_for_seeded_steps(base_config):
    reseeded = to_container(compose(["seed=1"]))
    assert _key("preprocess", reseeded) != _key("preprocess", base_config)
    assert _key("train", reseeded) != _key("train", base_config)
    assert _key("ingest", reseeded) == _key("ingest", base_config)


def test_step_key_ignores_unrelated_config_groups(base_config):
    other_model = to_container(compose(["model=gradient_boosting"]))
    assert _key("ingest", other_model) == _key("ingest", base_config)
    assert _key("preprocess", other_model) == _key("preprocess", base_config)
    assert _key("qa", other_model) == _key("qa", base_config)
    assert _key("train", other_model) != _key("train", base_config)


def test_step_key_changes_with_data_config(base_config):
    other_data = to_container(compose(["data.source=sklearn:iris"]))
    assert _key("ingest", other_data) != _key("ingest", base_config)
    # registry.model_name follows data.name
    assert _key("register", other_data) != _key("register", base_config)
    assert _key("train", other_data) == _key("train", base_config)


def test_step_key_changes_with_params(base_config):
    a = _key("train", base_config, {"preprocess_run_id": "run-a"})
    b = _key("train", base_config, {"preprocess_run_id": "run-b"})
    assert a != b


def test_step_key_ignores_overrides_param(base_config):
    a = _key("train", base_config, {"preprocess_run_id": "r", "overrides": "seed=42"})
    b = _key("train", base_config, {"preprocess_run_id": "r", "overrides": ""})
    assert a == b == _key("train", base_config, {"preprocess_run_id": "r"})


def test_step_key_changes_with_data_digest(base_config):
    assert _key("ingest", base_config, data="aaa") != _key("ingest", base_config, data="bbb")
    assert _key("ingest", base_config, data="aaa") != _key("ingest", base_config)


def test_step_key_changes_with_code(project_copy, base_config):
    before = _key("train", base_config, root=project_copy)
    ingest_before = _key("ingest", base_config, root=project_copy)
    with (project_copy / "mlpipe" / "training" / "estimators.py").open("a") as fh:
        fh.write("\n# an edit\n")
    cache.code_digest.cache_clear()
    assert _key("train", base_config, root=project_copy) != before
    assert _key("ingest", base_config, root=project_copy) == ingest_before


def test_config_digest_uses_the_step_slice(base_config):
    other_model = to_container(compose(["model=gradient_boosting"]))
    assert cache.config_digest("preprocess", other_model) == cache.config_digest("preprocess", base_config)
    assert cache.config_digest("train", other_model) != cache.config_digest("train", base_config)
