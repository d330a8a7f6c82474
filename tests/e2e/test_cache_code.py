"""A code change invalidates the steps that import the changed file, and only those."""

from __future__ import annotations

import pytest

import shutil
import subprocess

from support import ROOT, Store


def _copy_project(dst):
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dst / name)


def _outcomes(store: Store) -> dict[str, str]:
    parent = store.newest("tags.`pipeline.role` = 'pipeline'")
    return {(c.data.tags.get("pipeline.step") or c.data.tags["pipeline.cached_step"]):
            ("cached" if "pipeline.reused_run_id" in c.data.tags else "ran")
            for c in store.children(parent.info.run_id)}


@pytest.mark.slow
def test_editing_a_step_file_reruns_that_step(fresh_store: Store, tmp_path):
    project = tmp_path / "project"
    _copy_project(project)
    args = ("-P", "steps=ingest,preprocess")
    fresh_store.mlflow_run(*args, cwd=project, check=True)
    assert _outcomes(fresh_store) == {"ingest": "ran", "preprocess": "ran"}

    fresh_store.mlflow_run(*args, cwd=project, check=True)
    assert _outcomes(fresh_store) == {"ingest": "cached", "preprocess": "cached"}

    # An uncommitted edit (a dirty tree) counts: no git commit is involved here.
    step = project / "steps" / "preprocess.py"
    step.write_text(step.read_text() + "\n# an edit\n")
    fresh_store.mlflow_run(*args, cwd=project, check=True)
    assert _outcomes(fresh_store) == {"ingest": "cached", "preprocess": "ran"}

    # A library module that only train imports leaves ingest and preprocess cached.
    lib = project / "mlpipe" / "training" / "estimators.py"
    lib.write_text(lib.read_text() + "\n# an edit\n")
    fresh_store.mlflow_run(*args, cwd=project, check=True)
    assert _outcomes(fresh_store) == {"ingest": "cached", "preprocess": "cached"}
