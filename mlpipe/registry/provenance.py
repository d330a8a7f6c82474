"""Which qa run validated a model: the check serve, register, the reports and qa's champion
comparison make before anything in a model is loaded.

Tags are not proof: anyone with EDIT on a run can change its tags, even on a FINISHED run, and
anyone who can write a model version can create a qa run of their own. So the gate's word is a
signed verdict (mlpipe/signing.py): qa signs what it checked (the model, the digest of its
files, its own run id, passed or not) with a key that never enters the store, and a model is
trusted when its qa run's verdict is signed by a key in `trust.signers`, passed this very model
(the version's source), and the files downloaded now have the signed digest
(`training/model_io.load_model(..., expect_digest=...)`). The unsigned tags (`qa.passed`,
`qa.model_digest`) only make the refusals read better. docs/quality.md has the trust model.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlpipe.errors import ConfigError, UntrustedModelError, UpstreamError, one_line
from mlpipe import signing
from mlpipe.registry import versions
from mlpipe.run import handoff, outputs

QA_RUN_TAG = f"{outputs.LINEAGE_PREFIX}qa_run_id"  # on a version register made: the qa run behind it
VERDICT_TAG, SIGNATURE_TAG = "qa.verdict", "qa.verdict_signature"  # on a qa run: the signed statement


@dataclass(frozen=True)
class Trust:
    """Whose word counts: the keys that may sign verdicts, and under a team the gate experiment
    whose runs alone vouch (None: a model's own qa run)."""

    keyring: signing.Keyring
    gate_experiment: str | None = None


def trust_for(client: MlflowClient, tcfg, team=None) -> Trust:
    """The `trust` group's keys, or with `team` (the team's serving, report and promotion) the
    team gate's public key (`team.gate.public_key`, else the .pub beside `team.gate.key`) and its
    experiment; `trust.revoked` applies to both."""
    if team is None:
        return Trust(signing.keyring(tcfg))
    if not team.name or not team.gate.experiment:
        raise ConfigError("the team's serving, report and promotion need a team: team=<name> (docs/team.md)")
    public = team.gate.public_key
    try:
        keyring = signing.keyring({"signing_key": team.gate.key, "signers": [public] if public else [],
                                   "revoked": list(tcfg["revoked"] or [])})
    except ConfigError as exc:
        if public:
            raise
        raise ConfigError(f"no team gate key to check verdicts with: team.gate.public_key is null and there is no "
                          f"{team.gate.key}.pub; the lead's first gate run (mlflow run . -e gate) makes the key: "
                          "set team.gate.public_key to its public key (python -m mlpipe.registry.keys show)") from exc
    found = client.get_experiment_by_name(str(team.gate.experiment))
    if found is None:
        raise ConfigError(f"no experiment {team.gate.experiment!r} (team.gate.experiment) on the tracking server: "
                          "python -m mlpipe.team setup creates it, writable by the lead only")
    return Trust(keyring, found.experiment_id)


@dataclass(frozen=True)
class Validated:
    """A model qa validated: load `load_uri` expecting `digest`."""

    qa_run_id: str
    model_uri: str  # the logged model qa validated (models:/m-...)
    digest: str
    load_uri: str  # what to download: the version pinned when the URI named an alias
    version: str | None  # the registry version, when the URI named one



def validated(client: MlflowClient, model_uri: str, relax: str, keyring: signing.Keyring,
              gate_experiment: str | None = None) -> Validated:
    """The qa run that validated the model at `model_uri` (a registry version, `models:/m-...`
    or `runs:/<train run>/...`), checked to be a FINISHED qa run whose verdict, signed by a key
    of `keyring`, passed this very model and states its digest. Anything else is an
    UntrustedModelError naming what is missing and then `relax` (what the user can do instead);
    nothing has been downloaded yet. `gate_experiment` (a team's gate experiment id): the
    vouching run is the newest gate run there whose verdict `keyring` verifies for this model,
    whatever the version's own lineage says (a member's qa run does not vouch for the team)."""
    refused = f"refused, nothing loaded; {relax}"
    version, where, source, load_uri, number = _subject(client, model_uri, refused)
    if gate_experiment is not None:
        return _gate_validated(client, model_uri, where, source, load_uri, number, refused, keyring, gate_experiment)
    if version is not None:
        qa_run_id = (version.tags or {}).get(QA_RUN_TAG)
        if not qa_run_id:
            raise UntrustedModelError(f"{where} has no qa run ({QA_RUN_TAG}): it was not registered by this "
                                      f"pipeline's register step; {refused}")
    else:
        run = _validating_run(client, source)
        if run is None:
            raise UntrustedModelError(f"{model_uri}: no FINISHED qa run passed {source}; {refused}")
        qa_run_id = run.info.run_id
    run = _qa_run(client, qa_run_id, where, refused)
    verdict = signed_verdict(run, keyring, f"{where}: qa run {qa_run_id}", refused)
    if not verdict.passed:
        raise UntrustedModelError(f"{where}: qa run {qa_run_id} did not pass it "
                                  f"(failed: {verdict.failed_checks or 'unknown'}); {refused}")
    source_id = versions.logged_model_id(source)
    if source_id is None or versions.logged_model_id(verdict.model_uri) != source_id:
        raise UntrustedModelError(f"{where}: its source {source} is not the model qa run {qa_run_id} validated "
                                  f"({verdict.model_uri}); {refused}")
    return Validated(qa_run_id, verdict.model_uri, verdict.digest, load_uri, number)


def _subject(client: MlflowClient, model_uri: str, refused: str) -> tuple:
    """(the registry version or None, how to name it, its logged model `models:/m-...`, what to
    download, the version number or None) of a registry version, a logged model or a train run's URI."""
    parsed = versions.parse_model_uri(model_uri)
    if parsed is not None and versions.logged_model_id(model_uri) is None:
        version = _version(client, model_uri, parsed)
        return (version, f"{model_uri} (version {version.version} of {version.name})", version.source,
                f"models:/{version.name}/{version.version}", str(version.version))
    return None, model_uri, _logged_model(client, model_uri, refused), model_uri, None


def _gate_validated(client: MlflowClient, model_uri: str, where: str, source: str, load_uri: str, number: str | None,
                    refused: str, keyring: signing.Keyring, experiment_id: str) -> Validated:
    """The newest FINISHED gate run in the team's gate experiment whose verdict `keyring` verifies
    and which passed `source`."""
    reasons: list[str] = []
    passed: dict[str, signing.Verdict] = {}  # run id -> its verified verdict

    def vouches(run) -> bool:
        try:
            verdict = _verdict(run, keyring)
        except signing.VerdictError as exc:
            reasons.append(str(exc))
            return False
        if verdict.passed and versions.logged_model_id(verdict.model_uri) == versions.logged_model_id(source):
            passed[run.info.run_id] = verdict
            return True
        return False

    run = handoff.newest_finished_run(client, experiment_id, {outputs.STEP_TAG: "gate", outputs.MODEL_URI_TAG: source},
                                      accept=vouches)
    if run is None:
        why = f" (the newest: {reasons[0]})" if reasons else ""
        raise UntrustedModelError(f"{where}: no passing verdict of the team gate for {source}{why}: the lead (or CI) "
                                  f"runs `mlflow run . -e gate -P candidate={model_uri}`; {refused}")
    verdict = passed[run.info.run_id]
    return Validated(run.info.run_id, verdict.model_uri, verdict.digest, load_uri, number)


def _verdict(run, keyring: signing.Keyring) -> signing.Verdict:
    """The verdict on a run, verified against `keyring` and stated for this very run, else VerdictError."""
    tags = run.data.tags
    statement, signature = tags.get(VERDICT_TAG), tags.get(SIGNATURE_TAG)
    if not statement or not signature:
        raise signing.VerdictError(f"it has no {VERDICT_TAG} (qa ran before verdicts were signed, or did not "
                                   "sign: rerun qa)")
    verdict = signing.verify(statement, signature, keyring)
    if verdict.qa_run_id != run.info.run_id:
        raise signing.VerdictError(f"the verdict was signed for qa run {verdict.qa_run_id}, not this one")
    return verdict


def signed_verdict(run, keyring: signing.Keyring, where: str, refused: str) -> signing.Verdict:
    """`_verdict`, or an UntrustedModelError: "<where> has no verdict signed by a trusted key:
    <why>; <refused>"."""
    try:
        return _verdict(run, keyring)
    except signing.VerdictError as exc:
        raise UntrustedModelError(f"{where} has no verdict signed by a trusted key: {exc}; {refused}") from None


def verdict_tags(qa: outputs.QaOutput, run, tcfg, step: str = "qa") -> dict[str, str]:
    """qa's verdict on its own run (or the team gate's on its run: `step`), signed with
    `tcfg["signing_key"]` (created on first use, said on stderr): the tags to hand over with
    `qa`. `run` is the run as the harness tagged it (its config and code digests)."""
    key = signing.gate_key(tcfg, step)
    tags = run.data.tags
    verdict = signing.Verdict(model_uri=qa.model_uri, digest=qa.model_digest, qa_run_id=run.info.run_id,
                              experiment_id=run.info.experiment_id, passed=qa.passed, failed_checks=qa.failed_checks,
                              config_digest=tags.get(outputs.CONFIG_DIGEST_TAG, ""),
                              code_digest=tags.get(f"{outputs.LINEAGE_PREFIX}{step}_code_digest", ""),
                              signed_at=signing.now())
    statement, signature = signing.sign(verdict, key)
    return {VERDICT_TAG: statement, SIGNATURE_TAG: signature}


def check_files(model_uri: str, digest: str, what: str) -> None:
    """The files at `model_uri` still have the digest qa recorded, else an UntrustedModelError
    (downloaded, hashed, never loaded); `what` says what was not done."""
    from mlpipe.training import model_io

    found = model_io.model_digest(model_uri)
    if found != digest:
        raise UntrustedModelError(f"{model_uri}: its files changed since qa validated them (digest {found[:19]}, qa "
                                  f"recorded {digest[:19]}); {what}")


def _version(client: MlflowClient, model_uri: str, parsed):
    name, alias, ref = parsed
    if alias is None and ref in (None, "latest"):
        version = versions.latest(client, name)
    else:
        version = versions.version_for_uri(client, model_uri)
    if version is None:
        raise UpstreamError(f"{model_uri}: no such model version in the registry")
    return version


def _logged_model(client: MlflowClient, model_uri: str, refused: str) -> str:
    """`models:/m-...` of a logged model URI, or of a train run's `runs:/` URI (its handed-over model)."""
    if versions.logged_model_id(model_uri):
        return model_uri
    if model_uri.startswith("runs:/"):
        run_id = model_uri[len("runs:/"):].split("/")[0]
        try:
            return outputs.TrainOutput.from_run(client.get_run(run_id)).model_uri
        except (MlflowException, UpstreamError) as exc:
            raise UntrustedModelError(f"{model_uri} is not a model this pipeline's train step logged "
                                      f"({one_line(exc)[:200]}); {refused}") from exc
    raise UntrustedModelError(f"{model_uri} is not a registered version or a logged model, so no qa run can "
                              f"vouch for it; {refused}")


def _validating_run(client: MlflowClient, source: str):
    logged = versions.lookup(source, lambda: client.get_logged_model(versions.logged_model_id(source)))
    if logged is None:
        raise UpstreamError(f"{source}: no such logged model in the tracking store")
    return handoff.newest_finished_run(client, logged.experiment_id, {outputs.STEP_TAG: "qa", outputs.MODEL_URI_TAG: source,
                                                               "qa.passed": "true"})


def _qa_run(client: MlflowClient, qa_run_id: str, where: str, refused: str):
    run = versions.lookup(f"qa run {qa_run_id}", lambda: client.get_run(qa_run_id))
    if run is None:
        raise UntrustedModelError(f"{where}: its qa run {qa_run_id} is not in the tracking store; {refused}")
    if run.data.tags.get(outputs.STEP_TAG) != "qa" or run.info.status != "FINISHED":
        raise UntrustedModelError(f"{where}: run {qa_run_id} is not a FINISHED qa run "
                                  f"({run.data.tags.get(outputs.STEP_TAG)}, {run.info.status}); {refused}")
    try:
        qa = outputs.QaOutput.from_run(run)
    except UpstreamError as exc:
        raise UntrustedModelError(f"{where}: {one_line(exc)}; {refused}") from exc
    if not qa.passed:
        raise UntrustedModelError(f"{where}: qa run {qa_run_id} did not pass it "
                                  f"(failed: {qa.failed_checks or 'unknown'}); {refused}")
    return run
