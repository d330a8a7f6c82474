"""Offline checks of Kubernetes objects: kubernetes-validate's bundled JSON schemas of the
Kubernetes API (strict: an unknown field fails too) plus the name rules the schemas leave out."""

from __future__ import annotations

import re

import pytest

# The oldest Kubernetes minor the manifests are meant for; the schema of each kind at that version.
KUBERNETES_VERSION = "1.30"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def check_object(obj: dict) -> None:
    """Raises kubernetes_validate's ValidationError (or SchemaNotFoundError for an unknown kind);
    AssertionError for a name the API server would refuse."""
    import kubernetes_validate

    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    name = obj["metadata"]["name"]
    assert len(name) <= 63 and DNS_LABEL.match(name), f"{obj['kind']} name {name!r} is not a DNS label"
    pod = obj.get("spec", {}).get("template", {}).get("spec", obj.get("spec", {}))
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        assert DNS_LABEL.match(container["name"]), f"container name {container['name']!r} is not a DNS label"


@pytest.fixture(scope="session")
def k8s_check():
    return check_object
