"""deploy/kubernetes, the project's variant for MLflow's Kubernetes backend, checked offline:
MLflow's own code turns our Job template into the Job of a step (only Docker and the cluster's
API are stubbed), that Job passes the Kubernetes API's schema, the step in the pod reads the
arguments a local step reads, and the image holds python_env.yaml's pins and every file a
step's cache key reads."""

from __future__ import annotations

import copy
import re
import shlex
import shutil
from pathlib import Path

import mlflow
import pytest
import yaml

from mlpipe.config import PROJECT_ROOT, shell_unquoted
from mlpipe.pipeline import backends, cache
from mlpipe.pipeline.spec import STEPS

VARIANT = PROJECT_ROOT / "deploy" / "kubernetes"
DOCKERFILE = VARIANT / "Dockerfile"
REPOSITORY = "localhost:5001/mlpipe-steps"  # kubernetes_config.json's repository-uri
DIGEST = "sha256:" + "ab" * 32
POD_TRACKING_URI = "http://mlflow.mlpipe:5000"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*(?:\[[^\]]*\])?)==(\S+)$")


# -- MLflow's Kubernetes backend, up to the API call -----------------------------------------


@pytest.fixture
def submit(tmp_path, _empty_store, monkeypatch):
    """`mlflow.run` with the driver's arguments for main.backend=kubernetes; Docker's build and
    push and the Kubernetes API are stubbed. Returns (the Job MLflow sent, the run, the build call)."""
    import kubernetes
    from mlflow.projects import docker
    from mlflow.projects import kubernetes as kb

    shutil.copy(_empty_store, tmp_path / "mlflow.db")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv(backends.KUBE_TRACKING_ENV, POD_TRACKING_URI)
    sent, built = [], []

    class Image:
        def __init__(self, tag):
            self.tags, self.id = [tag], "sha256:" + "cd" * 32

    def build_docker_image(**kwargs):
        built.append(kwargs)
        return Image(f"{kwargs['repository_uri']}:abc1234")

    class BatchV1Api:
        def create_namespaced_job(self, namespace, body, pretty):
            sent.append((namespace, copy.deepcopy(body)))

    monkeypatch.setattr(docker, "validate_docker_installation", lambda: None)
    monkeypatch.setattr(docker, "build_docker_image", build_docker_image)
    monkeypatch.setattr(kb, "push_image_to_registry", lambda tag: DIGEST)
    monkeypatch.setattr(kb, "_load_kube_context", lambda context=None: None)
    monkeypatch.setattr(kubernetes.client, "BatchV1Api", BatchV1Api)

    def run(step: str, params: dict[str, str]):
        from mlpipe.config import compose

        args = backends.mlflow_run_args(compose(["main.backend=kubernetes"]), "local")
        submitted = mlflow.run(entry_point=step, parameters=params, run_name=step, **args)
        ((namespace, job),) = sent
        assert namespace == job["metadata"]["namespace"]
        return job, mlflow.MlflowClient().get_run(submitted.run_id), built[0]

    yield run
    mlflow.set_tracking_uri(None)


def test_mlflow_renders_our_template_into_the_steps_job(submit, k8s_check):
    params = {"overrides": "model=ridge main.force=[train] data.name='my data'", "preprocess_run_id": "abc123"}
    job, run, built = submit("train", params)
    k8s_check(job)
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    assert re.fullmatch(r"mlpipe-\d{4}(-\d{2}){5}-\d{6}", job["metadata"]["name"])
    assert job["metadata"]["namespace"] == "mlpipe"
    assert job["spec"]["backoffLimit"] == 0
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["name"] == "mlpipe"
    assert container["image"] == f"{REPOSITORY}:abc1234@{DIGEST}"
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    # MLflow's image: FROM the variant's docker_env image, this folder copied in
    assert built["base_image"] == "mlpipe:local" and built["build_image"] is True
    assert built["repository_uri"] == REPOSITORY and Path(built["work_dir"]) == VARIANT
    # MLflow's run: the step's child run, tagged as a Kubernetes run of a docker project
    assert run.data.tags["mlflow.project.backend"] == "kubernetes"
    assert run.data.tags["mlflow.project.env"] == "docker"
    assert run.data.tags["mlflow.project.entryPoint"] == "train"


def test_the_pods_environment(submit):
    job, run, _ = submit("ingest", {"overrides": ""})
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    names = [e["name"] for e in env]
    assert len(names) == len(set(names)), f"an env entry shadows another: {names}"
    values = {e["name"]: e.get("value") for e in env}
    assert values["MLFLOW_RUN_ID"] == run.info.run_id
    assert values["MLFLOW_EXPERIMENT_ID"] == run.info.experiment_id
    assert values["MLFLOW_TRACKING_URI"] == POD_TRACKING_URI  # KUBE_MLFLOW_TRACKING_URI, not the driver's SQLite
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env if "valueFrom" in e}
    assert set(secrets) == {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "AWS_ACCESS_KEY_ID",
                            "AWS_SECRET_ACCESS_KEY"}
    assert all(ref["optional"] for ref in secrets.values())  # a server without auth, proxied artifacts: none
    # the gate key from the Secret mlpipe-gate, readable by the step's user through its group
    pod = job["spec"]["template"]["spec"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "gate"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "gate"]
    assert values["MLPIPE_GATE_KEY"] == f"{mount['mountPath']}/{volume['secret']['items'][0]['path']}"
    assert volume["secret"]["secretName"] == "mlpipe-gate" and volume["secret"]["defaultMode"] == 0o440
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]


@pytest.mark.parametrize("step, params", [
    ("train", {"overrides": "model=ridge main.force=[train] data.name='my data'", "preprocess_run_id": "abc123"}),
    ("ingest", {"overrides": ""}),
    ("serve", {"overrides": "serve.mode=smoke", "model_uri": "models:/wine_model/3"}),
    ("main", {"steps": "train,qa", "overrides": "-m model.n_estimators=50,100"}),
])
def test_the_step_in_the_pod_reads_the_arguments_a_local_step_reads(submit, step, params):
    """MLflow's Kubernetes backend passes each word still shell-quoted and runs no shell; the
    steps unquote them (mlpipe.config.shell_unquoted) and get what `bash -c` gives a local step."""
    from mlflow.projects.utils import get_entry_point_command, load_project

    job, _, _ = submit(step, params)
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    (local,) = get_entry_point_command(load_project(str(PROJECT_ROOT)), step, params, None)
    assert command[:3] == ["python", "-m", f"steps.{step}"]
    assert shell_unquoted(command) == shlex.split(local)


def test_a_job_the_api_would_refuse_fails_the_check(submit, k8s_check):
    """The check bites: a misspelled field, a wrong type, a name the API server refuses."""
    from kubernetes_validate import ValidationError

    job, _, _ = submit("ingest", {"overrides": ""})
    misspelled = copy.deepcopy(job)
    misspelled["spec"]["template"]["spec"]["restartPolicyy"] = misspelled["spec"]["template"]["spec"].pop("restartPolicy")
    wrong_type = copy.deepcopy(job)
    wrong_type["spec"]["backoffLimit"] = "none"
    bad_env = copy.deepcopy(job)
    bad_env["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "X", "value": 3})
    for broken in (misspelled, wrong_type, bad_env):
        with pytest.raises(ValidationError):
            k8s_check(broken)
    bad_name = copy.deepcopy(job)
    bad_name["spec"]["template"]["spec"]["containers"][0]["name"] = "ML_pipe"
    with pytest.raises(AssertionError, match="not a DNS label"):
        k8s_check(bad_name)


# -- the variant's MLproject -------------------------------------------------------------------


def test_the_variant_has_the_top_level_entry_points_parameters_and_commands():
    top = yaml.safe_load((PROJECT_ROOT / "MLproject").read_text())
    variant = yaml.safe_load((VARIANT / "MLproject").read_text())
    assert variant["entry_points"] == top["entry_points"]
    assert set(variant["entry_points"]) >= set(STEPS) | {"main"}
    # MLflow names the Job and its container after the project
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", variant["name"]) and len(variant["name"]) <= 30
    assert "python_env" not in variant and "conda_env" not in variant
    assert f"-t {variant['docker_env']['image']} ." in DOCKERFILE.read_text()


# -- the image ---------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(m[0].upper(), m[1].strip()) for m in re.findall(r"^\s*([A-Za-z]+)\s+(.*)$", joined, re.M)]


def pin(text: str) -> tuple[str, str] | None:
    """`Scikit_Learn==1.9.1` -> ("scikit-learn", "1.9.1"); `psycopg[binary]==3.3.9` -> ("psycopg", ...);
    None for anything but an exact pin."""
    match = PIN.match(text)
    return (re.sub(r"[-_.]+", "-", match[1].split("[")[0]).lower(), match[2]) if match else None


def requirement_pins(path: Path) -> dict[str, str]:
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    pins = [pin(line) for line in lines if line]
    assert all(pins), f"{path.name}: not every line is an exact pin"
    return dict(pins)


def installed_pins(instructions: list[tuple[str, str]]) -> dict[str, str]:
    """What the Dockerfile's `pip install` lines install: `-r` files (by the name they were
    copied from in the build context) and inline pins."""
    copied = {}
    for op, args in instructions:
        if op == "COPY":
            *sources, dest = args.split()
            for source in sources:
                copied[str(Path(dest) / Path(source).name) if dest.endswith("/") else dest] = source
    pins: dict[str, str] = {}
    for op, args in instructions:
        for command in args.split("&&") if op == "RUN" else []:
            words = iter(shlex.split(command)[2:] if shlex.split(command)[:2] == ["pip", "install"] else [])
            for word in words:
                if word == "-r":
                    pins.update(requirement_pins(PROJECT_ROOT / copied[next(words)]))
                elif pin(word):
                    pins.update([pin(word)])
                elif not word.startswith("-"):
                    raise AssertionError(f"Dockerfile installs {word!r}, which is not an exact pin")
    return pins


def test_the_image_has_python_env_pins_exactly():
    env = yaml.safe_load((PROJECT_ROOT / "python_env.yaml").read_text())
    env_pins = dict(pin(dependency) for dependency in env["dependencies"])
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    (base,) = [args for op, args in instructions if op == "FROM"]
    assert re.fullmatch(rf"python:{re.escape(str(env['python']))}-[a-z-]+", base), base
    pins = installed_pins(instructions)
    assert {name: pins.get(name) for name in env_pins} == env_pins
    # besides them only the team server's extras, which no step imports
    assert {k: v for k, v in pins.items() if k not in env_pins} == requirement_pins(
        PROJECT_ROOT / "requirements-team.txt")


def test_the_pin_reader_refuses_a_loose_or_extra_install():
    loose = dockerfile_instructions("FROM python:3.11.7-slim\nRUN pip install mlflow>=3\n")
    with pytest.raises(AssertionError, match="not an exact pin"):
        installed_pins(loose)
    extra = dockerfile_instructions("FROM python:3.11.7-slim\nCOPY requirements.txt /r/\n"
                                    "RUN apt-get update && pip install -r /r/requirements.txt \\\n  kubernetes==36.0.3\n")
    assert installed_pins(extra)["kubernetes"] == "36.0.3" and installed_pins(extra)["mlflow"] == "3.17.2"


def test_the_image_holds_every_file_a_steps_cache_key_reads(tmp_path):
    """Lay the files out as the Dockerfile's COPY lines do (the build context is the checkout's
    root): each step's code digest there is the checkout's, so a step in a pod of an image built
    from this checkout keys itself as the driver does. PYTHONPATH is that folder."""
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    workdir = image = None
    for op, args in instructions:
        if op == "WORKDIR":
            workdir = args
            image = tmp_path / args.lstrip("/")
            image.mkdir(parents=True, exist_ok=True)
        elif op == "COPY" and workdir:
            *sources, dest = args.split()
            target = image / dest
            for source in sources:
                path = PROJECT_ROOT / source
                into = target / path.name if dest.endswith("/") or len(sources) > 1 else target
                if path.is_dir():
                    shutil.copytree(path, into, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                else:
                    into.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(path, into)
    env = " ".join(args for op, args in instructions if op == "ENV")
    assert f"PYTHONPATH={workdir}" in env
    for step in [*STEPS, "main"]:
        assert cache.code_digest(step, image) == cache.code_digest(step), step
