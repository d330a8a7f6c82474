"""Interleaved A/B of our server against itself: two or more arms, each `mlflow run . -e serve`
with its own Hydra overrides (or from another checkout of the project), on one registered model.

bench_serve.py measures one server after the other; on a shared machine the load drifts between
them by 20% or more, which hides a change of a few percent. Here every arm's server is started
first, then the same closed-loop load (benchmarks/loadgen.py) goes to each arm in turn, client
count by client count, `--repeats` times, so drift lands on all arms alike. It prints every
measurement, then per arm and client count the median and the range [lowest - highest] of the
repeats, and each arm's `GET /variants` (batches, requests, waits).

    .venv/bin/python benchmarks/bench_serve_ab.py --arm adaptive= --arm fixed=serve.batching.adaptive=false
    .venv/bin/python benchmarks/bench_serve_ab.py --arm before=/path/to/old/checkout:: --arm after=
        [--clients 1 10 50 200] [--repeats 3] [--seconds 8] [--warmup 3]

An arm is NAME=OVERRIDES or NAME=PROJECT::OVERRIDES (PROJECT: another checkout whose code
serves; the model is registered once, by this checkout).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import PROJECT, RESULTS, bench_env, free_port, ours, register_model, stop, wait_ready  # noqa: E402
from loadgen import run_load  # noqa: E402


def parse_arm(text: str) -> tuple[str, Path, str]:
    name, sep, rest = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--arm {text!r}: expected NAME=OVERRIDES or NAME=PROJECT::OVERRIDES")
    project, sep, overrides = rest.rpartition("::")
    project = Path(project).resolve() if sep else PROJECT
    if not (project / "MLproject").is_file():
        raise argparse.ArgumentTypeError(f"--arm {text!r}: {project} has no MLproject")
    return name, project, overrides


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} [{min(values):.1f} - {max(values):.1f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arm", type=parse_arm, action="append", required=True)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 10, 50, 200])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    names = [name for name, _, _ in args.arm]
    if len(args.arm) < 2 or len(set(names)) != len(names):
        parser.error("give two or more --arm, with different names")

    results: list[dict] = []
    views = {}
    with tempfile.TemporaryDirectory(prefix="mlpipe-serve-ab-") as tmp:
        tmp = Path(tmp)
        env = bench_env(tmp)
        model_uri, body = register_model(tmp, env)
        procs, urls = {}, {}
        try:
            for name, project, overrides in args.arm:
                (tmp / name).mkdir()
                port = free_port()
                cmd = ours(model_uri, port, args, tmp / name, overrides, project)
                procs[name] = subprocess.Popen(cmd, cwd=project, env=env, stdout=(tmp / f"{name}.log").open("w"),
                                               stderr=subprocess.STDOUT, start_new_session=True)
                urls[name] = f"http://127.0.0.1:{port}"
            for name, url in urls.items():
                wait_ready(f"{url}/ping", procs[name])
                asyncio.run(run_load(f"{url}/invocations", body, max(args.clients), args.warmup))
            for repeat in range(args.repeats):
                for clients in args.clients:
                    for name, url in urls.items():
                        result = asyncio.run(run_load(f"{url}/invocations", body, clients, args.seconds))
                        result |= {"arm": name, "clients": clients, "repeat": repeat}
                        print(f"{name}: {json.dumps(result)}", file=sys.stderr, flush=True)
                        results.append(result)
            for name, url in urls.items():
                with urllib.request.urlopen(f"{url}/variants", timeout=10) as resp:
                    views[name] = json.loads(resp.read())["variants"]
        finally:
            for proc in procs.values():
                stop(proc)

    lines = [f"1-row requests, {args.repeats} repeats of {args.seconds:g} s per arm and client count, interleaved; "
             "median [lowest - highest]",
             f"{'arm':<14}{'clients':>8}  {'req/s':<26}{'p50 ms':<24}{'p99 ms':<24}errors"]
    for clients in args.clients:
        for name in names:
            runs = [r for r in results if r["arm"] == name and r["clients"] == clients]
            lines.append(f"{name:<14}{clients:>8}  {spread([r['rps'] for r in runs]):<26}"
                         f"{spread([r['p50_ms'] for r in runs]):<24}{spread([r['p99_ms'] for r in runs]):<24}"
                         f"{sum(r['errors'] for r in runs)}")
    lines.append("")
    for name, view in views.items():
        lines.append(f"{name}: " + ", ".join(f"{v['name']} batches {v['batches']} requests {v['requests']} "
                                             f"waits {v.get('waits', 'n/a')}" for v in view))
    text = "\n".join(lines)
    print(text)
    out = RESULTS / f"serve-ab-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"arms": [[n, str(p), o] for n, p, o in args.arm],
                                                  "runs": results, "variants": views}, indent=1))
    (out / "summary.txt").write_text(text + "\n")
    print(f"\nsaved {out}")


if __name__ == "__main__":
    main()
