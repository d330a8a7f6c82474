"""steps/: every entry point is a short recipe, and none writes to its run but through StepContext."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STEPS = sorted(p for p in (ROOT / "steps").glob("*.py") if p.name != "__init__.py")
# What writes to a run: MLflow's fluent logging calls (any flavor's log_model too).
WRITERS = ("log_", "set_tag", "set_tags", "log_input", "end_run", "start_run", "delete_tag")


def _mlflow_writes(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            chain, target = node.func.attr, node.func.value
            while isinstance(target, ast.Attribute):
                chain, target = f"{target.attr}.{chain}", target.value
            if isinstance(target, ast.Name) and target.id == "mlflow" and \
                    node.func.attr.startswith(WRITERS):
                found.append(f"line {node.lineno}: mlflow.{chain}")
    return found


def test_the_steps_are_the_mlproject_entry_points():
    assert [p.stem for p in STEPS] == sorted(["ingest", "preprocess", "train", "qa", "register", "serve", "main", "report",
                                             "gate", "monitor"])


@pytest.mark.parametrize("path", STEPS, ids=lambda p: p.name)
def test_a_step_is_a_recipe_of_at_most_80_lines(path):
    assert len(path.read_text().splitlines()) <= 80


@pytest.mark.parametrize("path", STEPS, ids=lambda p: p.name)
def test_a_step_writes_to_its_run_only_through_step_context(path):
    assert _mlflow_writes(path) == []


def test_the_writer_check_finds_a_direct_write(tmp_path):
    path = tmp_path / "x.py"
    path.write_text("import mlflow\nmlflow.set_tag('a', 'b')\nmlflow.sklearn.log_model(m, name='model')\n"
                    "mlflow.pyfunc.load_model('x')\n")
    assert _mlflow_writes(path) == ["line 2: mlflow.set_tag", "line 3: mlflow.sklearn.log_model"]
