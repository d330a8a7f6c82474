"""End-to-end fixtures: a real tracking store per test module. Helpers live in support.py
(imported by name from the tests: a module named conftest would clash with tests/unit's)."""

from __future__ import annotations

import pytest

from support import Store, make_store


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    """One store per test module: tests in a module build on each other's runs."""
    return make_store(tmp_path_factory, "store")


@pytest.fixture
def fresh_store(tmp_path_factory) -> Store:
    return make_store(tmp_path_factory, "fresh")
