"""`python -m mlpipe.team <command> [--team demo] [overrides...]`, the team's day-one commands:

  start          start the team server (SQLite or team.server.backend_store_uri), create the
                 members' users, experiments and models; prints the address
  stop           stop it
  setup          create the members' users, experiments and models on a server that runs
                 elsewhere (a cluster's, deploy/team): at team.server's address, with the admin
                 password in the credentials file
  status         running or not, the address, the members
  as <member> [overrides...] -- <command...>
                 run a command logged in as a member (their password from the credentials file,
                 their experiment, team=<name>); checks the login first. `as reader` (team.reader.user):
                 the team's READ-only identity, which runs the team's serving and report
  traffic --url URL [--requests N | --seconds T] [--rate R] [overrides...]
                 replay rows of a dataset against a running model server, true labels sent as
                 feedback a delay later (mlpipe/team/traffic.py)
  demo [--requests N ...]
                 the whole team story with three members, end to end (mlpipe/team/demo.py)
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from mlpipe.config import compose
from mlpipe.errors import ConfigError, PipelineError, one_line
from mlpipe.run import lifecycle
from mlpipe.team import members, server


def main(argv: list[str]) -> int:
    command = argv[argv.index("--") + 1:] if "--" in argv else []
    head = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="python -m mlpipe.team", description=__doc__.split("\n\n")[0],
                                     usage="python -m mlpipe.team {start,stop,status,setup,as <member>,traffic,demo} "
                                           "[--team NAME] [overrides...] [-- command...]")
    parser.add_argument("command", choices=("start", "stop", "status", "setup", "as", "traffic", "demo"))
    parser.add_argument("--team", default=os.environ.get("MLPIPE_TEAM", "demo"))
    args, rest = parser.parse_known_args(head)
    if args.command == "demo":
        from mlpipe.team import demo

        return demo.main(rest)
    try:
        if args.command == "traffic":  # a team's held-out rows only when --team is given
            from mlpipe.team import traffic

            return traffic.main(rest + ([f"team={args.team}"] if "--team" in head else []))
        if args.command == "as":
            return run_as(args.team, rest, command)
        cfg = compose([f"team={args.team}", "team.member=${team.lead}", *rest])
        lifecycle.apply_client_settings(cfg)  # storage.http: a server that does not answer fails fast
        team = cfg.team
        again = shlex.join(["--team", str(team.name), *where_overrides(rest)])  # what reaches this server again
        where = server.paths(team.server)
        if args.command == "start":
            where, started = server.start(team.server)
            members.setup(team)
            print(f"team {team.name}: MLflow server {'started' if started else 'already running'} at "
                  f"{server.url(team.server)} (UI and API; state {where.root}, log {where.log})\n"
                  f"members: {', '.join(members.names(team))} (lead: {team.lead}); passwords in {where.credentials}\n"
                  f"run as a member:  python -m mlpipe.team as <member> {again} -- mlflow run . -e main "
                  "--env-manager local\n"
                  + (f"team report:      python -m mlpipe.team as {team.reader.user} {again} -- mlflow run . -e "
                     "report --env-manager local  (the READ-only identity: team.reader)\n" if team.reader.user else "")
                  + f"status:           python -m mlpipe.team status {again}\n"
                  f"stop it:          python -m mlpipe.team stop {again}")
        elif args.command == "setup":
            if server.ADMIN not in server.credentials(where):
                raise ConfigError(f"team {team.name}: no {server.ADMIN} password in {where.credentials}; write the "
                                  f'server\'s there first ({{"{server.ADMIN}": "<password>"}}, mode 0600; '
                                  "docs/kubernetes.md)")
            server.probe(team.server)
            members.setup(team)
            print(f"team {team.name}: members {', '.join(members.names(team))} (lead: {team.lead}) set up on "
                  f"{server.url(team.server)}; passwords in {where.credentials}")
        elif args.command == "stop":
            address = server.recorded_url(where) or server.url(team.server)
            print(f"team {team.name}: server at {address} (state {where.root}) "
                  f"{'stopped' if server.stop(team.server) else 'was not running: nothing to stop'}")
        else:
            print(status_line(team, where))
        return 0
    except PipelineError as exc:
        print(f"error: team: {type(exc).__name__}: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code


# The overrides that say which server a command reaches: the ones the start message repeats in
# the commands it prints (never the others: team.server.backend_store_uri may hold a password).
WHERE_KEYS = ("team.server.state_dir", "team.server.host", "team.server.port")


def where_overrides(overrides: list[str]) -> list[str]:
    return [o for o in overrides if o.lstrip("+~").split("=", 1)[0] in WHERE_KEYS]


def status_line(team, where) -> str:
    """Which server this state dir holds, where it runs, whether it answers; the members."""
    pid, configured = server.running_pid(where), server.url(team.server)
    crew = f"members: {', '.join(members.names(team))} (lead: {team.lead})"
    if not pid:
        return f"team {team.name}: no server running from state {where.root} (it would run at {configured}); {crew}"
    address = server.recorded_url(where) or configured
    try:
        server.probe(team.server, address)
        health = "answering"
    except PipelineError as exc:
        health = f"not answering: {one_line(exc)}"
    moved = "" if address == configured else f" (not at {configured}: team.server.host/port differ from its start)"
    return f"team {team.name}: server running (pid {pid}) at {address}{moved}, {health}; state {where.root}; {crew}"


def run_as(team_name: str, rest: list[str], command: list[str]) -> int:
    if not rest or not command:
        raise SystemExit("usage: python -m mlpipe.team as <member> [--team NAME] [overrides...] -- <command...>")
    member, overrides = rest[0], rest[1:]
    cfg = compose([f"team={team_name}", f"team.member={member}", *overrides])
    lifecycle.apply_client_settings(cfg)  # for the login check here, and the command's own calls after it
    team = cfg.team
    env = members.member_env(team, member)
    server.probe(team.server)  # a server that does not answer: one line in seconds
    os.environ.update(env)
    members.check_login(env["MLFLOW_TRACKING_URI"])
    os.execvp(command[0], command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
