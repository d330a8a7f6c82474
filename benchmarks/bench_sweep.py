"""Sweep benchmark: a 4-job sweep run one job after another, with the joblib launcher (2 workers on
this machine) and on a two-node Ray cluster (two `ray start` processes on 127.0.0.1, 1 CPU each).

Each arm is `mlflow run . -e main -P overrides="-m <launcher> <GRID>"` on a fresh SQLite store,
arms interleaved per repeat, medians reported. Ratios: sequential / joblib and sequential / ray
(target >= 1.6 for joblib). From the runs it splits each sweep's wall time into: the CLI and the
driver's start (until the sweep parent run starts), the shared steps run once before the jobs,
the jobs (first job start to last job end), and the end (register, serve, the parent's close).

    .venv/bin/python benchmarks/bench_sweep.py [--repeat 3] [--no-ray] [--grid "..."]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PROJECT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"
BIN = Path(sys.executable).parent
# Four jobs of real work: digits (1,797 rows, 64 features), random forests with 5-fold CV.
GRID = "data=digits model.n_estimators=150,200,250,300"
LAUNCHERS = {
    "sequential": "",
    "joblib": "hydra/launcher=joblib hydra.launcher.n_jobs=2",
    "ray": "hydra/launcher=ray hydra.launcher.address={address}",
}
SCRUB_ENV = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLPIPE_SWEEP_RUN_ID",
             "MLFLOW_TRACKING_URI", "MLPIPE_WARM_SOCKET")


def env_for(uri: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUB_ENV}
    return {**env, "MLFLOW_TRACKING_URI": uri, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "MLFLOW_DISABLE_TELEMETRY": "true"}


class Ray:
    """Two Ray nodes on this machine, 1 CPU each, stopped by process group."""

    def __init__(self, folder: Path) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        common = ["--block", "--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
        self.procs = [self._start([*common, "--head", f"--port={port}", "--include-dashboard=false",
                                   f"--temp-dir={folder / 'ray'}"], folder / "head.log")]
        self._wait(1)
        self.procs.append(self._start([*common, f"--address={self.address}"], folder / "node.log"))
        self._wait(2)

    @staticmethod
    def _start(args: list[str], log: Path) -> subprocess.Popen:
        return subprocess.Popen([str(BIN / "ray"), "start", *args], stdout=log.open("w"), stderr=subprocess.STDOUT,
                                env=env_for("unused"), start_new_session=True)

    def _wait(self, nodes: int) -> None:
        for _ in range(120):
            out = subprocess.run([str(BIN / "ray"), "status", f"--address={self.address}"], capture_output=True,
                                 text=True, env=env_for("unused")).stdout
            if out.count(" 1 node_") >= nodes:  # `ray status`: one line per active node
                return
            time.sleep(1)
        raise RuntimeError(f"the Ray cluster at {self.address} did not reach {nodes} nodes")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def new_store(stores: Path, name: str) -> str:
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=stores))
    uri = f"sqlite:///{path / 'mlflow.db'}"
    subprocess.run([sys.executable, "-c", "import mlflow; mlflow.MlflowClient().search_experiments()"],
                   cwd=path, env=env_for(uri), check=True, capture_output=True)
    return uri


def run_arm(name: str, overrides: str, stores: Path, logs: Path, rep: int) -> dict:
    uri = new_store(stores, name)
    cmd = [str(BIN / "mlflow"), "run", str(PROJECT), "-e", "main", "--env-manager", "local",
           "-P", f"overrides=-m {overrides} {GRID}".replace("-m  ", "-m ")]
    log = logs / f"{name}-{rep}.log"
    print(f"  {name:<10} ...", end="", flush=True)
    started = time.perf_counter()
    with log.open("w") as out:
        rc = subprocess.run(cmd, cwd=stores, env=env_for(uri), stdout=out, stderr=subprocess.STDOUT,
                            timeout=1800).returncode
    seconds = time.perf_counter() - started
    print(f" {seconds:6.1f} s" + ("" if rc == 0 else f"  FAILED rc={rc}, see {log}"), flush=True)
    if rc != 0:
        raise SystemExit(f"{name} failed: {log}")
    return {"arm": name, "seconds": seconds, **breakdown(uri, seconds)}


def breakdown(uri: str, seconds: float) -> dict:
    """Where a sweep's time went, from its runs' start and end times."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    (parent,) = client.search_runs(["0"], "tags.`pipeline.role` = 'sweep'")
    jobs = client.search_runs(["0"], f"tags.`pipeline.sweep_run_id` = '{parent.info.run_id}'")
    p0, p1 = parent.info.start_time, parent.info.end_time
    j0, j1 = min(j.info.start_time for j in jobs), max(j.info.end_time for j in jobs)
    job_sum = sum(j.info.end_time - j.info.start_time for j in jobs) / 1000
    return {"start_s": seconds - (p1 - p0) / 1000, "shared_s": (j0 - p0) / 1000, "jobs_s": (j1 - j0) / 1000,
            "end_s": (p1 - j1) / 1000, "job_sum_s": job_sum, "jobs": len(jobs),
            "nodes": len({j.data.tags.get("pipeline.node") for j in jobs if j.data.tags.get("pipeline.node")})}


def main() -> None:
    global GRID
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-ray", action="store_true", help="leave the Ray arm out")
    parser.add_argument("--grid", default=GRID, help=f"the sweep (default: {GRID})")
    args = parser.parse_args()
    GRID = args.grid
    arms = [a for a in LAUNCHERS if not (a == "ray" and args.no_ray)]
    folder = Path(tempfile.mkdtemp(prefix="mlpipe-bench-sweep-"))
    (stores := folder / "stores").mkdir()
    (logs := folder / "logs").mkdir()
    ray = Ray(folder) if "ray" in arms else None
    results: list[dict] = []
    try:
        for rep in range(args.repeat):
            print(f"repeat {rep + 1}/{args.repeat}")
            for arm in arms:
                overrides = LAUNCHERS[arm].format(address=ray.address if ray else "")
                results.append(run_arm(arm, overrides, stores, logs, rep))
    finally:
        if ray:
            ray.stop()
        shutil.rmtree(folder / "ray", ignore_errors=True)  # Ray's session, with its copies of the code
    med = {arm: {k: statistics.median(r[k] for r in results if r["arm"] == arm)
                 for k in ("seconds", "start_s", "shared_s", "jobs_s", "end_s", "job_sum_s")} for arm in arms}
    print(f"\n4-job sweep ({GRID}), medians of {args.repeat}, seconds")
    print(f"{'arm':<11}{'total':>7}{'start':>7}{'shared':>8}{'jobs':>7}{'end':>6}{'sum of jobs':>13}")
    for arm in arms:
        m = med[arm]
        print(f"{arm:<11}{m['seconds']:7.1f}{m['start_s']:7.1f}{m['shared_s']:8.1f}{m['jobs_s']:7.1f}"
              f"{m['end_s']:6.1f}{m['job_sum_s']:13.1f}")
    ratios = {f"sequential/{arm}": med["sequential"]["seconds"] / med[arm]["seconds"] for arm in arms[1:]}
    ratios |= {f"jobs sequential/{arm}": med["sequential"]["jobs_s"] / med[arm]["jobs_s"] for arm in arms[1:]}
    for name, value in ratios.items():
        target = " (target >= 1.6)" if name == "sequential/joblib" else ""
        print(f"{name:<26} {value:5.2f}{target}")
    RESULTS.mkdir(exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = RESULTS / f"sweep-{stamp}.json"
    out.write_text(json.dumps({"grid": GRID, "runs": results, "medians": med, "ratios": ratios,
                               "cpus": os.cpu_count()}, indent=1))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
