"""The rooms of `mlpipe/` keep their walls.

- Each package (and each top-level module: `errors`, `schema`, `config`) says in its docstring
  what it may import, on a line starting `May import:`; any other `mlpipe` import in it, at
  module or function level, fails here. An entry names a package (`mlpipe.run`: all of it) or a
  module (`mlpipe.training.metric_names`: only that one).
- The imports between packages have no cycle, and nothing in `mlpipe/` imports `steps/`.
- Only `run/` and `pipeline/` write to a run (the harness and the lifecycle are its writers).
- No module is over 400 lines and no function over 60 (tests and benchmarks aside).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "mlpipe"
# The packages allowed to write to a run: the step harness and the pipeline's own runs.
WRITER_PACKAGES = ("run", "pipeline")
# Calls that write to a run: MLflow's fluent API (any flavor's log_model too), and a client's.
FLUENT_WRITES = re.compile(r"^(log_\w+|set_tags?|delete_tag|start_run|end_run|evaluate)$")
CLIENT_WRITES = re.compile(r"^(log_(metric|param|batch|text|dict|artifacts?|figure|image|table|inputs?|outputs)"
                           r"|set_tag|delete_tag|set_terminated|create_run|delete_run|update_run)$")
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


@dataclass(frozen=True)
class Unit:
    """A package under mlpipe/ or one of its top-level modules: what the rules are written for."""

    name: str  # run, pipeline, errors...
    files: tuple[Path, ...]
    doc_file: Path


def units(package: Path = PACKAGE) -> dict[str, Unit]:
    found = {}
    for path in sorted(package.iterdir()):
        if path.is_dir() and (path / "__init__.py").is_file():
            found[path.name] = Unit(path.name, tuple(sorted(path.rglob("*.py"))), path / "__init__.py")
        elif path.suffix == ".py" and path.name != "__init__.py":
            found[path.stem] = Unit(path.stem, (path,), path)
    return found


def allowed(unit: Unit) -> set[str]:
    """The dotted names after `May import:` in the unit's docstring (up to a blank line)."""
    doc = ast.get_docstring(ast.parse(unit.doc_file.read_text())) or ""
    start = doc.find("May import:")
    if start < 0:
        where = "/".join(unit.doc_file.parts[-2:]) if unit.doc_file.name == "__init__.py" else unit.doc_file.name
        raise AssertionError(f"{where}: its docstring has no 'May import:' line")
    paragraph = doc[start:].split("\n\n")[0]
    if "nothing" in paragraph.split(":", 1)[1].split(".")[0]:
        return set()
    return set(re.findall(r"`(mlpipe(?:\.\w+)+)`", paragraph))


def _module_of(name: str, package: Path) -> str:
    """The longest prefix of a dotted name that is a module or package file: an imported class
    or function (`mlpipe.run.handoff.download`) counts as its module."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        base = package.parent.joinpath(*parts[:end])
        if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
            return ".".join(parts[:end])
    return name


def imports(path: Path, package: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, module) of every import of the project's own code in a file."""
    found = []
    rel = path.relative_to(package.parent).with_suffix("").parts
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = list(rel[:-1])  # the file's package (an __init__.py's is its own folder)
                base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in (package.name, "steps"):
                found.append((node.lineno, _module_of(name, package) if name.startswith(package.name) else name))
    return found


def unit_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == PACKAGE.name and len(parts) > 1 else None


def permitted(module: str, rules: set[str]) -> bool:
    return any(module == rule or module.startswith(rule + ".") for rule in rules)


def violations(package: Path = PACKAGE) -> list[str]:
    """Every import that breaks its unit's rule, as `file:line imports module`."""
    out = set()
    for unit in units(package).values():
        rules = allowed(unit)
        for path in unit.files:
            for line, module in imports(path, package):
                if module.split(".")[0] == "steps":
                    out.add(f"{path.relative_to(package.parent)}:{line} imports {module} (mlpipe never imports steps/)")
                    continue
                target = unit_of(module)
                if target is None or target == unit.name or permitted(module, rules):
                    continue
                out.add(f"{path.relative_to(package.parent)}:{line} imports {module}")
    return sorted(out)


def graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Which unit imports which (from the imports themselves, not the rules)."""
    edges: dict[str, set[str]] = {}
    for unit in units(package).values():
        edges[unit.name] = {target for path in unit.files for _, module in imports(path, package)
                            if (target := unit_of(module)) and target != unit.name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Each cycle once, as the path that closes it (depth-first search)."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return found


def run_writes(path: Path) -> list[str]:
    """MLflow calls in a file that write to a run (fluent `mlflow.*`, or any object's client calls)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        chain, target = [node.func.attr], node.func.value
        while isinstance(target, ast.Attribute):
            chain.insert(0, target.attr)
            target = target.value
        name = target.id if isinstance(target, ast.Name) else ""
        attr = node.func.attr
        if name == "mlflow" and (FLUENT_WRITES.match(attr) or chain[:2] == ["models", "evaluate"]):
            found.append(f"line {node.lineno}: mlflow.{'.'.join(chain)}")
        elif name != "mlflow" and CLIENT_WRITES.match(attr):
            found.append(f"line {node.lineno}: {name or '?'}.{'.'.join(chain)}")
    return found


def long_functions(path: Path) -> list[str]:
    return [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]


SOURCES = sorted([*PACKAGE.rglob("*.py"), *(ROOT / "steps").glob("*.py"), *(ROOT / "hydra_plugins").rglob("*.py")])


# -- the project -------------------------------------------------------------------------------

def test_every_package_says_what_it_may_import():
    for unit in units().values():
        allowed(unit)  # raises, naming the file, when the line is missing


def test_no_package_imports_what_its_rule_does_not_allow():
    assert violations() == []


def test_the_packages_import_each_other_without_a_cycle():
    assert cycles(graph()) == []


def test_only_run_and_pipeline_write_to_a_run():
    found = {str(path.relative_to(ROOT)): writes for path in PACKAGE.rglob("*.py")
             if path.relative_to(PACKAGE).parts[0] not in WRITER_PACKAGES and (writes := run_writes(path))}
    assert found == {}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_module_holds_at_most_400_lines_and_a_function_at_most_60(path):
    lines = len(path.read_text().splitlines())
    assert (lines if lines > MAX_MODULE_LINES else "ok", long_functions(path)) == ("ok", [])


# -- the checks themselves catch what they are for ----------------------------------------------

def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    package = tmp_path / "mlpipe"
    for name, text in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return package


def test_an_import_outside_the_rule_is_reported_with_its_line(tmp_path):
    package = _tree(tmp_path, {
        "__init__.py": '"""May import: nothing."""\n',
        "errors.py": '"""Errors. May import: nothing."""\n',
        "low/__init__.py": '"""Low. May import: `mlpipe.errors`."""\n',
        "low/a.py": "from mlpipe.errors import X\n\ndef f():\n    from mlpipe.high.b import g\n",
        "high/__init__.py": '"""High. May import: `mlpipe.low.a`, `mlpipe.errors`."""\n',
        "high/b.py": "from mlpipe.low import a\nfrom mlpipe.low.c import h\nimport steps.train\n",
        "low/c.py": "",
    })
    assert violations(package) == ["mlpipe/high/b.py:2 imports mlpipe.low.c",
                                   "mlpipe/high/b.py:3 imports steps.train (mlpipe never imports steps/)",
                                   "mlpipe/low/a.py:4 imports mlpipe.high.b"]
    assert cycles(graph(package)) == [["high", "low", "high"]]


def test_a_package_without_a_rule_is_reported(tmp_path):
    package = _tree(tmp_path, {"__init__.py": "", "loose/__init__.py": '"""No rule here."""\n'})
    with pytest.raises(AssertionError, match="loose/__init__.py: its docstring has no 'May import:' line"):
        allowed(units(package)["loose"])


def test_the_writer_check_finds_fluent_and_client_writes(tmp_path):
    path = tmp_path / "x.py"
    path.write_text("import mlflow\nmlflow.set_tag('a', 'b')\nmlflow.models.evaluate(m, d)\n"
                    "client.set_terminated(r)\nself.client.log_metric(r, 'm', 1)\nmlflow.pyfunc.load_model('x')\n"
                    "client.get_run(r)\nclient.set_registered_model_alias('m', 'a', 1)\n")
    assert run_writes(path) == ["line 2: mlflow.set_tag", "line 3: mlflow.models.evaluate",
                                "line 4: client.set_terminated", "line 5: self.client.log_metric"]


def test_the_size_check_finds_a_long_function(tmp_path):
    path = tmp_path / "x.py"
    path.write_text("def f():\n" + "    x = 1\n" * 60 + "\ndef g():\n    pass\n")
    assert long_functions(path) == ["f (61 lines)"]
