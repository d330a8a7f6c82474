"""The team's members on the server: users with generated passwords (kept in the credentials
file, mode 0600), one experiment per member, the team's models and who may change them.

Permissions (MLflow's basic-auth: READ < EDIT < MANAGE; everyone else gets READ):
- `<team>/<member>` experiment: MANAGE for the member (their pipeline's runs);
- `<model>.<member>`: MANAGE for the member, who registers into it and moves its aliases;
- `<model>` (the team's model and its champion): MANAGE for the lead only;
- `<team>/gate` experiment (team.gate.experiment): MANAGE for the lead, whose gate runs sign verdicts;
- `<team>/reader` experiment (team.reader.experiment): EDIT for the team's READ-only identity
  (team.reader.user), whose serving and report runs go there; it has READ on everything else.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from typing import Iterator

from mlflow.exceptions import MlflowException

from mlpipe.errors import AccessDeniedError, ConfigError, StorageError, one_line
from mlpipe.registry import versions
from mlpipe.team import server

CREDENTIAL_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def names(team) -> list[str]:
    return [str(m["name"]) for m in team.members]


def experiment_name(team, member: str) -> str:
    return f"{team.name}/{member}"


@contextlib.contextmanager
def logged_in(user: str, password: str) -> Iterator[None]:
    """MLflow's clients read the login from the environment at each request."""
    saved = {key: os.environ.get(key) for key in CREDENTIAL_ENV}
    os.environ.update(dict(zip(CREDENTIAL_ENV, (user, password))))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def identities(team) -> list[str]:
    """Who logs in: the members, and the team's READ-only identity (team.reader.user) if it has one."""
    return names(team) + ([str(team.reader.user)] if team.reader.user else [])


def member_env(team, member: str) -> dict[str, str]:
    """The environment a member's commands run with: the server, their login, their experiment,
    the team (MLPIPE_TEAM: config compose adds team=<name>). The READ-only identity's experiment
    is team.reader.experiment."""
    if member not in identities(team):
        raise ConfigError(f"{member!r} is not a member of team {team.name} (conf/team/{team.name}.yaml): "
                          f"{', '.join(names(team))}" + (f"; or {team.reader.user}, its READ-only identity"
                                                         if team.reader.user else ""))
    creds = server.credentials(server.paths(team.server))
    if member not in creds:
        raise ConfigError(f"no password for {member} in {server.paths(team.server).credentials}: start the team "
                          f"server first (make team-server TEAM={team.name})")
    return {"MLFLOW_TRACKING_URI": server.url(team.server), "MLFLOW_REGISTRY_URI": server.url(team.server),
            "MLFLOW_TRACKING_USERNAME": member,
            "MLFLOW_TRACKING_PASSWORD": creds[member],
            "MLFLOW_EXPERIMENT_NAME": str(team.reader.experiment) if member == team.reader.user
            else experiment_name(team, member),
            "MLPIPE_TEAM": str(team.name)}


def setup(team) -> dict[str, str]:
    """Creates what is missing (users, experiments, models, grants); safe to run again. Returns
    the experiment id per member."""
    from mlflow import MlflowClient
    from mlflow.server import get_app_client

    where = server.paths(team.server)
    creds = server.credentials(where)
    uri = server.url(team.server)
    experiments = {}
    with logged_in(server.ADMIN, creds[server.ADMIN]):
        auth, client = get_app_client("basic-auth", tracking_uri=uri), MlflowClient(uri, registry_uri=uri)
        for member in identities(team):  # a password already in the file (deploy/team's reader) is kept
            fresh = member not in creds
            if fresh:
                creds[member] = secrets.token_urlsafe(18)
                server.save_credentials(where, creds)
            _create_user(auth, member, creds[member], reset=fresh)
        for member in names(team):
            experiments[member] = _experiment(client, experiment_name(team, member))
            _grant(auth, member, "experiment", experiments[member])
        if team.gate.experiment:  # the team gate's runs (docs/team.md#the-team-gate): the lead's alone
            _grant(auth, team.lead, "experiment", _experiment(client, str(team.gate.experiment)))
        if team.reader.user:  # the team's serving and report runs: EDIT there, the server's READ elsewhere
            _grant(auth, str(team.reader.user), "experiment", _experiment(client, str(team.reader.experiment)),
                   "EDIT")
        for model in team.models:
            for name, owner in [(model, team.lead)] + [(f"{model}.{m}", m) for m in names(team)]:
                if versions.lookup(f"registered model {name}", lambda: client.get_registered_model(name)) is None:
                    client.create_registered_model(name, tags={"team.owner": owner, "team.name": str(team.name)})
                _grant(auth, owner, "registered_model", name)
    return experiments


def _experiment(client, name: str) -> str:
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found else client.create_experiment(name)


def _grant(auth, user: str, kind: str, resource: str, permission: str = "MANAGE") -> None:
    """`permission` on the resource for the user, kept as it is when granted at an earlier start."""
    try:
        auth.grant_user_permission(user, kind, resource, permission)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _create_user(auth, user: str, password: str, reset: bool) -> None:
    """The user, created with `password`; one that exists keeps theirs unless `reset` (a password
    new to the credentials file: the file was lost, so the old one is unknown)."""
    try:
        auth.create_user(user, password)
    except MlflowException as exc:
        if "already exists" not in str(exc):
            raise
        if reset:
            auth.update_user_password(user, password)


def check_login(uri: str) -> None:
    """One authenticated request with the login in the environment; a refused login is an
    AccessDeniedError before anything runs."""
    from mlflow import MlflowClient

    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except MlflowException as exc:
        if "401" in str(exc):
            raise AccessDeniedError(f"the MLflow server at {uri} refused the login of user {user!r} (HTTP 401): "
                                    "wrong password or no such user; check MLFLOW_TRACKING_USERNAME / "
                                    "MLFLOW_TRACKING_PASSWORD or ~/.mlflow/credentials") from None
        raise StorageError(f"the MLflow server at {uri} did not answer the login check "
                           f"({one_line(exc)[:300]}); is it running (python -m mlpipe.team status)? The wait is "
                           "bounded by storage.http (timeout, max_retries, backoff_factor)") from None


def champions(client, team, alias: str) -> list[dict]:
    """Every member's current `<model>.<member>@<alias>` as serve variants named after the member
    (weight 1 each); a member without one is left out and said on stderr."""
    import sys

    if not team.name:
        raise ConfigError("serve.team_variants=true needs a team (team=<name>, docs/team.md)")
    found, missing = [], []
    for member in names(team):
        name = f"{team.shared_model}.{member}"
        if versions.current(client, name, alias) is None:
            missing.append(member)
        else:
            found.append({"name": member, "model_uri": f"models:/{name}@{alias}", "weight": 1.0})
    if missing:
        print(f"[mlpipe] serve: no {team.shared_model}.<member>@{alias} yet for {', '.join(missing)}: not served",
              file=sys.stderr, flush=True)
    if not found:
        raise ConfigError(f"serve.team_variants=true: no member of team {team.name} has a {team.shared_model}.<member>"
                          f"@{alias} yet; run a member's pipeline first")
    return found
