"""mlpipe/training/model_io.py: serialization formats, logged-model pins, the types skops must trust."""

from __future__ import annotations

import os
from pathlib import Path
from importlib.metadata import version

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import FunctionTransformer

from mlpipe.data.features import build_preprocessor, feature_spec, normalise_types
from mlpipe.errors import ConfigError, UntrustedModelError, UpstreamError
from mlpipe.training import model_io
from mlpipe.training.estimators import fit_model


@pytest.mark.parametrize("fmt", ["cloudpickle", "skops"])
def test_check_format_accepts(fmt):
    assert model_io.check_format(fmt) == fmt


@pytest.mark.parametrize("fmt", ["pickle", "Skops", ""])
def test_check_format_rejects(fmt):
    with pytest.raises(ConfigError) as info:
        model_io.check_format(fmt)
    message = str(info.value)
    assert f"serialization={fmt!r}" in message
    assert "cloudpickle, skops" in message


def test_pip_requirements_cloudpickle():
    pins = model_io.pip_requirements("cloudpickle")
    assert [p.split("==")[0] for p in pins] == ["mlflow", "scikit-learn", "numpy", "pandas", "scipy", "cloudpickle"]
    assert f"scikit-learn=={version('scikit-learn')}" in pins
    assert all(p.count("==") == 1 and p.split("==")[1] for p in pins)


def test_pip_requirements_skops_adds_skops():
    pins = model_io.pip_requirements("skops")
    assert pins[:-1] == model_io.pip_requirements("cloudpickle")
    assert pins[-1] == f"skops=={version('skops')}"


@pytest.fixture(scope="module")
def fitted_model(preprocess_cfg):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=60), "kind": rng.choice(["p", "q"], size=60).astype(object),
                          "target": rng.choice([0, 1], size=60)})
    spec = feature_spec(frame, "target", "classification")
    frame = normalise_types(frame, spec)
    pre = build_preprocessor(spec, preprocess_cfg).fit(frame[spec.columns])
    return fit_model(pre, LogisticRegression(), frame[spec.columns], frame["target"])[0], frame[spec.columns]


@pytest.fixture(scope="module")
def allowed():
    """The real allow-list, conf/config.yaml's skops_trusted_types."""
    from mlpipe.config import compose

    return list(compose([]).skops_trusted_types)


def test_trusted_types_let_skops_load_the_model(fitted_model, allowed):
    import skops.io as sio

    model, X = fitted_model
    trusted = model_io.trusted_types(model, allowed)
    assert trusted and set(trusted) <= set(allowed)  # a fitted pipeline holds types skops does not trust by default
    payload = sio.dumps(model)
    loaded = sio.loads(payload, trusted=trusted)
    assert loaded.predict(X).tolist() == model.predict(X).tolist()
    with pytest.raises(sio.exceptions.UntrustedTypesFoundException):
        sio.loads(payload)


@pytest.mark.parametrize("func", [eval, os.system], ids=["builtins.eval", "posix.system"])
def test_a_type_off_the_allow_list_is_refused_by_exact_name(func, allowed):
    """`builtins.` as a prefix would admit builtins.eval: the list holds exact names."""
    with pytest.raises(ConfigError, match=r"types outside skops_trusted_types: (builtins\.eval|posix\.system)"):
        model_io.trusted_types(FunctionTransformer(func=func), allowed)


@pytest.fixture
def evil_model(tmp_path):
    """A scikit-learn model saved by MLflow as skops, whose file holds builtins.eval and whose
    MLmodel tells skops to trust it (what anyone with write access to the store can log)."""
    import mlflow

    path = tmp_path / "evil"
    mlflow.sklearn.save_model(FunctionTransformer(func=eval), str(path), serialization_format="skops",
                              skops_trusted_types=["builtins.eval"])
    return path


def test_a_model_holding_an_untrusted_type_is_refused_before_it_loads(evil_model, allowed):
    with pytest.raises(UntrustedModelError) as info:
        model_io.load_model(str(evil_model), "skops", allowed)
    assert "model.skops holds or trusts types outside skops_trusted_types: builtins.eval; refused" in str(info.value)
    with pytest.raises(UntrustedModelError, match="builtins.eval"):  # with serialization=cloudpickle too
        model_io.load_model(str(evil_model), "cloudpickle", allowed)


def test_a_pickle_is_refused_under_serialization_skops(tmp_path, fitted_model, allowed):
    import mlflow

    mlflow.sklearn.save_model(fitted_model[0], str(tmp_path / "m"), serialization_format="cloudpickle")
    with pytest.raises(UntrustedModelError, match=r"model.pkl is a cloudpickle file but serialization=skops: refused, "
                                            r"nothing unpickled"):
        model_io.load_model(str(tmp_path / "m"), "skops", allowed)
    assert model_io.load_model(str(tmp_path / "m"), "cloudpickle", allowed)[0].predict(fitted_model[1]).shape


def test_the_digest_covers_every_file_but_mlflows_download_note(tmp_path, fitted_model):
    import mlflow

    mlflow.sklearn.save_model(fitted_model[0], str(tmp_path / "m"), serialization_format="cloudpickle")
    first = model_io.files_digest(tmp_path / "m")
    assert first.startswith("sha256:") and first == model_io.files_digest(tmp_path / "m")
    (tmp_path / "m" / "registered_model_meta").write_text("model_name: m\nmodel_version: '2'\n")
    assert model_io.files_digest(tmp_path / "m") == first  # MLflow's client writes it on download
    for change in (lambda: (tmp_path / "m" / "MLmodel").write_text((tmp_path / "m" / "MLmodel").read_text() + "\n"),
                   lambda: (tmp_path / "m" / "extra.py").write_text("import os"),
                   lambda: (tmp_path / "m" / "extra.py").rename(tmp_path / "m" / "other.py")):
        change()
        assert model_io.files_digest(tmp_path / "m") != first
        first = model_io.files_digest(tmp_path / "m")


def test_files_that_are_not_the_validated_ones_are_refused_before_loading(tmp_path, fitted_model, allowed):
    import pickle

    import mlflow

    mlflow.sklearn.save_model(fitted_model[0], str(tmp_path / "m"), serialization_format="cloudpickle")
    model, digest = model_io.load_model(str(tmp_path / "m"), "cloudpickle", allowed)
    assert model_io.load_model(str(tmp_path / "m"), "cloudpickle", allowed, expect_digest=digest)[1] == digest
    marker = tmp_path / "ran"
    (tmp_path / "m" / "model.pkl").write_bytes(pickle.dumps(Shell(f"touch {marker}")))
    with pytest.raises(UntrustedModelError, match=r"files changed since qa validated them .*: refused, nothing loaded"):
        model_io.load_model(str(tmp_path / "m"), "cloudpickle", allowed, expect_digest=digest)
    assert not marker.exists()
    try:  # without the digest the pickle is loaded: the command runs
        model_io.load_model(str(tmp_path / "m"), "cloudpickle", allowed)
    except Exception:  # noqa: BLE001 - what it returns is not a model
        pass
    assert marker.exists()


class Shell:
    """What an attacker's pickle holds: a shell command run when it is unpickled."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        import os

        return os.system, (self.command,)


def _sealed_run(registry, tmp_path, obj, fmt):
    """A preprocess-like run that logged the transformer and sealed it with a gate key of its own;
    (the run as MLflow returns it, the `trust` group that trusts that key)."""
    import mlflow

    tcfg = {"signing_key": str(tmp_path / "gate.key"), "signers": [], "revoked": []}
    folder = _saved(tmp_path, obj, fmt)
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(folder))
    run = registry.client.get_run(run.info.run_id)
    for key, value in model_io.seal_tags(sorted(folder.iterdir()), run, tcfg).items():
        registry.client.set_tag(run.info.run_id, key, value)
    return registry.client.get_run(run.info.run_id), tcfg


def test_the_transformer_loader_follows_the_config_not_the_artifact(registry, tmp_path, fitted_model, allowed):
    """A preprocess run that logged a pickle: serialization=skops refuses it without unpickling."""
    run, tcfg = _sealed_run(registry, tmp_path, fitted_model[0], "cloudpickle")
    with pytest.raises(UpstreamError, match=rf"run {run.info.run_id}: preprocessor.cloudpickle is a cloudpickle file "
                                            r"but serialization=skops: refused"):
        model_io.load_transformer(registry.client, run, "preprocessor", tmp_path / "w", "skops", allowed, tcfg)
    assert model_io.load_transformer(registry.client, run, "preprocessor", tmp_path / "w2", "cloudpickle",
                                     allowed, tcfg) is not None


def test_a_transformer_swapped_after_its_run_sealed_it_is_refused_before_unpickling(registry, tmp_path, fitted_model,
                                                                                   allowed):
    import mlflow

    run, tcfg = _sealed_run(registry, tmp_path, fitted_model[0], "cloudpickle")
    marker = tmp_path / "ran"
    stored = Path(run.info.artifact_uri.removeprefix("file://")) / "preprocessor.cloudpickle"
    stored.write_bytes(__import__("pickle").dumps(Shell(f"touch {marker}")))
    with pytest.raises(UntrustedModelError, match=rf"run {run.info.run_id}: preprocessor.cloudpickle changed since the "
                                                  r"run sealed it \(sha256 \w+, sealed \w+\): refused, nothing loaded"):
        model_io.load_transformer(registry.client, run, "preprocessor", tmp_path / "w", "cloudpickle", allowed, tcfg)
    assert not marker.exists()
    with mlflow.start_run() as unsealed:  # a run that sealed nothing, and one carrying another run's seal
        mlflow.log_artifacts(str(tmp_path / "saved-cloudpickle"))
    for tags, reason in (({}, "it has no pipeline.artifacts_seal"),
                         ({k: v for k, v in run.data.tags.items() if "seal" in k}, rf"the seal was signed for run "
                                                                                   rf"{run.info.run_id}, not")):
        for key, value in tags.items():
            registry.client.set_tag(unsealed.info.run_id, key, value)
        with pytest.raises(UntrustedModelError, match=rf"its artifacts have no seal signed by a trusted key: {reason}"):
            model_io.load_transformer(registry.client, registry.client.get_run(unsealed.info.run_id), "preprocessor",
                                      tmp_path / "w3", "cloudpickle", allowed, tcfg)
    assert not marker.exists()


def _saved(tmp_path, obj, fmt):
    folder = tmp_path / f"saved-{fmt}"
    folder.mkdir()
    model_io.save_transformer(obj, folder, "preprocessor", fmt)
    return folder


# -- the loader trusts nothing in the model directory --------------------------------------------

def _skops_model(path, model):
    import mlflow

    mlflow.sklearn.save_model(model, str(path), serialization_format="skops",
                              skops_trusted_types=model_io.trusted_types(model, _allowed()), pip_requirements=["scikit-learn"])
    return path


def _allowed():
    from mlpipe.config import compose

    return list(compose([]).skops_trusted_types)


def _python_function(path):
    import yaml

    mlmodel = yaml.safe_load((path / "MLmodel").read_text())
    return mlmodel, mlmodel["flavors"]["python_function"]


def _loader_module(path, marker):
    """MLmodel's python_function names the attacker's module, shipped in the model's code folder."""
    mlmodel, flavor = _python_function(path)
    (path / "code").mkdir()
    (path / "code" / "evil_loader.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
                                                  "def _load_pyfunc(path, model_config=None):\n    raise SystemExit\n")
    flavor |= {"loader_module": "evil_loader", "code": "code"}
    return mlmodel


def _python_model(path, marker):
    """A cloudpickled python_model (what mlflow.pyfunc.log_model(python_model=...) writes)."""
    import cloudpickle

    mlmodel, flavor = _python_function(path)
    (path / "python_model.pkl").write_bytes(cloudpickle.dumps(Shell(f"touch {marker}")))
    flavor |= {"loader_module": "mlflow.pyfunc.model", "python_model": "python_model.pkl"}
    flavor.pop("model_path", None)
    return mlmodel


def _model_code(path, marker):
    """Models from code: plain Python, no pickle at all (mlflow.pyfunc.log_model(python_model="file.py"))."""
    mlmodel, flavor = _python_function(path)
    (path / "model_code.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    flavor |= {"loader_module": "mlflow.pyfunc.model", "model_code_path": "model_code.py"}
    return mlmodel


def _code_folder(path, marker):
    """The genuine loader module with a code folder: MLflow puts it first on sys.path, where a
    module it holds shadows any the loader imports later."""
    mlmodel, flavor = _python_function(path)
    (path / "code").mkdir()
    (path / "code" / "skops_helpers.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    flavor["code"] = "code"
    return mlmodel


@pytest.mark.parametrize("attack,refusal", [
    (_loader_module, r"its MLmodel names loader module 'evil_loader' \(expected mlflow.sklearn\)"),
    (_python_model, r"its MLmodel names loader module 'mlflow.pyfunc.model' \(expected mlflow.sklearn\)"),
    (_model_code, r"its MLmodel names loader module 'mlflow.pyfunc.model' \(expected mlflow.sklearn\)"),
    (_code_folder, r"its MLmodel names a code folder \(flavors.python_function.code: 'code'\)"),
])
def test_a_model_directory_that_names_other_code_is_refused_before_loading(tmp_path, fitted_model, attack, refusal):
    """serialization=skops, the sklearn flavor left genuine: the python_function flavor (what
    mlflow.pyfunc.load_model obeys) or a code folder points at the attacker's code."""
    import yaml

    path = _skops_model(tmp_path / "m", fitted_model[0])
    marker = tmp_path / "ran"
    (path / "MLmodel").write_text(yaml.safe_dump(attack(path, marker)))
    with pytest.raises(UntrustedModelError, match=rf"{path}: {refusal}; refused, nothing loaded"):
        model_io.load_model(str(path), "skops", _allowed())
    assert not marker.exists()


def test_an_extra_python_file_in_the_model_directory_is_refused(tmp_path, fitted_model):
    path = _skops_model(tmp_path / "m", fitted_model[0])
    assert model_io.load_model(str(path), "skops", _allowed())[0].predict(fitted_model[1]).shape
    (path / "helpers.py").write_text("import os\n")
    with pytest.raises(UntrustedModelError, match=rf"{path}: it holds Python files \(helpers.py\): refused, nothing "
                                                  "loaded"):
        model_io.load_model(str(path), "skops", _allowed())
