"""`make demo` (`python -m mlpipe.team demo`): the team story end to end, through the real commands.

1. the demo team's authenticated MLflow server starts (a fresh state folder, a free port);
2. alice, bob and carol each run the pipeline under their own login with a different model, and
   alice, the lead, runs the team gate on each member's champion (it signs what the team serves);
3. the team's READ-only identity (team.reader) serves every member's champion as an A/B test
   (serve.team_variants), so that no member's code can act with a member's login, and synthetic
   traffic arrives: rows of the team evaluation set (held out of every member's training),
   their true labels sent back as feedback a few seconds later;
4. the A/B report is read while labels still arrive, then again as the lead with promotion on:
   the always-valid test lets both reads stand, and a winner is copied into the team model;
5. the team report is written (by the READ-only identity too); 6. everything started is stopped. It prints where to look.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


from mlpipe.run import processes
from mlpipe.run.outputs import STEP_TAG, TEAM_REPORT_DIR
from mlpipe.serving.smoke import free_port
from mlpipe.team import traffic

ROOT = Path(__file__).resolve().parents[2]


class Demo:
    """The demo's settings (conf/team/demo.yaml's `demo`), its state folder, server port and the
    environment its commands run with (no one's login), and how long each part took."""

    def __init__(self, state: Path, port: int, env: dict[str, str]):
        from mlpipe.config import compose

        self.state, self.port, self.env = state, port, env
        settings = compose(["team=demo", "team.member=${team.lead}"])
        self.settings = settings.team.demo
        self.reader, self.reader_experiment = str(settings.team.reader.user), str(settings.team.reader.experiment)
        self.data = " ".join(str(self.settings.data).split())
        self.model = compose(self.data.split()).registry.model_name  # what every member's data registers as
        self.team = ["--team", "demo", f"team.server.state_dir={state}", f"team.server.port={port}",
                     f"team.models=[{self.model}]"]
        self.started = time.monotonic()
        self.timings: dict[str, float] = {}

    def say(self, text: str) -> None:
        print(f"[demo {time.monotonic() - self.started:6.1f}s] {text}", flush=True)

    def cli(self, *args: str, check: bool = True, quiet: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "mlpipe.team", *args], cwd=ROOT, env=self.env, text=True,
                                capture_output=quiet, timeout=1800)
        if check and result.returncode != 0:
            raise SystemExit(f"error: demo: `python -m mlpipe.team {' '.join(args[:2])} ...` failed "
                             f"(exit {result.returncode}):\n{(result.stderr or '')[-3000:]}")
        return result

    def as_member(self, member: str, entry: str, overrides: str, *extra: str, check: bool = True):
        return self.cli("as", member, *self.team, "--", sys.executable, "-m", "mlflow", "run", ".", "-e", entry,
                        "--env-manager", "local", *extra, "-P", f"overrides={overrides}", check=check)

    def step(self, name: str, fn):
        began = time.monotonic()
        out = fn()
        self.timings[name] = round(time.monotonic() - began, 1)
        return out


def main(argv: list[str]) -> int:
    args = _arguments(argv)
    state = args.state_dir.expanduser().resolve()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_TRACKING", "MLFLOW_REGISTRY", "MLFLOW_EXPERIMENT", "MLPIPE_TEAM"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    demo = Demo(state, args.port or free_port("127.0.0.1"), env)
    records, data = state / "serve-records.db", demo.data
    try:
        demo.say(f"1/6 starting the demo team's MLflow server (state: {state})")
        demo.step("server start", lambda: demo.cli("start", *demo.team))
        for member, model in demo.settings.members.items():
            demo.say(f"2/6 {member} runs the pipeline ({model}) under their own login")
            demo.step(f"{member}'s pipeline", lambda: demo.as_member(
                member, "main", f"{data} {model}", "-P", "steps=ingest,preprocess,train,qa,register"))
        for member in demo.settings.members:
            demo.say(f"2/6 alice (the lead) runs the team gate on {member}'s champion")
            demo.step(f"gate on {member}", lambda: demo.as_member(
                "alice", "gate", data, "-P", f"candidate=models:/{demo.model}.{member}@champion",
                "--experiment-name", "demo/gate"))
        report = f"{data} serve.mode=report serve.experiment={demo.settings.experiment} serve.records={records}"
        _ab_test(demo, args, records, report)
        demo.say("4/6 alice (the lead) runs the A/B report with promotion on")
        result = demo.step("A/B report", lambda: demo.as_member("alice", "serve", f"{report} serve.ab.promote=true"))
        print("\n".join(ln for ln in result.stdout.splitlines() if not ln.startswith(("20", "\U0001f3c3", "\U0001f9ea"))),
              flush=True)
        demo.say("5/6 the team report")
        demo.step("team report", lambda: demo.as_member(demo.reader, "report", f"{data} serve.records={records}"))
        page = _download_report(demo)
        demo.say("6/6 done; stopping everything the demo started")
        print(f"\nwhere to look:\n  team report:   {page}\n  MLflow UI:     http://127.0.0.1:{demo.port} (stopped now; "
              f"start it again: python -m mlpipe.team start {' '.join(demo.team)})\n  credentials:   "
              f"{state / 'credentials.json'}\n  A/B records:   {records}\n  serve log:     {state / 'serve.log'}\n"
              f"  timings (s):   {json.dumps(demo.timings)}", flush=True)
    finally:
        demo.cli("stop", *demo.team, check=False)
    demo.say(f"the whole demo took {time.monotonic() - demo.started:.0f} s")
    return 0


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mlpipe.team demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--state-dir", type=Path, default=Path.home() / ".mlpipe" / "demo" / time.strftime("%Y%m%d-%H%M%S"))
    parser.add_argument("--port", type=int, default=0, help="the team server's port (0: a free one)")
    parser.add_argument("--serve-port", type=int, default=0, help="the model server's port (0: a free one)")
    # None: team.demo's setting (conf/team/demo.yaml)
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--rows-per-request", type=int, default=None)
    parser.add_argument("--feedback-delay-s", type=float, default=None)
    parser.add_argument("--rate", type=float, default=None, help="requests a second (0: back to back)")
    return parser.parse_args(argv)


def _ab_test(demo: Demo, args: argparse.Namespace, records: Path, report: str) -> None:
    """The READ-only identity serves every member's champion as an arm; traffic and labels arrive; carol reads the
    report half-way; the server is stopped (it drains and writes its records)."""
    serve_port = args.serve_port or free_port("127.0.0.1")
    demo.say(f"3/6 {demo.reader} (the team's READ-only login) serves every member's champion on "
             f"http://127.0.0.1:{serve_port} (an A/B test)")
    with (demo.state / "serve.log").open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlpipe.team", "as", demo.reader, *demo.team, "--", sys.executable, "-m", "mlflow",
             "run", ".", "-e", "serve", "--env-manager", "local", "-P",
             f"overrides={demo.data} serve.team_variants=true serve.port={serve_port} serve.records={records} "
             f"serve.experiment={demo.settings.experiment} serve.refresh_seconds=0"],
            cwd=ROOT, env=demo.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_for(serve_port, server, demo.state / "serve.log", float(demo.settings.serve_start_timeout_s))
            features, labels = _evaluation_set(demo.data)

            def interim() -> None:
                result = demo.as_member("carol", "serve", report, check=False)
                line = next((ln for ln in result.stdout.splitlines() if ln.startswith("A/B experiment")), "(no verdict)")
                demo.say(f"   half-way, carol reads the A/B report: {line}")

            requests, rows, delay, rate = (value if value is not None else demo.settings[key] for value, key in (
                (args.requests, "requests"), (args.rows_per_request, "rows_per_request"),
                (args.feedback_delay_s, "feedback_delay_s"), (args.rate, "rate")))
            demo.say(f"   traffic: {requests} requests of {rows} held-out rows, {rate:g} a second, true labels "
                     f"{delay:g} s later")
            sent = demo.step("traffic", lambda: traffic.replay(
                f"http://127.0.0.1:{serve_port}", features, labels, requests=requests, seconds=None, rate=rate,
                rows_per_request=rows, delay_s=delay, seed=0, on_half=interim))
            demo.say(f"   requests per arm: {dict(sent.arms)} (python -m mlpipe.team traffic sends the same)")
        finally:
            # SIGTERM: it drains and writes its records
            processes.stop_group(server.pid, timeout=float(demo.settings.serve_stop_timeout_s))


def _evaluation_set(data: str):
    """The team evaluation set (rows no member trained on: data.holdout_fraction)."""
    from mlpipe.config import compose
    from mlpipe.team.report import holdout

    cfg = compose(["team=demo", "team.member=alice", *data.split()])
    return holdout(cfg.data)


def _wait_for(port: int, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"error: demo: the model server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"error: demo: the model server did not answer on port {port} in {timeout:.0f} s")


def _download_report(demo: Demo) -> Path:
    """The team report page from the newest report run of the READ-only identity, into the state folder."""
    script = ("import mlflow, sys; c = mlflow.MlflowClient(); "
              f"e = c.get_experiment_by_name({demo.reader_experiment!r}); "
              f"r = c.search_runs([e.experiment_id], \"tags.`{STEP_TAG}` = 'report'\", "
              "order_by=['attributes.start_time DESC'], max_results=1)[0]; "
              f"print(c.download_artifacts(r.info.run_id, {TEAM_REPORT_DIR!r}, {str(demo.state)!r}))")
    result = demo.cli("as", demo.reader, *demo.team, "--", sys.executable, "-c", script)
    return Path(result.stdout.strip().splitlines()[-1]) / "index.html"
