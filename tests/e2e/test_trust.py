"""Attacks on the gate's verdict through the real interfaces: an attacker with write access to the
tracking store (tests/e2e/attacks.py, a process of its own) edits a genuine qa run's tags or
forges a qa run, and serve, a running server's alias pick-up and the next pipeline's qa must not
run the payload (a marker file says whether it ran) and must say why in one line."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from services import free_port
from support import MODEL, ROOT, Store, error_lines, register_wine
from test_serving import Server, http, records_body

ATTACKS = str(ROOT / "tests" / "e2e" / "attacks.py")
SMOKE_SKLEARN = "overrides=serve.mode=smoke serve.runtime=sklearn"


@pytest.fixture(scope="module")
def registered(store: Store):
    return register_wine(store)


def _refused(result, marker: Path) -> str:
    assert not marker.exists(), "the payload ran"
    assert result.returncode != 0, result.output[-3000:]
    errors = error_lines(result.stderr)
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


def test_a_tag_edit_on_the_genuine_qa_run_does_not_vouch_for_swapped_files(store: Store, registered, tmp_path):
    """The champion's pickle overwritten, then `qa.model_digest` of its genuine, FINISHED qa run set
    to the new files' digest: the digest that counts is the one inside the signed verdict."""
    marker = tmp_path / "pwned"
    store.python(ATTACKS, "tag-edit", MODEL, str(marker), check=True)
    try:
        result = store.mlflow_run("-P", f"model_uri=models:/{MODEL}@champion", "-P", SMOKE_SKLEARN, entry="serve")
    finally:
        store.python(ATTACKS, "restore", MODEL, f"{marker}.backup", check=True)
    error = _refused(result, marker)
    assert "its files changed since qa validated them" in error and "refused, nothing loaded" in error, error


def test_a_forged_qa_run_vouches_for_nothing_in_serve(store: Store, registered, tmp_path):
    """A qa run made from scratch (every tag of a real one, the payload's digest, FINISHED) and a
    version pointing at it: no verdict signed by a trusted key, so nothing is loaded."""
    marker = tmp_path / "pwned"
    store.python(ATTACKS, "forge-qa-run", MODEL, str(marker), "forged", check=True)
    result = store.mlflow_run("-P", f"model_uri=models:/{MODEL}@forged", "-P", SMOKE_SKLEARN, entry="serve")
    error = _refused(result, marker)
    assert "no verdict signed by a trusted key" in error and "refused, nothing loaded" in error, error


def test_a_running_server_does_not_pick_up_a_forged_version(store: Store, registered, tmp_path):
    """The champion alias moved to a forged version while a server follows it: the server keeps
    serving the version it has, and the payload never runs."""
    marker = tmp_path / "pwned"
    port = free_port()
    overrides = (f"serve.port={port} serve.records={tmp_path / 'records.db'} serve.refresh_seconds=1 "
                 "serve.runtime=sklearn")
    server = Server(store, tmp_path / "server.log", ["run", ".", "-e", "serve", "--env-manager", "local", "-P",
                                                     f"model_uri=models:/{MODEL}@champion", "-P",
                                                     f"overrides={overrides}"], port)
    try:
        store.python(ATTACKS, "forge-qa-run", MODEL, str(marker), "champion", check=True)
        time.sleep(4)
        status, headers, _ = http(f"{server.url}/invocations", records_body(registered["rows"].head(2)))
    finally:
        server.stop()
        store.client.set_registered_model_alias(MODEL, "champion", registered["v1"])
    assert not marker.exists(), "the payload ran in the running server"
    assert status == 200 and headers["X-Model-Version"] == registered["v1"]
    assert "no verdict signed by a trusted key" in server.log.read_text()


def test_a_forged_champion_is_refused_by_the_next_pipelines_qa(store: Store, registered, tmp_path):
    """The forged version made champion: the next pipeline's qa compares its candidate with the
    champion, and must refuse to load it (qa fails; the payload never runs)."""
    marker = tmp_path / "pwned"
    store.python(ATTACKS, "forge-qa-run", MODEL, str(marker), "champion", check=True)
    try:
        result = store.mlflow_run("-P", "steps=qa")  # the newest train run's model, against the new champion
    finally:
        store.client.set_registered_model_alias(MODEL, "champion", registered["v1"])
    error = _refused(result, marker)
    assert "no verdict signed by a trusted key" in error, error


def test_a_swapped_transformer_of_a_cached_preprocess_run_is_refused_by_train(store: Store, registered, tmp_path):
    """The preprocess run a new pipeline reuses from the cache, its `preprocessor.cloudpickle`
    overwritten in the artifact store: train checks the file against preprocess's signed seal
    before unpickling it."""
    marker = tmp_path / "pwned"
    store.python(ATTACKS, "swap-transformer", MODEL, str(marker), check=True)
    try:
        result = store.mlflow_run("-P", "steps=train", "-P", "overrides=train.cv_folds=4")  # on that preprocess run
    finally:
        store.python(ATTACKS, "restore", MODEL, f"{marker}.backup", check=True)
    error = _refused(result, marker)
    assert "preprocessor.cloudpickle" in error and "refused, nothing loaded" in error, error


def test_a_model_directory_that_names_a_loader_module_is_refused_by_serve(store: Store, tmp_path):
    """serialization=skops, a model served as a path with the verdict check off
    (serve.allow_unvalidated=true): the sklearn flavor is genuine, but MLmodel's python_function
    flavor names the attacker's loader module in a code folder, which mlflow.pyfunc.load_model
    would import. The loader reads the directory first and refuses it."""
    import mlflow
    import yaml
    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression

    from mlpipe.config import compose
    from mlpipe.training import model_io

    features, target = load_wine(return_X_y=True, as_frame=True)
    model, path, marker = LogisticRegression(max_iter=500).fit(features, target), tmp_path / "m", tmp_path / "pwned"
    mlflow.sklearn.save_model(model, str(path), serialization_format="skops", input_example=features.head(2),
                              skops_trusted_types=model_io.trusted_types(model, list(compose([]).skops_trusted_types)),
                              pip_requirements=["scikit-learn"])
    mlmodel = yaml.safe_load((path / "MLmodel").read_text())
    (path / "code").mkdir()
    (path / "code" / "evil_loader.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
                                                  "def _load_pyfunc(path, model_config=None):\n    raise SystemExit\n")
    mlmodel["flavors"]["python_function"] |= {"loader_module": "evil_loader", "code": "code"}
    (path / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    result = store.mlflow_run("-P", f"model_uri={path}", "-P", f"{SMOKE_SKLEARN} serve.allow_unvalidated=true "
                              "serialization=skops", entry="serve")
    error = _refused(result, marker)
    assert "its MLmodel names loader module 'evil_loader' (expected mlflow.sklearn)" in error, error
