"""Where the driver runs each step (`main.backend`): `local`, a process that `mlflow run` starts on
this machine; `kubernetes`, a Job per step through MLflow's Kubernetes backend, from the project
variant in deploy/kubernetes (docs/kubernetes.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mlpipe.config import PROJECT_ROOT
from mlpipe.errors import ConfigError, one_line

KUBERNETES_PROJECT = PROJECT_ROOT / "deploy" / "kubernetes"
# MLflow gives the pods this URI, when set, instead of the submitting side's MLFLOW_TRACKING_URI.
KUBE_TRACKING_ENV = "KUBE_MLFLOW_TRACKING_URI"
# What MLflow's backend refuses to start without (mlflow.projects._parse_kubernetes_config).
REQUIRED_KEYS = ("repository-uri", "kube-job-template-path")
MAX_REASON = 600


# What `mlflow run` tags its project runs with: the env manager it ran them under.
ENV_MANAGER_TAG = "mlflow.project.env"


def env_manager_for(cfg, client, run_id: str | None) -> str:
    """main.env_manager when set, else the one this driver's own run uses: `mlflow.run` does not
    pass the caller's on to nested runs (mlflow issue 6611)."""
    if cfg.main.env_manager:
        return cfg.main.env_manager
    if not run_id:
        return "local"
    env = client.get_run(run_id).data.tags.get(ENV_MANAGER_TAG, "local")
    # A docker_env project (deploy/kubernetes) runs this driver inside the step image: the steps
    # run in the same container, with its Python.
    return "local" if env == "docker" else env


class NotSubmitted(Exception):
    """The step's image was not built or pushed, or its Job not created: nothing of it ran."""


def mlflow_run_args(cfg, env_manager: str) -> dict[str, Any]:
    """The project URI and the `mlflow.run` arguments that run one step on `main.backend`."""
    if cfg.main.backend == "kubernetes":
        # MLflow builds the step's image FROM the variant's docker_env image with the variant's
        # folder in it, pushes it to repository-uri and starts the Job; the driver waits itself
        # (synchronous=False), so that a failure to submit is told apart from a failed step.
        return {"uri": str(KUBERNETES_PROJECT), "backend": "kubernetes", "build_image": True, "synchronous": False,
                "backend_config": kubernetes_config(str(cfg.main.backend_config))}
    return {"uri": str(PROJECT_ROOT), "env_manager": env_manager, "synchronous": True}


def kubernetes_config(path: str) -> dict[str, Any]:
    """MLflow's backend config from `main.backend_config`, with its Job template's path made
    absolute: MLflow would read a relative one from the current directory, which is not the
    project folder when the driver runs from a Git URI's clone."""
    where = f"main.backend_config={path}"
    file = _in_project(path)
    try:
        config = json.loads(file.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file ({file}); point it at MLflow's Kubernetes backend config "
                          "(deploy/kubernetes/kubernetes_config.json is the project's)") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{where}: {file} is not readable JSON: {one_line(exc)}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{where}: {file} holds a {type(config).__name__}; expected an object with the keys "
                          f"{', '.join(REQUIRED_KEYS)}")
    missing = [key for key in REQUIRED_KEYS if not config.get(key)]
    if missing:
        raise ConfigError(f"{where}: {file} has no {' and no '.join(missing)}, which MLflow's Kubernetes backend "
                          "needs (docs/kubernetes.md)")
    template = _in_project(str(config["kube-job-template-path"]))
    if not template.is_file():
        raise ConfigError(f"{where}: its kube-job-template-path {config['kube-job-template-path']} is no file "
                          f"({template})")
    return {**config, "kube-job-template-path": str(template)}


def _in_project(path: str) -> Path:
    return Path(path) if Path(path).is_absolute() else PROJECT_ROOT / path


def check_tracking_uris(driver_uri: str, pod_uri: str | None) -> None:
    """The pods must write to the store the driver reads, at an address that means that store
    inside the cluster too: not a file on this machine, not a loopback address."""
    if is_local_file(driver_uri):
        raise ConfigError(f"main.backend=kubernetes: the tracking store {driver_uri} is a file on this machine, "
                          "which the steps' pods cannot open; set MLFLOW_TRACKING_URI to a tracking server the "
                          "cluster reaches too (deploy/team, docs/kubernetes.md)")
    uri = pod_uri or driver_uri
    parts = urlsplit(uri)
    if is_local_file(uri) or _loopback(parts.hostname):
        source = KUBE_TRACKING_ENV if pod_uri else "MLFLOW_TRACKING_URI"
        shown = f"{parts.scheme}://{parts.hostname}:{parts.port}" if parts.port else f"{parts.scheme}://{parts.hostname}"
        raise ConfigError(f"main.backend=kubernetes: the steps' pods would be given the tracking store {shown} "
                          f"({source}), which inside a pod is not this one; set {KUBE_TRACKING_ENV} to the address "
                          "the cluster reaches the same server at (for example http://mlflow.mlpipe:5000)")


def is_local_file(uri: str) -> bool:
    """A path, file: or sqlite: URI: a store only this machine opens (as MLflow's own docker
    backend decides what to mount)."""
    parts = urlsplit(uri)
    return not parts.netloc and parts.scheme in ("", "file", "sqlite")


def _loopback(host: str | None) -> bool:
    return bool(host) and (host == "localhost" or host.startswith("127.") or host in ("::1", "0.0.0.0"))


def check_submitter() -> None:
    """What submitting a step needs on the driver's side: MLflow's backend imports the
    `kubernetes` package, and builds each step's image with Docker."""
    try:
        import kubernetes  # noqa: F401
    except ImportError:
        raise ConfigError("main.backend=kubernetes: MLflow's Kubernetes backend needs the `kubernetes` package, which "
                          "this Python lacks; run the driver from .venv (make setup installs the pin in "
                          "requirements-dev.txt) with --env-manager local, or set main.backend=local") from None
    from mlflow.exceptions import ExecutionException
    from mlflow.projects.docker import validate_docker_installation

    try:
        validate_docker_installation()
    except ExecutionException as exc:
        raise ConfigError(f"main.backend=kubernetes: building each step's image needs a running Docker daemon, and "
                          f"Docker does not answer here ({last_line(exc)}); run the driver where `docker info` "
                          "works, or set main.backend=local") from None


def last_line(exc: BaseException) -> str:
    """The last non-empty line of an error: Docker's reason, after MLflow's preamble and `docker info`'s
    client section."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def not_submitted(exc: BaseException) -> str:
    """What the driver says of a step whose image or Job could not be made."""
    reason = one_line(exc)
    if len(reason) > MAX_REASON:
        reason = reason[:MAX_REASON] + "…"
    return (f"the step was not started on Kubernetes: building its image FROM the variant's docker_env image, pushing "
            f"it to repository-uri or creating its Job failed ({type(exc).__name__}: {reason}); see "
            "docs/kubernetes.md")
