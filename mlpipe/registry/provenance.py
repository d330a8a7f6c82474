"""Which qa run validated a model: the check serve, register and qa's champion comparison make
before anything in a model is loaded.

Tags are not proof (anyone who can write a model version can copy a validated version's tags), so
the check ties the gate to the model's bytes: qa records a digest of the files it loaded and
validated (`qa.model_digest`); a model is trusted when a FINISHED qa run passed the model it
names (the version's source) and the files downloaded now have that digest
(`training/model_io.load_model(..., expect_digest=...)`). docs/quality.md has the trust model.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlpipe.errors import UntrustedModelError, UpstreamError, one_line
from mlpipe.registry import versions
from mlpipe.run import handoff, outputs

QA_RUN_TAG = f"{outputs.LINEAGE_PREFIX}qa_run_id"  # on a version register made: the qa run behind it


@dataclass(frozen=True)
class Validated:
    """A model qa validated: load `load_uri` expecting `digest`."""

    qa_run_id: str
    model_uri: str  # the logged model qa validated (models:/m-...)
    digest: str
    load_uri: str  # what to download: the version pinned when the URI named an alias
    version: str | None  # the registry version, when the URI named one



def validated(client: MlflowClient, model_uri: str, relax: str) -> Validated:
    """The qa run that validated the model at `model_uri` (a registry version, `models:/m-...`
    or `runs:/<train run>/...`), checked to be a FINISHED qa run that passed this very model and
    recorded its digest. Anything else is an UntrustedModelError naming what is missing and then
    `relax` (what the user can do instead); nothing has been downloaded yet."""
    refused = f"refused, nothing loaded; {relax}"
    parsed = versions.parse_model_uri(model_uri)
    if parsed is not None and versions.logged_model_id(model_uri) is None:
        version = _version(client, model_uri, parsed)
        where = f"{model_uri} (version {version.version} of {version.name})"
        qa_run_id, source = (version.tags or {}).get(QA_RUN_TAG), version.source
        if not qa_run_id:
            raise UntrustedModelError(f"{where} has no qa run ({QA_RUN_TAG}): it was not registered by this "
                                      f"pipeline's register step; {refused}")
        load_uri, number = f"models:/{version.name}/{version.version}", str(version.version)
    else:
        source, where = _logged_model(client, model_uri, refused), model_uri
        run = _validating_run(client, source)
        if run is None:
            raise UntrustedModelError(f"{model_uri}: no FINISHED qa run passed {source}; {refused}")
        qa_run_id, load_uri, number = run.info.run_id, model_uri, None
    qa = _qa_output(client, qa_run_id, where, refused)
    source_id = versions.logged_model_id(source)
    if source_id is None or versions.logged_model_id(qa.model_uri) != source_id:
        raise UntrustedModelError(f"{where}: its source {source} is not the model qa run {qa_run_id} validated "
                                  f"({qa.model_uri}); {refused}")
    return Validated(qa_run_id, qa.model_uri, qa.model_digest, load_uri, number)


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


def _qa_output(client: MlflowClient, qa_run_id: str, where: str, refused: str) -> outputs.QaOutput:
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
    return qa
