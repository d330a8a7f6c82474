"""Wall-time benchmark of `mlflow run . -e main`, side by side with a no-op floor.

Scenarios (each `mlflow run ... --env-manager local` (or --env-manager), timed from outside as a
subprocess):

  noop    benchmarks/floor -e noop        `mlflow run` of an entry point whose command is `true`
  client  benchmarks/floor -e client      `mlflow run` of Python importing MLflow, opening the store,
                                          reading its run: what any Python driver pays at least
  floor   benchmarks/floor -e main        the same seven entry points and mlflow.run chain, no-op steps
  cold    . -e main                       default config (wine), fresh tracking store
  cached  . -e main                       again, same store as cold: every step should be reused
  own     . -e main -P overrides=main.warm_steps=false   (--own) cold, every step in its own process
  sweep3  . -e main -P overrides="-m model.n_estimators=50,100,200"   fresh store

Every fresh store is a new temp dir with MLFLOW_TRACKING_URI=sqlite:////<dir>/mlflow.db, created
(migrated) once before the measured command so that command does not pay the migration.
noop/client/floor/cold/cached run --repeat times, interleaved; the report uses medians. The sweep
runs once.

Targets (issue 14): cold/floor <= 1.0, cached/cold <= 0.25, sweep3/cold <= 1.5; (issue 24)
cached/noop <= 1.5, with client/noop beside it: the least a Python driver on MLflow's client costs. A miss is
reported, not an error: the exit code is non-zero only when a command fails. With --env-manager
uv or virtualenv, one untimed run of each project first creates the environment.

    .venv/bin/python benchmarks/bench_pipeline.py [--repeat 3] [--quick] [--own] [--env-manager uv] [--keep-stores]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
PROJECT = BENCH_DIR.parent
FLOOR = BENCH_DIR / "floor"
RESULTS = BENCH_DIR / "results"
STEPS = ("ingest", "preprocess", "train", "qa", "register", "serve")
SWEEP_OVERRIDES = "-m model.n_estimators=50,100,200"
TARGETS = {  # ratio name -> (numerator, denominator, maximum)
    "cached/noop": ("cached", "noop", 1.5),
    "client/noop": ("client", "noop", None),  # the floor of cached/noop for a driver in Python on MLflow
    "cold/floor": ("cold", "floor", 1.0),
    "cached/cold": ("cached", "cold", 0.25),
    "sweep3/cold": ("sweep3", "cold", 1.5),
    "cold/own": ("cold", "own", None),  # warm steps against main.warm_steps=false (--own): no target
}
# Steps each scenario is expected to execute (new runs of that entry point), the rest being reused.
EXPECTED_EXECUTED = {
    "cold": {s: 1 for s in STEPS},
    "cached": {s: 0 for s in STEPS},
    "own": {s: 1 for s in STEPS},
    "sweep3": {"ingest": 1, "preprocess": 1, "train": 3, "qa": 3, "register": 1, "serve": 1},
}
# Inherited variables that would point a measured run at someone else's run or experiment.
SCRUB_ENV = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLPIPE_SWEEP_RUN_ID",
             "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_ARTIFACT_URI", "MLPIPE_WARM_SOCKET")


class CommandFailed(Exception):
    pass


# -- running ---------------------------------------------------------------------------------------
def base_env(uri: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUB_ENV}
    bindir = os.path.dirname(sys.executable)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["MLFLOW_TRACKING_URI"] = uri
    env["PYTHONUNBUFFERED"] = "1"
    return env


def new_store(stores: Path, name: str) -> tuple[Path, str]:
    """A fresh, already migrated sqlite store (its default artifact root lands in the same dir)."""
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=stores))
    uri = f"sqlite:///{path / 'mlflow.db'}"
    init = [sys.executable, "-c", "import mlflow; mlflow.MlflowClient().search_experiments()"]
    proc = subprocess.run(init, cwd=path, env=base_env(uri), capture_output=True, text=True)
    if proc.returncode != 0:
        raise CommandFailed(f"creating store {uri} failed:\n{proc.stderr[-3000:]}")
    return path, uri


def timed(label: str, cmd: list[str], cwd: Path, uri: str, logs: Path, timeout: float) -> dict[str, Any]:
    out, err = logs / f"{label}.stdout.log", logs / f"{label}.stderr.log"
    print(f"  running {label:<12} ...", end="", flush=True)
    with open(out, "w") as fo, open(err, "w") as fe:
        started = time.perf_counter()
        try:
            rc = subprocess.run(cmd, cwd=cwd, env=base_env(uri), stdout=fo, stderr=fe, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        seconds = time.perf_counter() - started
    print(f" {seconds:7.1f} s" + ("" if rc == 0 else f"  FAILED (rc={rc})"), flush=True)
    record = {"label": label, "cmd": cmd, "cwd": str(cwd), "tracking_uri": uri, "seconds": round(seconds, 3),
              "rc": rc, "stdout": str(out), "stderr": str(err)}
    if rc != 0:
        tail = err.read_text()[-3000:]
        raise CommandFailed(f"{label} failed (rc={rc}): {' '.join(cmd)}\n  logs: {out}\n        {err}\n"
                            f"--- stderr tail ---\n{tail}")
    return record


ENV_MANAGER = ["local"]  # set from --env-manager


def mlflow_run(project: str, extra: list[str] = (), entry: str = "main") -> list[str]:
    return [os.path.join(os.path.dirname(sys.executable), "mlflow"), "run", project, "-e", entry,
            "--env-manager", ENV_MANAGER[0], *extra]


# -- reading the store -----------------------------------------------------------------------------
def client_for(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def all_runs(uri: str) -> list:
    from mlflow.entities import ViewType

    client = client_for(uri)
    exps = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return client.search_runs(exps, run_view_type=ViewType.ALL, max_results=50000) if exps else []


def executed_steps(uri: str, before: set[str]) -> tuple[dict[str, int], list[str]]:
    """Runs created since `before` per step entry point, and any of them that did not finish."""
    counts = {s: 0 for s in STEPS}
    unfinished = []
    for run in all_runs(uri):
        if run.info.run_id in before:
            continue
        entry = run.data.tags.get("mlflow.project.entryPoint")
        if entry in counts:
            counts[entry] += 1
        if run.info.status != "FINISHED":
            unfinished.append(f"{run.info.run_id} {run.data.tags.get('mlflow.runName', '?')} {run.info.status}")
    return counts, unfinished


def run_ids(uri: str) -> set[str]:
    return {r.info.run_id for r in all_runs(uri)}


def read_summary(uri: str, run_id: str) -> list[dict[str, Any]]:
    client = client_for(uri)
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(client.download_artifacts(run_id, "pipeline_summary.json", tmp)).read_text())


def newest_run(uri: str, role: str):
    client = client_for(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps, filter_string=f"tags.`pipeline.role` = '{role}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def safe(fn, *args) -> dict[str, Any]:
    """Reading the store is reporting: a problem there is reported, it does not end the benchmark."""
    try:
        return fn(*args)
    except Exception as exc:
        return {"error": f"{fn.__name__}: {type(exc).__name__}: {exc}"}


def pipeline_breakdown(uri: str, total: float) -> dict[str, Any]:
    """Where a main run's time went, from its parent run's pipeline_summary.json."""
    parent = newest_run(uri, "pipeline")
    if parent is None:
        return {"error": "no run tagged pipeline.role=pipeline"}
    rows = []
    for item in read_summary(uri, parent.info.run_id):
        inside = item.get("metrics", {}).get("step.wall_s")
        rows.append({"step": item["step"], "outcome": item["outcome"], "run_id": item["run_id"],
                     "driver_s": round(item["seconds"], 3),
                     "inside_s": inside,
                     "launch_overhead_s": None if inside is None or item["outcome"] != "ran"
                     else round(item["seconds"] - inside, 3),
                     "cpu_s": item.get("metrics", {}).get("step.cpu_s"),
                     "peak_rss_mb": item.get("metrics", {}).get("step.peak_rss_mb")})
    steps_sum = sum(r["driver_s"] for r in rows)
    main_inside = parent.data.metrics.get("step.wall_s")
    return {"parent_run_id": parent.info.run_id, "total_s": round(total, 3), "steps": rows,
            "sum_step_driver_s": round(steps_sum, 3),
            "driver_overhead_s": round(total - steps_sum, 3),
            "main_process_wall_s": main_inside,
            # total = (mlflow CLI + main process start + Hydra compose) + main's harness time
            "main_outside_harness_s": None if main_inside is None else round(total - main_inside, 3)}


def sweep_breakdown(uri: str) -> dict[str, Any]:
    sweep = newest_run(uri, "sweep")
    if sweep is None:
        return {"error": "no run tagged pipeline.role=sweep"}
    client = client_for(uri)
    jobs = client.search_runs([sweep.info.experiment_id],
                              filter_string=f"tags.`pipeline.sweep_run_id` = '{sweep.info.run_id}'",
                              order_by=["attributes.start_time ASC"], max_results=1000)
    out = {"sweep_run_id": sweep.info.run_id, "best_job_run_id": sweep.data.tags.get("sweep.best_job_run_id"),
           "best_overrides": sweep.data.tags.get("sweep.best_overrides"), "jobs": []}
    for job in jobs:
        try:
            summary = read_summary(uri, job.info.run_id)
        except Exception as exc:  # a failed job may have no summary
            summary = [{"step": "?", "outcome": f"no summary ({type(exc).__name__})", "seconds": 0}]
        out["jobs"].append({"job": job.data.tags.get("pipeline.job_num"), "run_id": job.info.run_id,
                            "status": job.info.status, "overrides": job.data.tags.get("pipeline.overrides"),
                            "steps": [{k: s.get(k) for k in ("step", "outcome", "seconds")} for s in summary]})
    try:
        after = read_summary(uri, sweep.info.run_id)
        out["after_sweep"] = [{k: s.get(k) for k in ("step", "outcome", "seconds")} for s in after]
    except Exception as exc:
        out["after_sweep"] = f"no summary ({type(exc).__name__})"
    return out


def scan_logs(records: list[dict[str, Any]]) -> list[str]:
    """Lines in the logs that look like trouble (tracebacks, errors), first few per log."""
    needles = ("Traceback", "Error", "error:", "WARNING", "Warning")
    found = []
    for rec in records:
        for key in ("stdout", "stderr"):
            hits = [line.strip() for line in Path(rec[key]).read_text(errors="replace").splitlines()
                    if any(n in line for n in needles)]
            if hits:
                found.append(f"{Path(rec[key]).name}: {len(hits)} line(s), e.g. {hits[0][:200]}")
    return found


# -- main ------------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=1, help="floor/cold/cached trios, interleaved (median)")
    parser.add_argument("--quick", action="store_true", help="skip the sweep3 scenario")
    parser.add_argument("--keep-stores", action="store_true", help="keep the temp tracking stores")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per command")
    parser.add_argument("--own", action="store_true", help="also a cold run with main.warm_steps=false per trio")
    parser.add_argument("--env-manager", default="local", choices=("local", "uv", "virtualenv"),
                        help="the env manager of every command (uv/virtualenv: the env is created untimed first)")
    args = parser.parse_args()
    ENV_MANAGER[0] = args.env_manager
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    outdir = RESULTS / stamp
    logs = outdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stores = Path(tempfile.mkdtemp(prefix="mlpipe-bench-"))
    print(f"results: {outdir}\nstores:  {stores}\nload average at start: {os.getloadavg()}")
    git = git_info()
    print(f"project: commit {git['commit'][:10]}{' + uncommitted changes' if git['dirty'] else ''}")

    report: dict[str, Any] = {
        "timestamp": stamp, "python": sys.version.split()[0], "platform": platform.platform(),
        "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(), "repeat": args.repeat, "quick": args.quick,
        "env_manager": args.env_manager, "git": git, "tree_start": tree_fingerprint(),
        "runs": {"noop": [], "client": [], "floor": [], "cold": [], "cached": [], "own": [], "sweep3": []},
        "cold_breakdowns": [], "cached_breakdowns": [], "executed": {}, "checks": [],
    }
    try:
        import mlflow

        report["mlflow"] = mlflow.__version__
    except ImportError:
        pass
    failed = None
    try:
        if args.env_manager != "local":  # creating the environment is not what is measured
            print(f"creating the {args.env_manager} environments (untimed)")
            _, uri = new_store(stores, "envs")
            timed("env-floor", mlflow_run("."), FLOOR, uri, logs, args.timeout)
            timed("env-project", mlflow_run(".", ["-P", "overrides=data=iris"], entry="ingest"), PROJECT, uri, logs,
                  args.timeout)
        for i in range(1, args.repeat + 1):
            print(f"trio {i}/{args.repeat}")
            _, uri = new_store(stores, f"noop{i}")
            for name in ("noop", "client"):
                report["runs"][name].append(timed(f"{name}-{i}", mlflow_run(".", entry=name), FLOOR, uri, logs,
                                                  args.timeout))
            _, uri = new_store(stores, f"floor{i}")
            report["runs"]["floor"].append(timed(f"floor-{i}", mlflow_run("."), FLOOR, uri, logs, args.timeout))

            _, uri = new_store(stores, f"main{i}")
            rec = timed(f"cold-{i}", mlflow_run("."), PROJECT, uri, logs, args.timeout)
            report["runs"]["cold"].append(rec)
            report["cold_breakdowns"].append(safe(pipeline_breakdown, uri, rec["seconds"]))
            counts, unfinished = executed_steps(uri, set())
            check(report, f"cold-{i}", counts, unfinished)

            before = run_ids(uri)
            rec = timed(f"cached-{i}", mlflow_run("."), PROJECT, uri, logs, args.timeout)
            report["runs"]["cached"].append(rec)
            report["cached_breakdowns"].append(safe(pipeline_breakdown, uri, rec["seconds"]))
            counts, unfinished = executed_steps(uri, before)
            check(report, f"cached-{i}", counts, unfinished)

            if args.own:
                _, uri = new_store(stores, f"own{i}")
                rec = timed(f"own-{i}", mlflow_run(".", ["-P", "overrides=main.warm_steps=false"]), PROJECT, uri,
                            logs, args.timeout)
                report["runs"]["own"].append(rec)
                report.setdefault("own_breakdowns", []).append(safe(pipeline_breakdown, uri, rec["seconds"]))
                counts, unfinished = executed_steps(uri, set())
                check(report, f"own-{i}", counts, unfinished)

        if not args.quick:
            print("sweep")
            _, uri = new_store(stores, "sweep")
            rec = timed("sweep3", mlflow_run(".", ["-P", f"overrides={SWEEP_OVERRIDES}"]), PROJECT, uri, logs,
                        args.timeout)
            report["runs"]["sweep3"].append(rec)
            report["sweep"] = safe(sweep_breakdown, uri)
            counts, unfinished = executed_steps(uri, set())
            check(report, "sweep3", counts, unfinished)
    except CommandFailed as exc:
        failed = str(exc)
        report["failed"] = failed
    report["loadavg_end"] = os.getloadavg()
    report["tree_end"] = tree_fingerprint()
    if report["tree_end"] != report["tree_start"]:
        report["checks"].append("the project's code/config CHANGED during the benchmark (someone edited it): "
                                "timings and cache reuse may mix two versions; rerun")
    all_records = [r for recs in report["runs"].values() for r in recs]
    report["log_findings"] = scan_logs(all_records)

    medians = {name: statistics.median(r["seconds"] for r in recs) for name, recs in report["runs"].items() if recs}
    report["median_s"] = {k: round(v, 3) for k, v in medians.items()}
    report["ratios"] = {}
    for name, (num, den, target) in TARGETS.items():
        if num in medians and den in medians and medians[den] > 0:
            value = medians[num] / medians[den]
            report["ratios"][name] = {"value": round(value, 3), "target": target,
                                      "verdict": "" if target is None else "PASS" if value <= target else "MISS"}

    print_report(report)
    path = outdir / "results.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nresults JSON: {path}")
    if args.keep_stores:
        print(f"tracking stores kept in {stores}")
    else:
        shutil.rmtree(stores, ignore_errors=True)
    if failed:
        print(f"\nA COMMAND FAILED:\n{failed}", file=sys.stderr)
        return 1
    return 0


def check(report: dict[str, Any], label: str, counts: dict[str, int], unfinished: list[str]) -> None:
    """Compare the step runs a scenario created with what it should have created."""
    report["executed"][label] = counts
    expected = EXPECTED_EXECUTED[label.split("-")[0]]
    wrong = {s: (counts[s], expected[s]) for s in STEPS if counts[s] != expected[s]}
    if wrong:
        report["checks"].append(f"{label}: step runs executed (got, expected): "
                                + ", ".join(f"{s} {g} vs {e}" for s, (g, e) in wrong.items()))
    if unfinished:
        report["checks"].append(f"{label}: runs not FINISHED: " + "; ".join(unfinished))


def tree_fingerprint() -> str:
    """sha256 of what the pipeline runs (code, config, env files): an edit mid-benchmark changes
    cache keys, so numbers from before and after it are not comparable."""
    import hashlib

    sha = hashlib.sha256()
    files = [p for d in ("mlpipe", "steps", "conf") for p in sorted((PROJECT / d).rglob("*"))
             if p.is_file() and "__pycache__" not in p.parts]
    files += [PROJECT / n for n in ("MLproject", "python_env.yaml") if (PROJECT / n).is_file()]
    for path in files:
        sha.update(str(path.relative_to(PROJECT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return sha.hexdigest()[:16]


def git_info() -> dict[str, Any]:
    def git(*a: str) -> str:  # read-only queries
        p = subprocess.run(["git", *a], cwd=PROJECT, capture_output=True, text=True)
        return p.stdout.strip() if p.returncode == 0 else ""

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def fmt(v: Any, spec: str = "7.2f") -> str:
    return "-" if v is None else format(v, spec)


def print_breakdown(scenario: str, breakdowns: list, runs: list, median: float) -> None:
    """Per step, of the repeat whose time is closest to the median: driver, inside and launch seconds."""
    idx = min(range(len(breakdowns)), key=lambda i: abs(runs[i]["seconds"] - median))
    b = breakdowns[idx]
    print(f"\n== where the {scenario} run's time goes ({scenario}-{idx + 1}, {b.get('total_s', 0):.1f} s total) ==")
    if "error" in b:
        print(f"  {b['error']}")
        return
    print(f"{'step':<11} {'outcome':<7} {'driver s':>8} {'in-step s':>9} {'launch s':>8} {'cpu s':>7} {'rss MB':>7}")
    for r in b["steps"]:
        print(f"{r['step']:<11} {r['outcome']:<7} {r['driver_s']:8.2f} {fmt(r['inside_s'], '9.2f')} "
              f"{fmt(r['launch_overhead_s'], '8.2f')} {fmt(r['cpu_s'])} {fmt(r['peak_rss_mb'], '7.1f')}")
    inside = sum(r["inside_s"] or 0 for r in b["steps"])
    launch = sum(r["launch_overhead_s"] or 0 for r in b["steps"])
    print(f"{'sum':<11} {'':<7} {b['sum_step_driver_s']:8.2f} {inside:9.2f} {launch:8.2f}")
    print(f"driver overhead (total - sum of step seconds): {b['driver_overhead_s']:.2f} s")
    if b.get("main_process_wall_s") is not None:
        print(f"  of which outside main's harness (mlflow CLI, process start, imports, Hydra): "
              f"{b['main_outside_harness_s']:.2f} s; main harness wall {b['main_process_wall_s']:.2f} s")


def print_report(report: dict[str, Any]) -> None:
    med = report["median_s"]
    n = report["repeat"]
    print(f"\n== wall time (median of {n} for noop/client/floor/cold/cached/own; sweep3 once; --env-manager "
          f"{report['env_manager']}) ==")
    print(f"{'scenario':<10} {'seconds':>8}   all runs")
    for name in ("noop", "client", "floor", "cold", "cached", "own", "sweep3"):
        recs = report["runs"][name]
        if recs:
            print(f"{name:<10} {med[name]:8.1f}   " + " ".join(f"{r['seconds']:.1f}" for r in recs))
        else:
            print(f"{name:<10} {'-':>8}   (not run)")
    print(f"\n{'ratio':<12} {'value':>6}  {'target':>7}  verdict")
    for name, (_, _, target) in TARGETS.items():
        r = report["ratios"].get(name)
        bound = f"<= {target:<4}" if target is not None else f"{'':7}"
        if r:
            print(f"{name:<12} {r['value']:6.2f}  {bound}  {r['verdict']}")
        elif target is not None:
            print(f"{name:<12} {'-':>6}  {bound}  (not measured)")

    for scenario, breakdowns in (("cold", report["cold_breakdowns"]), ("own", report.get("own_breakdowns", []))):
        if breakdowns:
            print_breakdown(scenario, breakdowns, report["runs"][scenario], med[scenario])

    cached = report["cached_breakdowns"]
    if cached:
        print("\n== cached run ==")
        for i, b in enumerate(cached, 1):
            if "error" in b:
                print(f"  cached-{i}: {b['error']}")
                continue
            print(f"  cached-{i}: " + ", ".join(f"{r['step']} {r['outcome']} {r['driver_s']:.2f}s" for r in b["steps"])
                  + f"; driver overhead {b['driver_overhead_s']:.2f} s")

    sweep = report.get("sweep")
    if sweep:
        print("\n== sweep3 ==")
        if "error" in sweep:
            print(f"  {sweep['error']}")
        else:
            for job in sweep["jobs"]:
                print(f"  job {job['job']} {job['status']:<8} {job['overrides']}: "
                      + ", ".join(f"{s['step']} {s['outcome']} {s['seconds']:.1f}s" for s in job["steps"]))
            after = sweep.get("after_sweep")
            if isinstance(after, list):
                print("  after sweep: " + ", ".join(f"{s['step']} {s['outcome']} {s['seconds']:.1f}s" for s in after))
            print(f"  best: {sweep.get('best_overrides')} ({sweep.get('best_job_run_id')})")

    print("\n== checks ==")
    print("step runs executed per scenario: " + "; ".join(
        f"{k}: " + " ".join(f"{s}={c}" for s, c in v.items()) for k, v in report["executed"].items()))
    for line in report["checks"] or ["all scenarios executed exactly the expected step runs"]:
        print(f"  {line}")
    if report["log_findings"]:
        print("log lines mentioning errors/warnings:")
        for line in report["log_findings"]:
            print(f"  {line}")
    print(f"load average: start {tuple(round(x, 2) for x in report['loadavg_start'])}, "
          f"end {tuple(round(x, 2) for x in report['loadavg_end'])} on {report['cpus']} CPUs")


if __name__ == "__main__":
    sys.exit(main())
