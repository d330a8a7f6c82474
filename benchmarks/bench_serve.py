"""Serving benchmark: our server (`mlflow run . -e serve`) against `mlflow models serve` on the same
registered model, same worker count, same machine, one after the other in one run.

A pipeline (ingest..register, default config: wine, random forest) registers the model in a fresh
SQLite store. Each server then gets the same closed-loop load (benchmarks/loadgen.py): `--clients`
concurrent keep-alive clients sending 1-row `dataframe_split` requests for `--seconds`, after a
short warm-up. The load generator runs on the same cores as the server.

Targets (a miss is reported, not an error): requests/s at least 5 x mlflow's, p99 no worse, 0 errors.

    .venv/bin/python benchmarks/bench_serve.py [--workers 1] [--clients 50] [--seconds 20] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import run_load  # noqa: E402

PROJECT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
SCRUB_ENV = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_TRACKING_URI")
RPS_RATIO_MIN = 5.0
MODEL = "wine_model"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"no answer from {url} after {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def measure(name: str, cmd: list[str], env: dict, port: int, body: bytes, args, log: Path) -> dict:
    proc = subprocess.Popen(cmd, cwd=PROJECT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}/ping", proc)
        url = f"http://127.0.0.1:{port}/invocations"
        asyncio.run(run_load(url, body, args.clients, args.warmup))
        result = asyncio.run(run_load(url, body, args.clients, args.seconds))
    finally:
        stop(proc)
    result["server"] = name
    print(f"{name}: {json.dumps(result)}", file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--quick", action="store_true", help="8 s per server")
    args = parser.parse_args()
    if args.quick:
        args.seconds = 8
    with tempfile.TemporaryDirectory(prefix="mlpipe-serve-bench-") as tmp:
        tmp = Path(tmp)
        env = {k: v for k, v in os.environ.items() if k not in SCRUB_ENV}
        env |= {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", "MLFLOW_DISABLE_TELEMETRY": "true",
                "MLPIPE_SYSTEM_METRICS": "false",
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}
        print("registering the model (pipeline ingest..register) ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "mlflow", "run", str(PROJECT), "-e", "main", "--env-manager", "local",
                        "-P", "steps=ingest,preprocess,train,qa,register"], cwd=tmp, env=env, check=True,
                       capture_output=True)
        import mlflow
        import pandas as pd

        client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
        version = client.get_model_version_by_alias(MODEL, "champion")
        preprocess = version.tags["lineage.preprocess_run_id"]
        spec = json.load(open(client.download_artifacts(preprocess, "feature_spec.json", str(tmp))))
        rows = pd.read_parquet(client.download_artifacts(preprocess, "data/test.parquet", str(tmp)))
        row = rows[spec["numeric"] + spec["categorical"]].head(1)
        body = json.dumps({"dataframe_split": json.loads(row.to_json(orient="split", index=False))}).encode()
        model_uri = f"models:/{MODEL}/{version.version}"

        port = free_port()
        theirs = measure("mlflow models serve", [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri,
                                                 "-p", str(port), "-w", str(args.workers), "--env-manager", "local"],
                         env, port, body, args, tmp / "mlflow-serve.log")
        port = free_port()
        overrides = f"serve.port={port} serve.workers={args.workers} serve.records={tmp / 'records.db'}"
        ours = measure("mlpipe serve", [sys.executable, "-m", "mlflow", "run", str(PROJECT), "-e", "serve",
                                        "--env-manager", "local", "-P", f"model_uri={model_uri}",
                                        "-P", f"overrides={overrides}"],
                       env, port, body, args, tmp / "mlpipe-serve.log")

    ratio = ours["rps"] / theirs["rps"] if theirs["rps"] else float("inf")
    p99_ok = ours["p99_ms"] is not None and theirs["p99_ms"] is not None and ours["p99_ms"] <= theirs["p99_ms"]
    ok = ratio >= RPS_RATIO_MIN and p99_ok and ours["errors"] == 0
    lines = [f"{args.clients} clients, 1-row requests, {args.seconds:g} s per server, {args.workers} worker(s), "
             f"model {MODEL} (random forest, wine)",
             f"{'server':<22}{'req/s':>9}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}"]
    for r in (theirs, ours):
        lines.append(f"{r['server']:<22}{r['rps']:>9.1f}{r['p50_ms']:>10.1f}{r['p99_ms']:>10.1f}{r['errors']:>8}")
    lines.append(f"\nreq/s ratio ours/mlflow: {ratio:.1f} (target >= {RPS_RATIO_MIN:g}); p99 ours/mlflow: "
                 f"{ours['p99_ms'] / theirs['p99_ms']:.2f} (target <= 1); errors {ours['errors']} (target 0) "
                 f"{'PASS' if ok else 'MISS'}")
    text = "\n".join(lines)
    print(text)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = RESULTS / f"serve-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(),
                                                   "args": vars(args), "results": [theirs, ours]}, indent=1))
    (out / "report.txt").write_text(text + "\n")
    print(f"\nsaved {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
