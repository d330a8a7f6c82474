"""Scale benchmark: ingest, preprocess and train on generated data of 1,000,000 and 2,000,000 rows.

For each task (classification: logistic regression; regression: ridge) and size, one
`mlflow run . -e main -P steps=ingest,preprocess,train` on a fresh SQLite store with
`data=synthetic data.synthetic.rows=<n>` (20 float64 feature columns). From the step runs it
reads each step's wall time (`step.wall_s`) and peak RSS (`step.peak_rss_mb`, the process's
high-water mark), and the dataset's in-memory size as ingest measured it (`data.memory_mb`,
pandas' deep memory usage of the frame).

Targets (a miss is reported, not an error):
  peak RSS of any step <= 4 x the dataset's in-memory size;
  the 2M-row run's wall time <= 2.3 x the 1M-row run's (sum of the three steps, and per task).

    .venv/bin/python benchmarks/bench_scale.py [--rows 1000000 2000000] [--tasks classification regression]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
STEPS = ("ingest", "preprocess", "train")
MODELS = {"classification": "logistic_regression", "regression": "ridge"}
PEAK_RATIO_MAX = 4.0
GROWTH_MAX = 2.3
SCRUB_ENV = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_TRACKING_URI")


def run_once(task: str, rows: int, workdir: Path) -> dict:
    store = workdir / f"{task}-{rows}"
    store.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if k not in SCRUB_ENV}
    env |= {"MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}
    subprocess.run([sys.executable, "-c", "import mlflow; mlflow.MlflowClient().search_experiments()"],
                   env=env, check=True, capture_output=True)
    overrides = (f"data=synthetic data.synthetic.rows={rows} data.synthetic.task={task} model={MODELS[task]} "
                 "train.cv_folds=2")
    cmd = [sys.executable, "-m", "mlflow", "run", str(PROJECT), "-e", "main", "--env-manager", "local",
           "-P", f"steps={','.join(STEPS)}", "-P", f"overrides={overrides}"]
    started = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=store)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{task} {rows}: mlflow run failed:\n{proc.stderr[-3000:]}")
    import mlflow

    client = mlflow.MlflowClient(uri)
    result = {"task": task, "rows": rows, "command_s": seconds, "steps": {}}
    for step in STEPS:
        (run,) = client.search_runs(["0"], f"tags.`pipeline.step` = '{step}'")
        m = run.data.metrics
        result["steps"][step] = {"wall_s": m["step.wall_s"], "cpu_s": m["step.cpu_s"],
                                 "peak_rss_mb": m["step.peak_rss_mb"]}
        if step == "ingest":
            result["data_mb"] = m["data.memory_mb"]
    return result


def report(results: list[dict]) -> tuple[str, bool]:
    lines, ok = [], True
    header = f"{'task':<15}{'rows':>10}{'data MB':>9}  " + "  ".join(
        f"{s + ' s':>12}{'peak MB':>9}{'x data':>7}" for s in STEPS)
    lines += [header, "-" * len(header)]
    for r in results:
        cells = []
        for step in STEPS:
            s = r["steps"][step]
            ratio = s["peak_rss_mb"] / r["data_mb"]
            ok &= ratio <= PEAK_RATIO_MAX
            cells.append(f"{s['wall_s']:>12.1f}{s['peak_rss_mb']:>9.0f}{ratio:>7.2f}")
        lines.append(f"{r['task']:<15}{r['rows']:>10,}{r['data_mb']:>9.0f}  " + "  ".join(cells))
    worst = max(r["steps"][s]["peak_rss_mb"] / r["data_mb"] for r in results for s in STEPS)
    lines.append(f"\npeak RSS / data size, worst step: {worst:.2f} (target <= {PEAK_RATIO_MAX}) "
                 f"{'PASS' if worst <= PEAK_RATIO_MAX else 'MISS'}")
    by_task: dict[str, dict[int, dict]] = {}
    for r in results:
        by_task.setdefault(r["task"], {})[r["rows"]] = r
    for task, sizes in by_task.items():
        if len(sizes) < 2:
            continue
        small, large = sorted(sizes)[:2]
        total = {n: sum(sizes[n]["steps"][s]["wall_s"] for s in STEPS) for n in (small, large)}
        growth = total[large] / total[small]
        ok &= growth <= GROWTH_MAX
        per_step = ", ".join(f"{s} {sizes[large]['steps'][s]['wall_s'] / sizes[small]['steps'][s]['wall_s']:.2f}"
                             for s in STEPS)
        lines.append(f"{task}: {large:,} rows / {small:,} rows, wall time of the three steps: "
                     f"{total[large]:.1f} s / {total[small]:.1f} s = {growth:.2f} (target <= {GROWTH_MAX}) "
                     f"{'PASS' if growth <= GROWTH_MAX else 'MISS'}  [per step: {per_step}]")
    return "\n".join(lines), ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 2_000_000])
    parser.add_argument("--tasks", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="mlpipe-scale-") as tmp:
        for task in args.tasks:
            for rows in args.rows:
                print(f"running {task} {rows:,} rows ...", file=sys.stderr, flush=True)
                results.append(run_once(task, rows, Path(tmp)))
    text, _ = report(results)
    print(text)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = RESULTS / f"scale-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(),
                                                   "results": results}, indent=1))
    (out / "report.txt").write_text(text + "\n")
    print(f"\nsaved {out}", file=sys.stderr)
    sys.exit(0)  # a miss is reported above, not an error


if __name__ == "__main__":
    main()
