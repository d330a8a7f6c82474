"""Cache keys: a step is reused only when everything it depends on is unchanged.

The key covers the entry point, the resolved config the step reads, the content of
every project source file the step imports (found by following imports, so a dirty
working tree counts), the environment files, the step's parameters (upstream run
ids, model URI) and, for ingest, a digest of the source data itself.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from mlpipe.config import PROJECT_ROOT, digest, select
from mlpipe.pipeline.spec import spec_of
from mlpipe.run.locks import LOCK_DIR

KEY_VERSION = 1
# Files outside Python that change what a step does or the environment it runs in.
ENV_FILES = ("MLproject", "python_env.yaml")
LOCAL_PACKAGES = ("mlpipe", "steps")


@lru_cache(maxsize=None)  # six steps' closures ask for the same modules thousands of times
def _module_file(module: str, root: Path) -> Path | None:
    parts = module.split(".")
    if parts[0] not in LOCAL_PACKAGES:
        return None
    base = root.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_of(path: Path, root: Path) -> list[str]:
    """The dotted package a project file belongs to: mlpipe/run/harness.py -> ["mlpipe", "run"]."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return parts[:-1]  # a module's package, and for an __init__.py the package it defines


@lru_cache(maxsize=None)  # the driver keys six steps whose closures share most files
def _imports(path: Path, root: Path) -> frozenset[str]:
    """Absolute module names imported by a file (function-level and relative imports included),
    from the cache of parsed files when this file's text was parsed before."""
    text = path.read_text()
    key = hashlib.sha256(f"{path.relative_to(root)}\0{text}".encode()).hexdigest()
    cached = _parsed().get(key)
    if cached is None:
        cached = _PARSED[key] = sorted(_parse_imports(text, path, root))
        _UNSAVED.add(key)
    return frozenset(cached)


# The import names of every project file parsed so far, by the digest of its path and text: the
# driver keys six steps in a fresh process each time, and parsing their closures (about 70
# files) was a third of a cached pipeline's own work. Kept beside the locks; a lost or broken
# file only means parsing again.
PARSED_FILE = LOCK_DIR.parent / "mlpipe-parsed-imports.json"
_PARSED: dict[str, list[str]] = {}
_UNSAVED: set[str] = set()


def _parsed() -> dict[str, list[str]]:
    if not _PARSED:
        try:
            _PARSED.update(json.loads(PARSED_FILE.read_text()))
        except (OSError, ValueError):
            pass
    return _PARSED


def _save_parsed() -> None:
    if not _UNSAVED:
        return
    _UNSAVED.clear()
    try:
        partial = PARSED_FILE.with_name(f"{PARSED_FILE.name}.{os.getpid()}")
        partial.write_text(json.dumps(_PARSED))
        partial.replace(PARSED_FILE)  # whole or not at all, whoever writes last
    except OSError:
        pass


def _parse_imports(text: str, path: Path, root: Path) -> set[str]:
    tree = ast.parse(text, filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = _package_of(path, root)
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _with_packages(module: str) -> list[str]:
    """`mlpipe.run.harness` -> itself and the packages importing it runs: mlpipe, mlpipe.run."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def source_closure(entry: Path, root: Path = PROJECT_ROOT) -> list[Path]:
    """The project files `entry` depends on: itself plus every local module it imports,
    with the `__init__.py` of every package on the way (importing mlpipe.run.harness runs
    mlpipe/__init__.py and mlpipe/run/__init__.py first)."""
    seen: set[Path] = set()
    todo = [entry]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in _imports(path, root):
            for name in _with_packages(module):
                found = _module_file(name, root)
                if found and found not in seen:
                    todo.append(found)
    return sorted(seen)


@lru_cache(maxsize=None)
def code_digest(step: str, root: Path = PROJECT_ROOT) -> str:
    """sha256 over the step's source closure and the environment files."""
    files = source_closure(root / "steps" / f"{step}.py", root)
    _save_parsed()
    files += [root / name for name in ENV_FILES if (root / name).is_file()]
    sha = hashlib.sha256()
    for path in files:
        sha.update(str(path.relative_to(root)).encode())
        sha.update(b"\0")
        sha.update(path.read_bytes())
        sha.update(b"\0")
    return sha.hexdigest()


def config_digest(step: str, config: dict[str, Any]) -> str:
    """Digest of the config slice a step reads (used to find a matching upstream run)."""
    return digest(select(config, list(spec_of(step).config_keys)))


def step_key(
    step: str,
    config: dict[str, Any],
    params: dict[str, str],
    extra: str | None = None,
    root: Path = PROJECT_ROOT,
) -> str:
    """The cache key of one step execution; `params` excludes `overrides` (the config covers it).

    `extra` is what the step reads besides config, code and params (`keys.key_input`)."""
    return digest(
        {
            "version": KEY_VERSION,
            "step": step,
            "config": select(config, list(spec_of(step).config_keys)),
            "code": code_digest(step, root),
            "params": {k: v for k, v in sorted(params.items()) if k != "overrides"},
            "data": extra,
        }
    )
