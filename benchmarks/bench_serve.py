"""Serving benchmark: our server (`mlflow run . -e serve`) against `mlflow models serve` and Ray
Serve on the same registered model, same machine, one server after the other in one run.

A pipeline (ingest..register, default config: wine, random forest) registers the model in a fresh
SQLite store. Each server then gets the same closed-loop load (benchmarks/loadgen.py) at each
client count of `--clients` (default 1, 10, 50, 200): that many concurrent keep-alive clients
sending 1-row `dataframe_split` requests for `--seconds`, after a short warm-up. The load
generator runs on the same cores as the servers.

Servers (`--servers`):
- mlflow: `mlflow models serve -w <workers>`;
- ours: `mlflow run . -e serve` with serve.workers=<workers>, request records on (SQLite), the
  default runtime (serve.runtime=onnx: the model's ONNX conversion under onnxruntime);
- ours-sklearn: the same with serve.runtime=sklearn (the scikit-learn model through MLflow's
  pyfunc: how every request was answered before the ONNX runtime);
- floor: the same HTTP stack (uvicorn + Starlette, same workers and limits) answering a constant
  body after parsing the request's JSON (benchmarks/floor_server.py): no model, no records;
- ours-fixed: the same with serve.batching.adaptive=false (every batch waits, up to max_wait_ms; not in
  the default list);
- ray: Ray Serve as its docs recommend for throughput (benchmarks/ray_serve_app.py --mode throughput);
- ray-default: Ray Serve with its default deployment settings (--mode default).
The Ray arms need `pip install -r benchmarks/requirements-ray.txt`; without it they are left out,
with a message.

Targets (a miss is reported, not an error), all from this run, 0 errors:
- at 1 client, ours: p50 <= 2 ms and <= 1.5 x the floor's p50;
- at 50 clients, ours: req/s >= 3 x ours-sklearn's and >= 0.6 x the floor's, p99 <= 30 ms;
- at 50 clients against the better Ray arm (the one with more req/s): req/s >= 8 x, p99 <= 0.2 x;
- at 50 clients against mlflow: req/s >= 5 x, p99 <= 0.1 x.

    .venv/bin/python benchmarks/bench_serve.py [--workers 1] [--clients 1 10 50 200] [--seconds 20]
        [--servers mlflow ours ours-sklearn floor ours-fixed ray ray-default] [--quick]
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
RAY_APP = Path(__file__).resolve().parent / "ray_serve_app.py"
FLOOR = Path(__file__).resolve().parent / "floor_server.py"
SERVERS = {  # name -> (model URI, port, args, temp folder) -> command
    "mlflow": lambda uri, port, args, tmp: [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "-p", str(port),
                                            "-w", str(args.workers), "--env-manager", "local"],
    "ours": lambda uri, port, args, tmp: ours(uri, port, args, tmp),
    "ours-sklearn": lambda uri, port, args, tmp: ours(uri, port, args, tmp, "serve.runtime=sklearn"),
    "floor": lambda uri, port, args, tmp: [sys.executable, str(FLOOR), "--port", str(port), "--workers",
                                           str(args.workers)],
    "ours-fixed": lambda uri, port, args, tmp: ours(uri, port, args, tmp, "serve.batching.adaptive=false"),
    "ray": lambda uri, port, args, tmp: [sys.executable, str(RAY_APP), "--model-uri", uri, "--port", str(port),
                                         "--mode", "throughput"],
    "ray-default": lambda uri, port, args, tmp: [sys.executable, str(RAY_APP), "--model-uri", uri, "--port",
                                                 str(port), "--mode", "default"],
}


def ours(uri: str, port: int, args, tmp: Path, extra: str = "", project: Path = PROJECT) -> list[str]:
    overrides = f"serve.port={port} serve.workers={args.workers} serve.records={tmp / 'records.db'} {extra}"
    return [sys.executable, "-m", "mlflow", "run", str(project), "-e", "serve", "--env-manager", "local",
            "-P", f"model_uri={uri}", "-P", f"overrides={overrides.strip()}"]


def bench_env(tmp: Path) -> dict:
    """The servers' environment: a fresh SQLite store in `tmp`, no inherited run, no telemetry."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUB_ENV}
    return env | {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", "MLFLOW_DISABLE_TELEMETRY": "true",
                  "MLPIPE_SYSTEM_METRICS": "false", "RAY_USAGE_STATS_ENABLED": "0",
                  "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}


def register_model(tmp: Path, env: dict) -> tuple[str, bytes]:
    """Runs ingest..register (default config: wine, random forest) into the store; returns the
    registered version's URI and a 1-row `dataframe_split` request body from its test split."""
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
    frame = pd.read_parquet(client.download_artifacts(preprocess, "data/test.parquet", str(tmp)))
    row = frame[spec["numeric"] + spec["categorical"]].head(1)
    body = json.dumps({"dataframe_split": json.loads(row.to_json(orient="split", index=False))}).encode()
    return f"models:/{MODEL}/{version.version}", body


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


def haproxies() -> set[int]:
    """PIDs of the HAProxy processes running (Ray Serve's ingress in the Ray arms)."""
    import psutil

    return {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "haproxy"}


def stop_new_haproxies(before: set[int]) -> None:
    """Ray Serve's HAProxy, reloaded during the run (`-sf`), outlives serve.shutdown() and the
    arm's process group: the ones that were not running before the arm are stopped by PID."""
    import psutil

    for pid in haproxies() - before:
        try:
            proc = psutil.Process(pid)
            proc.terminate()
            proc.wait(timeout=10)
        except (psutil.NoSuchProcess, psutil.TimeoutExpired):
            pass


def measure(name: str, cmd: list[str], env: dict, port: int, body: bytes, args, log: Path) -> list[dict]:
    """The server started once, then each client count of the sweep in turn."""
    before = haproxies()
    proc = subprocess.Popen(cmd, cwd=PROJECT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    results = []
    try:
        wait_ready(f"http://127.0.0.1:{port}/ping", proc)
        url = f"http://127.0.0.1:{port}/invocations"
        asyncio.run(run_load(url, body, max(args.clients), args.warmup))
        for clients in args.clients:
            result = asyncio.run(run_load(url, body, clients, args.seconds))
            result |= {"server": name, "clients": clients}
            print(f"{name}: {json.dumps(result)}", file=sys.stderr, flush=True)
            results.append(result)
    finally:
        stop(proc)
        stop_new_haproxies(before)
    return results


def ray_serve_missing() -> str | None:
    try:
        import ray.serve  # noqa: F401
    except ImportError as exc:
        return f"Ray Serve is not installed ({exc}); pip install -r benchmarks/requirements-ray.txt"
    return None


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


def targets(rows: list[dict], clients: int) -> list[str]:
    """The goals' ratios, from the rows measured in this run (`clients`: the loaded count, 50)."""
    def at(server: str, n: int) -> dict | None:
        return next((r for r in rows if r["server"] == server and r["clients"] == n), None)

    def line(what: str, value: float, op: str, goal: float, unit: str = "") -> str:
        ok = value <= goal if op == "<=" else value >= goal
        return f"{what}: {value:.2f}{unit} (target {op} {goal:g}{unit}): {'PASS' if ok else 'MISS'}"

    lines, ours1, ours = [], at("ours", 1), at("ours", clients)
    if ours1 is not None:
        lines.append(line("at 1 client, ours p50", ours1["p50_ms"], "<=", 2.0, " ms"))
        if at("floor", 1):
            lines.append(line("at 1 client, ours/floor p50", _ratio(ours1["p50_ms"], at("floor", 1)["p50_ms"]), "<=", 1.5))
    if ours is None:
        return lines
    lines.append(line(f"at {clients} clients, ours p99", ours["p99_ms"], "<=", 30.0, " ms"))
    lines.append(line(f"at {clients} clients, ours errors", ours["errors"], "<=", 0))
    if at("ours-sklearn", clients):
        lines.append(line(f"at {clients} clients, ours/ours-sklearn req/s",
                          _ratio(ours["rps"], at("ours-sklearn", clients)["rps"]), ">=", 3.0))
    if at("floor", clients):
        lines.append(line(f"at {clients} clients, ours/floor req/s", _ratio(ours["rps"], at("floor", clients)["rps"]),
                          ">=", 0.6))
    rays = [r for r in (at("ray", clients), at("ray-default", clients)) if r]
    if rays:
        ray = max(rays, key=lambda r: r["rps"])
        lines.append(line(f"at {clients} clients, ours/{ray['server']} req/s", _ratio(ours["rps"], ray["rps"]), ">=", 8.0))
        lines.append(line(f"at {clients} clients, ours/{ray['server']} p99", _ratio(ours["p99_ms"], ray["p99_ms"]), "<=", 0.2))
    if at("mlflow", clients):
        lines.append(line(f"at {clients} clients, ours/mlflow req/s", _ratio(ours["rps"], at("mlflow", clients)["rps"]),
                          ">=", RPS_RATIO_MIN))
        lines.append(line(f"at {clients} clients, ours/mlflow p99", _ratio(ours["p99_ms"], at("mlflow", clients)["p99_ms"]),
                          "<=", 0.1))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 10, 50, 200])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--servers", nargs="+", default=[s for s in SERVERS if s != "ours-fixed"],
                        choices=list(SERVERS))
    parser.add_argument("--quick", action="store_true", help="8 s per client count")
    args = parser.parse_args()
    if args.quick:
        args.seconds = 8
    missing = ray_serve_missing() if any(s.startswith("ray") for s in args.servers) else None
    if missing:
        print(f"leaving out {', '.join(s for s in args.servers if s.startswith('ray'))}: {missing}", file=sys.stderr)
        args.servers = [s for s in args.servers if not s.startswith("ray")]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="mlpipe-serve-bench-") as tmp:
        tmp = Path(tmp)
        env = bench_env(tmp)
        model_uri, body = register_model(tmp, env)
        for name in args.servers:
            port = free_port()
            rows += measure(name, SERVERS[name](model_uri, port, args, tmp), env, port, body, args,
                            tmp / f"{name}.log")

    lines = [f"1-row requests, {args.seconds:g} s per client count, {args.workers} worker(s) / replica(s), "
             f"model {MODEL} (random forest, wine)",
             f"{'server':<13}{'clients':>8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"]
    for r in rows:
        lines.append(f"{r['server']:<13}{r['clients']:>8}{r['rps']:>9.1f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}"
                     f"{r['errors']:>8}")
    lines += [""] + targets(rows, 50 if 50 in args.clients else max(args.clients))
    text = "\n".join(lines)
    print(text)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = RESULTS / f"serve-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(),
                                                   "args": vars(args), "results": rows}, indent=1))
    (out / "report.txt").write_text(text + "\n")
    print(f"\nsaved {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
