"""mlpipe/registry/provenance.py against a real SQLite registry: which qa run vouches for a model,
and the attacks it must refuse (a version with copied tags, a failed or unfinished qa run, files
swapped after qa)."""

from pathlib import Path

import pytest

from mlpipe.errors import UntrustedModelError, UpstreamError
from mlpipe.registry import provenance
from mlpipe.run import outputs
from mlpipe.training import model_io

RELAX = "serve.allow_unvalidated=true"


def _other_model(registry, **tags):
    """A new logged model registered as a version of `m` with `tags`: what anyone who can write
    model versions can do."""
    info = registry.log_model([1, 1])
    version = registry.client.create_model_version("m", info.model_uri, model_id=info.model_id, tags=tags)
    return info, version


def test_a_version_register_made_is_vouched_for_by_its_qa_run(registry):
    for uri in ("models:/m/1", "models:/m@champion", "models:/m", "models:/m/latest"):
        proof = provenance.validated(registry.client, uri, RELAX, registry.keyring)
        assert (proof.qa_run_id, proof.model_uri, proof.load_uri, proof.version) == \
               (registry.qa_run_id, registry.model_uri, "models:/m/1", "1")
        assert proof.digest == model_io.model_digest(registry.model_uri)


def test_a_logged_model_and_a_train_runs_uri_are_found_through_the_qa_run_that_passed_them(registry):
    proof = provenance.validated(registry.client, registry.model_uri, RELAX, registry.keyring)
    assert (proof.qa_run_id, proof.load_uri, proof.version) == (registry.qa_run_id, registry.model_uri, None)
    run_id = registry.client.get_logged_model(registry.model_uri.split("/")[-1]).source_run_id
    train = outputs.TrainOutput(model_uri=registry.model_uri, task="classification", model_class="DummyClassifier",
                                preprocess_run_id="p")
    for key, value in train.tags().items():
        registry.client.set_tag(run_id, key, value)
    assert provenance.validated(registry.client, f"runs:/{run_id}/model", RELAX, registry.keyring).qa_run_id == registry.qa_run_id


def test_a_version_without_a_qa_run_is_refused_naming_the_tag_and_the_setting(registry):
    _other_model(registry)
    with pytest.raises(UntrustedModelError) as info:
        provenance.validated(registry.client, "models:/m/2", RELAX, registry.keyring)
    assert str(info.value) == ("models:/m/2 (version 2 of m) has no qa run (lineage.qa_run_id): it was not registered "
                               "by this pipeline's register step; refused, nothing loaded; serve.allow_unvalidated=true")


def test_a_version_carrying_a_validated_versions_tags_is_refused(registry):
    """The attack: register your own model under the champion's name with every tag of the real
    champion copied onto it. The qa run it names validated another model."""
    info, _ = _other_model(registry, **registry.version.tags)
    registry.client.set_registered_model_alias("m", "champion", "2")
    with pytest.raises(UntrustedModelError, match=rf"models:/m@champion \(version 2 of m\): its source {info.model_uri} "
                                                  rf"is not the model qa run {registry.qa_run_id} validated"):
        provenance.validated(registry.client, "models:/m@champion", RELAX, registry.keyring)


def test_a_logged_model_no_qa_run_passed_is_refused(registry):
    info, _ = _other_model(registry)
    registry.record_qa_run(info.model_uri, passed=False)
    with pytest.raises(UntrustedModelError, match=rf"{info.model_uri}: no FINISHED qa run passed {info.model_uri}"):
        provenance.validated(registry.client, info.model_uri, RELAX, registry.keyring)


@pytest.mark.parametrize("passed,status,expected", [
    (False, "FINISHED", r"qa run \w+ did not pass it \(failed: baseline\)"),
    (True, "FAILED", r"run \w+ is not a FINISHED qa run \(qa, FAILED\)"),
    (True, "RUNNING", r"run \w+ is not a FINISHED qa run \(qa, RUNNING\)"),
])
def test_a_qa_run_that_did_not_pass_or_finish_vouches_for_nothing(registry, passed, status, expected):
    info, _ = _other_model(registry)
    qa_run_id = registry.record_qa_run(info.model_uri, passed=passed, status=status)
    registry.client.set_model_version_tag("m", "2", provenance.QA_RUN_TAG, qa_run_id)
    with pytest.raises(UntrustedModelError, match=expected):
        provenance.validated(registry.client, "models:/m/2", RELAX, registry.keyring)


def test_a_run_of_another_step_or_a_missing_run_vouches_for_nothing(registry):
    info, _ = _other_model(registry, **{provenance.QA_RUN_TAG: "0" * 32})
    with pytest.raises(UntrustedModelError, match=f"its qa run {'0' * 32} is not in the tracking store"):
        provenance.validated(registry.client, "models:/m/2", RELAX, registry.keyring)
    run_id = registry.client.get_logged_model(info.model_id).source_run_id
    registry.client.set_model_version_tag("m", "2", provenance.QA_RUN_TAG, run_id)
    with pytest.raises(UntrustedModelError, match=f"run {run_id} is not a FINISHED qa run"):
        provenance.validated(registry.client, "models:/m/2", RELAX, registry.keyring)


def test_a_path_or_a_missing_version_is_refused(registry, tmp_path):
    with pytest.raises(UntrustedModelError, match="is not a registered version or a logged model, so no qa run can "
                                                  "vouch for it; refused, nothing loaded; serve.allow_unvalidated=true"):
        provenance.validated(registry.client, str(tmp_path), RELAX, registry.keyring)
    with pytest.raises(UpstreamError, match="models:/m/7: no such model version in the registry"):
        provenance.validated(registry.client, "models:/m/7", RELAX, registry.keyring)
    with pytest.raises(UpstreamError, match="models:/m@nobody: no such model version"):
        provenance.validated(registry.client, "models:/m@nobody", RELAX, registry.keyring)


def test_files_swapped_after_qa_are_refused(registry):
    proof = provenance.validated(registry.client, "models:/m/1", RELAX, registry.keyring)
    provenance.check_files(proof.load_uri, proof.digest, "nothing registered")
    where = Path(registry.client.get_model_version_download_uri("m", "1"))
    (where / "MLmodel").write_text((where / "MLmodel").read_text() + "# swapped\n")
    with pytest.raises(UntrustedModelError, match=r"models:/m/1: its files changed since qa validated them "
                                                  r"\(digest sha256:\w+, qa recorded sha256:\w+\); nothing registered"):
        provenance.check_files(proof.load_uri, proof.digest, "nothing registered")


# -- the signed verdict: what a tag edit or a forged run cannot fake ------------------------------

def test_a_tag_edit_on_the_genuine_qa_run_changes_nothing_the_check_uses(registry):
    """Files swapped, then `qa.model_digest` of the genuine, FINISHED qa run set to their digest
    (MLflow accepts it): the digest that counts is the signed one, so the files are refused."""
    where = Path(registry.client.get_model_version_download_uri("m", "1"))
    (where / "MLmodel").write_text((where / "MLmodel").read_text() + "# swapped\n")
    registry.client.set_tag(registry.qa_run_id, "qa.model_digest", model_io.model_digest("models:/m/1"))
    proof = provenance.validated(registry.client, "models:/m/1", RELAX, registry.keyring)
    with pytest.raises(UntrustedModelError, match="its files changed since qa validated them"):
        provenance.check_files(proof.load_uri, proof.digest, "nothing loaded")


def _forged_run(registry, model_uri: str, **tags) -> str:
    """A qa run made from scratch: every tag of the genuine one, this model and its digest, FINISHED."""
    genuine = registry.client.get_run(registry.qa_run_id).data.tags
    run = registry.client.create_run(registry.experiment_id, tags={k: v for k, v in genuine.items()
                                                                   if not k.startswith("mlflow.")} | {
        outputs.MODEL_URI_TAG: model_uri, "qa.model_digest": model_io.model_digest(model_uri)} | tags)
    registry.client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


@pytest.mark.parametrize("verdict,expected", [
    ("none", r"it has no qa.verdict \(qa ran before verdicts were signed, or did not sign: rerun qa\)"),
    ("copied", r"the verdict was signed for qa run \w+, not this one"),
    ("edited", r"the verdict's signature does not match its statement \(key \w+\): it was changed after it was signed"),
])
def test_a_forged_qa_run_vouches_for_nothing(registry, verdict, expected):
    """With no verdict, with the genuine run's verdict copied, or with that verdict edited to name
    the forged run: no verdict a trusted key signed for this run."""
    info, _ = _other_model(registry)
    genuine = registry.client.get_run(registry.qa_run_id).data.tags
    tags = {"none": {provenance.VERDICT_TAG: "", provenance.SIGNATURE_TAG: ""}, "copied": {}, "edited": {}}[verdict]
    run_id = _forged_run(registry, info.model_uri, **tags)
    if verdict == "edited":
        registry.client.set_tag(run_id, provenance.VERDICT_TAG,
                                genuine[provenance.VERDICT_TAG].replace(registry.qa_run_id, run_id))
    registry.client.set_model_version_tag("m", "2", provenance.QA_RUN_TAG, run_id)
    with pytest.raises(UntrustedModelError, match=rf"models:/m/2 \(version 2 of m\): qa run {run_id} has no verdict "
                                                  rf"signed by a trusted key: {expected}.*; refused, nothing loaded; "):
        provenance.validated(registry.client, "models:/m/2", RELAX, registry.keyring)


def test_a_verdict_signed_with_an_unknown_or_a_revoked_key_is_refused(registry):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from mlpipe import signing

    info, _ = _other_model(registry)
    stranger = Ed25519PrivateKey.generate()  # an attacker's own key: a real signature, not a trusted one
    run_id = registry.record_qa_run(info.model_uri, key=stranger)
    registry.client.set_model_version_tag("m", "2", provenance.QA_RUN_TAG, run_id)
    with pytest.raises(UntrustedModelError, match=rf"signed by key {signing.key_id(stranger.public_key())}, not one "
                                                  r"of trust.signers \(\w{16}\)"):
        provenance.validated(registry.client, "models:/m/2", RELAX, registry.keyring)
    trusted = registry.keyring.texts() + [signing.public_text(stranger.public_key())]
    assert provenance.validated(registry.client, "models:/m/2", RELAX,
                                signing.Keyring.from_texts(trusted, [])).qa_run_id == run_id
    revoked = signing.Keyring.from_texts(trusted, [signing.key_id(stranger.public_key())])
    with pytest.raises(UntrustedModelError, match=r"which is revoked \(trust.revoked\)"):
        provenance.validated(registry.client, "models:/m/2", RELAX, revoked)
    assert provenance.validated(registry.client, "models:/m/1", RELAX, revoked).qa_run_id == registry.qa_run_id


def test_the_verdicts_outcome_and_model_count_not_the_tags(registry):
    """A failed verdict with `qa.passed` edited to true, and a passing verdict for another model
    on a run whose model tag was edited: both refused on what was signed."""
    info, _ = _other_model(registry)
    failed = registry.record_qa_run(info.model_uri, passed=False)
    registry.client.set_tag(failed, "qa.passed", "true")
    registry.client.set_tag(failed, "qa.failed_checks", "")
    registry.client.set_model_version_tag("m", "2", provenance.QA_RUN_TAG, failed)
    with pytest.raises(UntrustedModelError, match=rf"qa run {failed} did not pass it \(failed: baseline\)"):
        provenance.validated(registry.client, "models:/m/2", RELAX, registry.keyring)
    other = registry.record_qa_run(registry.model_uri)
    registry.client.set_tag(other, outputs.MODEL_URI_TAG, info.model_uri)
    registry.client.set_model_version_tag("m", "2", provenance.QA_RUN_TAG, other)
    with pytest.raises(UntrustedModelError, match=rf"its source {info.model_uri} is not the model qa run {other} "
                                                  rf"validated \({registry.model_uri}\)"):
        provenance.validated(registry.client, "models:/m/2", RELAX, registry.keyring)


# -- the team gate: only its runs, signed with its key, vouch for the team ------------------------

def _gate_run(registry, experiment_id: str, model_uri: str, key, passed: bool = True) -> str:
    """A gate run as steps/gate.py leaves it: step gate, the model's URI and digest, its signed verdict."""
    from mlpipe import signing

    run = registry.client.create_run(experiment_id, tags={outputs.STEP_TAG: "gate", outputs.MODEL_URI_TAG: model_uri})
    verdict = signing.Verdict(model_uri=model_uri, digest=model_io.model_digest(model_uri), qa_run_id=run.info.run_id,
                              experiment_id=experiment_id, passed=passed, failed_checks="" if passed else "gate.accuracy",
                              config_digest="c", code_digest="d", signed_at="2026-12-07T00:00:00+00:00")
    statement, signature = signing.sign(verdict, key)
    registry.client.set_tag(run.info.run_id, provenance.VERDICT_TAG, statement)
    registry.client.set_tag(run.info.run_id, provenance.SIGNATURE_TAG, signature)
    registry.client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def test_under_the_team_gate_only_a_gate_run_signed_with_its_key_vouches(registry):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from mlpipe import signing

    team_key = Ed25519PrivateKey.generate()
    team = signing.Keyring.from_texts([signing.public_text(team_key.public_key())], [])
    gate_experiment = registry.client.create_experiment("demo/gate")
    # the member's own qa run (signed with the member's key, GATE_KEY) does not vouch for the team
    with pytest.raises(UntrustedModelError, match=r"models:/m/1 \(version 1 of m\): no passing verdict of the team "
                                                  rf"gate for {registry.model_uri}: the lead .* -P candidate=models:/m/1"):
        provenance.validated(registry.client, "models:/m/1", RELAX, team, gate_experiment)
    # a gate run signed with a member's key, or one outside the gate experiment, neither
    _gate_run(registry, gate_experiment, registry.model_uri, Ed25519PrivateKey.generate())
    _gate_run(registry, registry.experiment_id, registry.model_uri, team_key)
    _gate_run(registry, gate_experiment, registry.model_uri, team_key, passed=False)
    with pytest.raises(UntrustedModelError, match="no passing verdict of the team gate"):
        provenance.validated(registry.client, "models:/m/1", RELAX, team, gate_experiment)
    good = _gate_run(registry, gate_experiment, registry.model_uri, team_key)
    proof = provenance.validated(registry.client, "models:/m@champion", RELAX, team, gate_experiment)
    assert (proof.qa_run_id, proof.load_uri, proof.version) == (good, "models:/m/1", "1")
    assert proof.digest == model_io.model_digest(registry.model_uri)
    # the member-level check is unchanged: the member's own key, the version's qa run
    assert provenance.validated(registry.client, "models:/m/1", RELAX, registry.keyring).qa_run_id == registry.qa_run_id
