"""mlpipe/registry/versions.py: reading registry URIs (the pure part; the rest is MLflow's registry)."""

from __future__ import annotations

import pytest

from mlpipe.registry.versions import parse_model_uri


@pytest.mark.parametrize(("uri", "expected"), [
    ("models:/wine@champion", ("wine", "champion", None)),
    ("models:/wine/3", ("wine", None, "3")),
    ("models:/wine/latest", ("wine", None, "latest")),
    ("models:/wine/Production", ("wine", None, "Production")),
    ("models:/wine", ("wine", None, None)),
    ("models:/m-0123abcd", ("m-0123abcd", None, None)),
    ("runs:/0123abcd/model", None),
    ("/tmp/model", None),
])
def test_parse_model_uri(uri, expected):
    assert parse_model_uri(uri) == expected
