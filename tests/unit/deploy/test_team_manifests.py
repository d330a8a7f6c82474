"""deploy/team, the team's MLflow on a cluster, checked offline: every document of every manifest
passes the Kubernetes API's schema for its kind, every image is pinned, every Secret a manifest
reads is one deploy/team/secrets.sh makes (with passwords that agree with each other), the
tracking server starts as `make team-server` starts it, and the model server's overrides compose."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from mlpipe.config import PROJECT_ROOT

TEAM = PROJECT_ROOT / "deploy" / "team"
KUSTOMIZATION = yaml.safe_load((TEAM / "kustomization.yaml").read_text())
OWN_IMAGE = "mlpipe"  # deploy/kubernetes/Dockerfile's image; kustomization.yaml sets its registry and tag
JOB_TEMPLATE = PROJECT_ROOT / "deploy" / "kubernetes" / "kubernetes_job_template.yaml"


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


DOCS = [(name, i, doc) for name in KUSTOMIZATION["resources"] for i, doc in enumerate(documents(TEAM / name))]


def by_kind(kind: str) -> list[dict]:
    return [doc for _, _, doc in DOCS if doc["kind"] == kind]


def pod_specs() -> list[dict]:
    """The pods of Deployments and StatefulSets, and of the CronJob's jobs."""
    return [doc["spec"]["template"]["spec"] for _, _, doc in DOCS if "template" in doc.get("spec", {})] + \
        [doc["spec"]["jobTemplate"]["spec"]["template"]["spec"] for doc in by_kind("CronJob")]


def containers(pod: dict) -> list[dict]:
    return pod.get("initContainers", []) + pod["containers"]


def test_the_recipe_lists_every_manifest_in_its_folder():
    listed = set(KUSTOMIZATION["resources"])
    assert listed == {p.name for p in TEAM.glob("*.yaml")} - {"kustomization.yaml"}
    assert {doc["kind"] for _, _, doc in DOCS} >= {"Namespace", "Service", "StatefulSet", "Deployment", "CronJob"}
    assert {doc["metadata"]["name"] for doc in by_kind("Deployment")} == {"mlflow", "model-server"}


@pytest.mark.parametrize("name, index, doc", DOCS, ids=[f"{n}#{i}:{d['kind']}/{d['metadata']['name']}"
                                                         for n, i, d in DOCS])
def test_every_document_passes_the_api_schema_of_its_kind(name, index, doc, k8s_check):
    k8s_check(doc)


def test_the_model_server_takes_traffic_only_from_labelled_clients():
    """Its NetworkPolicy selects its pods and admits only pods labelled as its clients, on its port."""
    server = next(doc for doc in by_kind("Deployment") if doc["metadata"]["name"] == "model-server")
    pod_labels = server["spec"]["template"]["metadata"]["labels"]
    policies = [p for p in by_kind("NetworkPolicy")
                if p["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()]
    assert len(policies) == 1 and policies[0]["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policies[0]["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"mlpipe.io/model-client": "true"}}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": 5001}]
    services = [s for s in by_kind("Service") if s["metadata"]["name"] == "model-server"]
    assert [s["spec"].get("type", "ClusterIP") for s in services] == ["ClusterIP"]


def test_every_image_is_pinned():
    own = {image["name"]: image for image in KUSTOMIZATION["images"]}
    assert set(own) == {OWN_IMAGE}
    assert own[OWN_IMAGE]["newName"] and str(own[OWN_IMAGE]["newTag"]) not in ("", "latest")
    for pod in pod_specs():
        for container in containers(pod):
            image = container["image"]
            if image == OWN_IMAGE:
                continue
            assert "@sha256:" in image or re.search(r":[\w][\w.-]*$", image.rsplit("/", 1)[-1]), \
                f"{container['name']}: {image} is not pinned to a version"
            assert not image.endswith(":latest"), image


def test_services_reach_their_pods():
    pods = {doc["metadata"]["name"]: doc["spec"]["template"] for _, _, doc in DOCS if "template" in doc.get("spec", {})}
    for service in by_kind("Service"):
        matching = [t for t in pods.values()
                    if service["spec"]["selector"].items() <= t["metadata"]["labels"].items()]
        assert len(matching) == 1, service["metadata"]["name"]
        ports = {p["containerPort"] for c in matching[0]["spec"]["containers"] for p in c.get("ports", [])}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports, service["metadata"]["name"]


def test_the_tracking_server_starts_as_make_team_server_starts_it(tmp_path):
    """The flags and environment of mlpipe/team/server.py's command, with the values a cluster needs."""
    from mlpipe.config import compose
    from mlpipe.team import server

    local_cmd, local_env = server.command(compose([]).team.server, server.Paths(tmp_path))
    (deployment,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "mlflow"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"][:2] == ["mlflow", "server"]
    assert {w for w in container["command"] if w.startswith("--")} == {w for w in local_cmd if w.startswith("--")}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert set(local_env) <= set(env)
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    words = container["command"]
    assert words[words.index("--artifacts-destination") + 1].startswith("s3://")
    assert f"mlflow.{KUSTOMIZATION['namespace']}:*" in env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")


def test_the_model_servers_overrides_compose():
    from mlpipe.config import compose, split_overrides

    (deployment,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "model-server"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"][:3] == ["python", "-m", "steps.serve"]
    (overrides,) = [w.split("=", 1)[1] for w in container["command"] if w.startswith("--overrides=")]
    serve = compose(split_overrides(overrides)).serve
    assert (serve.host, serve.mode) == ("0.0.0.0", "forever")
    assert serve.port == container["ports"][0]["containerPort"]
    assert container["readinessProbe"]["httpGet"]["port"] == serve.port


def test_the_model_server_logs_in_as_the_teams_read_only_identity_into_its_experiment(monkeypatch):
    """Its login is the reader's Secret, never the admin's; its run goes where the reader may write."""
    from mlpipe.config import compose

    (deployment,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "model-server"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert refs["MLFLOW_TRACKING_USERNAME"] == {"name": "mlpipe-reader-login", "key": "username"}
    assert refs["MLFLOW_TRACKING_PASSWORD"] == {"name": "mlpipe-reader-login", "key": "password"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    monkeypatch.delenv("MLPIPE_TEAM", raising=False)
    reader = compose(["team=demo", "team.member=alice"]).team.reader
    assert env["MLFLOW_EXPERIMENT_NAME"] == reader.experiment and reader.user == "reader"


def test_the_loops_cronjob_runs_one_monitor_tick_at_a_time_on_the_model_servers_records(monkeypatch):
    """Its overrides compose; it reads the records the model server writes, never overlaps itself,
    signs with the gate key, logs in with a login that may register (not the READ-only one); the
    model server canaries the alias the loop registers its challengers at."""
    from mlpipe.config import compose, split_overrides

    (cron,) = by_kind("CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][:3] == ["python", "-m", "steps.monitor"]
    (overrides,) = [w.split("=", 1)[1] for w in container["command"] if w.startswith("--overrides=")]
    monkeypatch.delenv("MLPIPE_TEAM", raising=False)
    cfg = compose(split_overrides(overrides))
    (server,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "model-server"]
    (served,) = server["spec"]["template"]["spec"]["containers"]
    (server_overrides,) = [w.split("=", 1)[1] for w in served["command"] if w.startswith("--overrides=")]
    serving = compose(split_overrides(server_overrides)).serve
    assert cfg.serve.records == serving.records and serving.canary.alias == cfg.registry.challenger_alias
    env = {e["name"]: e.get("value") or e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]}
    assert env["MLFLOW_TRACKING_USERNAME"] == "mlpipe-loop-login" and env["MLPIPE_GATE_KEY"].startswith("/etc/mlpipe/gate/")
    (gate,) = [v for v in pod["volumes"] if v["name"] == "gate"]
    assert gate["secret"]["secretName"] == "mlpipe-gate" and not gate["secret"].get("optional")


def test_the_model_server_trusts_the_mounted_public_key_and_holds_no_private_one(tmp_path, monkeypatch):
    """The env and the Secret's files as the pod gets them: the keyring is the gate's public key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from mlpipe import signing
    from mlpipe.config import compose

    (deployment,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "model-server"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    (mount,) = container["volumeMounts"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert {item["path"] for item in volume["secret"]["items"]} == {"gate.key.pub", "feedback.secret"}
    folder = tmp_path / "serving"  # the mount, here
    folder.mkdir()
    gate = Ed25519PrivateKey.generate().public_key()
    (folder / "gate.key.pub").write_text(signing.public_text(gate))
    monkeypatch.setenv("MLPIPE_GATE_KEY", env["MLPIPE_GATE_KEY"].replace(mount["mountPath"], str(folder)))
    monkeypatch.setenv("MLPIPE_FEEDBACK_SECRET", env["MLPIPE_FEEDBACK_SECRET"].replace(mount["mountPath"], str(folder)))
    cfg = compose([])
    assert list(signing.keyring(cfg.trust).trusted) == [signing.key_id(gate)]
    assert cfg.serve.feedback.secret_file == str(folder / "feedback.secret")


# -- the Secrets ---------------------------------------------------------------------------------


def secret_refs(pods: list[dict], optional: bool = False) -> set[tuple[str, str]]:
    """(Secret, key) pairs the pods read; optional ones only when asked."""
    refs = set()
    for pod in pods:
        for container in containers(pod):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref and (optional or not ref.get("optional")):
                    refs.add((ref["name"], ref["key"]))
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                refs |= {(volume["secret"]["secretName"], item["key"]) for item in volume["secret"]["items"]}
    return refs


@pytest.fixture(scope="module")
def made_secrets() -> dict[str, dict[str, str]]:
    if shutil.which("kubectl") is None:
        pytest.skip("deploy/team/secrets.sh renders the Secrets with kubectl, which is not installed here")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from mlpipe import signing

    gate = signing.public_text(Ed25519PrivateKey.generate().public_key())  # the team gate's public key
    env = {**__import__("os").environ, "GATE_PUBLIC_KEY": gate}
    out = subprocess.run([str(TEAM / "secrets.sh")], capture_output=True, text=True, check=True, timeout=120,
                         env=env).stdout
    docs = [doc for doc in yaml.safe_load_all(out) if doc]
    return {doc["metadata"]["name"]: {"doc": doc, **{k: base64.b64decode(v).decode() for k, v in doc["data"].items()}}
            for doc in docs}


def test_the_secrets_script_makes_every_secret_the_manifests_read(made_secrets, k8s_check):
    for secret in made_secrets.values():
        assert secret["doc"]["metadata"]["namespace"] == KUSTOMIZATION["namespace"]
        k8s_check(secret["doc"])
    made = {(name, key) for name, secret in made_secrets.items() for key in secret if key != "doc"}
    job = yaml.safe_load(JOB_TEMPLATE.read_text())["spec"]["template"]["spec"]
    # mlpipe-gate holds the gate's private key: made by hand from it (docs/kubernetes.md), never generated
    assert secret_refs(pod_specs()) <= made | {("mlpipe-gate", "gate.key")}
    # the steps' Jobs log in as the model server does; their S3 keys stay optional (proxied artifacts)
    assert ("mlpipe-tracking-login", "password") in secret_refs([job], optional=True) & made
    assert all(value for secret in made_secrets.values() for key, value in secret.items() if key != "doc")


def test_the_secrets_agree_with_each_other(made_secrets):
    from configparser import ConfigParser
    from urllib.parse import urlsplit

    pg = made_secrets["mlpipe-postgres"]
    store = urlsplit(made_secrets["mlpipe-mlflow"]["backend-store-uri"])
    auth = ConfigParser()
    auth.read_string(made_secrets["mlpipe-mlflow-auth"]["basic_auth.ini"])
    users = urlsplit(auth["mlflow"]["database_uri"])
    for url, database in ((store, "/mlflow"), (users, "/mlflow_auth")):
        assert (url.username, url.password, url.hostname, url.path) == (pg["username"], pg["password"], "postgres",
                                                                       database)
    assert auth["mlflow"]["admin_password"] == made_secrets["mlpipe-mlflow-auth"]["admin-password"]
    login = made_secrets["mlpipe-tracking-login"]
    assert (login["username"], login["password"]) == (auth["mlflow"]["admin_username"], auth["mlflow"]["admin_password"])
    # the model server's READ-only login: the password `python -m mlpipe.team setup` creates it with
    reader = made_secrets["mlpipe-reader-login"]
    assert reader["password"] == made_secrets["mlpipe-mlflow-auth"]["reader-password"] != login["password"]
    postgres_init = [d for d in by_kind("ConfigMap") if d["metadata"]["name"] == "postgres-init"][0]
    created = set(re.findall(r"CREATE DATABASE (\w+);", "".join(postgres_init["data"].values())))
    assert created == {"mlflow_auth", "serve_records"}


def test_kustomize_renders_the_recipe(k8s_check):
    """What `kubectl apply -k deploy/team` sends: every object in the namespace, the own image
    with the registry and tag of kustomization.yaml."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed here")
    out = subprocess.run(["kubectl", "kustomize", str(TEAM)], capture_output=True, text=True, check=True,
                         timeout=120).stdout
    rendered = [doc for doc in yaml.safe_load_all(out) if doc]
    assert len(rendered) == len(DOCS)
    own = f"{KUSTOMIZATION['images'][0]['newName']}:{KUSTOMIZATION['images'][0]['newTag']}"
    images = set()
    for doc in rendered:
        k8s_check(doc)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == KUSTOMIZATION["namespace"]
        if "template" in doc.get("spec", {}):
            images |= {c["image"] for c in containers(doc["spec"]["template"]["spec"])}
    assert own in images and OWN_IMAGE not in images
