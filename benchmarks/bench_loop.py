"""Does the closed loop work? (issue 28, docs/loop.md). A labelled stream of single-row requests
replayed through the real server (`mlflow run . -e serve`, its rows kept, a canary arm on the
challenger alias), each answer labelled through /feedback; a drift injected at a known request,
or none. Three strategies, each on a store of its own whose champion `mlflow run . -e main`
trained on the same original rows:

- loop: `mlflow run . -e monitor` (the command `python -m mlpipe.loop` runs) every `--tick`
  requests: its trigger retrains, the server canaries the challenger, the monitor promotes or
  rolls back;
- never: the champion serves the whole stream;
- every-n: every `--every-n` requests, `main` on the last `--every-n` labelled rows, promoted
  through the gate (registry.promotion=always).

The stream is paused while a tick or a retrain runs (and until the server has picked up what the
registry now says), so results count requests, not seconds. The data: four Gaussian columns, three
classes drawn from a softmax of a piecewise-linear rule (labels are noisy: about 85% is the best a
model can do). A concept change adds a column to the rule (the label rule moves); a covariate
shift moves x0 by 2.5 standard deviations into a region where the rule bends. The oracle is the
same estimator (standard scaling, logistic regression) trained on 5,000 post-drift rows.

    .venv/bin/python benchmarks/bench_loop.py [--requests 20000] [--drift-at 6000] [--tick 250]
        [--every-n 5000] [--streams none concept covariate] [--strategies loop never every-n]

It prints a line per case and the tables of benchmarks/README.md, and writes them with every
request's answer to benchmarks/results/loop-<time>/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import PROJECT, RESULTS, bench_env, free_port, stop, wait_ready  # noqa: E402

sys.path.insert(0, str(PROJECT))
from mlpipe.loop.__main__ import summary, tick_command  # noqa: E402

COLUMNS = ["x0", "x1", "x2", "x3"]
WEIGHTS = np.array([[2.0, 0, 0, 0], [-1.0, 1.8, 0, 0], [-1.0, -1.8, 0, 0]])
CONCEPT = np.array([[0, 0, 0, 0], [0, 0, 1.3, 0], [0, 0, -1.3, 0]])  # x2 enters the rule
SHIFT, BEND, AFTER_BEND, SHARPNESS = 2.5, 1.5, -0.5, 1.6
MODEL = "stream_model"
ROLLING = 500  # requests in the rolling accuracy
HOLD = 1000  # requests the rolling accuracy must stay within the points to count as recovered


# ---- the data (pure) ----

def draw(n: int, seed: int, drift: str = "none") -> tuple[pd.DataFrame, np.ndarray]:
    """`n` rows and their labels after `drift` (none, concept, covariate)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(COLUMNS)))
    if drift == "covariate":
        x[:, 0] += SHIFT
    bent = x.copy()
    bent[:, 0] = np.where(x[:, 0] < BEND, x[:, 0], BEND + AFTER_BEND * (x[:, 0] - BEND))
    logits = SHARPNESS * bent @ (WEIGHTS + (CONCEPT if drift == "concept" else 0)).T
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    labels = (rng.random(n)[:, None] > p.cumsum(axis=1)).sum(axis=1)
    return pd.DataFrame(x, columns=COLUMNS).round(5), labels


def stream(kind: str, requests: int, drift_at: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """The replayed stream: pre-drift rows up to `drift_at`, then rows after `kind`."""
    before, y0 = draw(drift_at if kind != "none" else requests, seed)
    if kind == "none":
        return before, y0
    after, y1 = draw(requests - drift_at, seed + 1, kind)
    return pd.concat([before, after], ignore_index=True), np.concatenate([y0, y1])


def oracle(kind: str, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = draw(5000, seed + 7, kind)
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)


def rolling(correct: np.ndarray, window: int = ROLLING) -> np.ndarray:
    """Accuracy over the `window` requests ending at each request (NaN before a full window)."""
    sums = np.convolve(correct.astype(float), np.ones(window), "valid") / window
    return np.concatenate([np.full(window - 1, np.nan), sums])


def recovery(served: np.ndarray, best: np.ndarray, drift_at: int, points: float = 0.02) -> int | None:
    """Requests from the drift until the served answers' rolling accuracy, over a window of
    post-drift requests only, is within `points` of the oracle's on the same requests and stays
    there for the next HOLD requests (a noisy excursion of a model that never recovered does not
    count: the never-retrained champion touched it on 3 of 12 seeds, held it on none)."""
    ours, theirs = rolling(served), rolling(best)
    within = ours >= theirs - points
    for i in range(drift_at + ROLLING - 1, len(served) - HOLD + 1):
        if within[i:i + HOLD].all():
            return i + 1 - drift_at
    return None


# ---- the real interfaces ----

@dataclass
class Case:
    kind: str
    strategy: str
    folder: Path
    env: dict
    base: str
    answers: list = field(default_factory=list)  # (prediction, label, variant, version)
    ticks: list = field(default_factory=list)  # (requests served, monitor tags)
    promotions: list = field(default_factory=list)  # (promoted, replaced, at request)
    retrains: int = 0
    failures: list = field(default_factory=list)
    frame: pd.DataFrame | None = None  # the stream's rows
    seconds: float = 0.0


def run_group(cmd: list[str], case: Case, timeout: float = 1800) -> subprocess.CompletedProcess:
    """`cmd` in a process group of its own; past `timeout` the whole group (the entry point, a
    monitor's retrain) is stopped and the result says so (exit 124)."""
    proc = subprocess.Popen(cmd, cwd=case.folder, env=case.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        out, err = proc.communicate()
        return subprocess.CompletedProcess(cmd, 124, out, f"{err}\nerror: bench_loop: stopped after {timeout:g} s")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def mlflow_run(case: Case, entry: str, overrides: str) -> subprocess.CompletedProcess:
    return run_group([sys.executable, "-m", "mlflow", "run", str(PROJECT), "-e", entry, "--env-manager", "local",
                      "-P", f"overrides={case.base} {overrides}"], case)


def client(case: Case):
    import mlflow

    return mlflow.MlflowClient(case.env["MLFLOW_TRACKING_URI"])


def aliases(case: Case) -> dict[str, str]:
    return dict(client(case).get_registered_model(MODEL).aliases)


class Server:
    def __init__(self, case: Case, canary_weight: float):
        self.port, self.records = free_port(), case.folder / "records.db"
        cmd = [sys.executable, "-m", "mlflow", "run", str(PROJECT), "-e", "serve", "--env-manager", "local", "-P",
               f"overrides={case.base} serve.port={self.port} serve.records={self.records} serve.experiment=bench "
               f"serve.records_flush_ms=50 serve.refresh_seconds=1 serve.canary.alias=challenger "
               f"serve.canary.weight={canary_weight}"]
        self.proc = subprocess.Popen(cmd, cwd=case.folder, env=case.env, stdout=(case.folder / "server.log").open("w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_ready(f"http://127.0.0.1:{self.port}/health", self.proc)
        except BaseException:
            stop(self.proc)
            raise
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def post(self, path: str, body: dict) -> tuple[int, http.client.HTTPMessage, dict]:
        data = json.dumps(body).encode()
        for attempt in (1, 2):
            try:
                self.conn.request("POST", path, data, {"Content-Type": "application/json"})
                resp = self.conn.getresponse()
                return resp.status, resp.headers, json.loads(resp.read() or b"{}")
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def variants(self) -> dict[str, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("GET", "/variants")
        found = json.loads(conn.getresponse().read())["variants"]
        conn.close()
        return {v["name"]: v for v in found}

    def labels(self) -> int:
        with sqlite3.connect(self.records) as db:
            return db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]

    def stop(self) -> None:
        self.conn.close()
        stop(self.proc)


def replay(case: Case, server: Server, rows: pd.DataFrame, labels: np.ndarray) -> None:
    for row, label in zip(rows.itertuples(index=False), labels):
        status, headers, body = server.post("/invocations", {"dataframe_split": {"columns": COLUMNS, "data": [list(row)]}})
        if status != 200:
            raise SystemExit(f"{case.kind}/{case.strategy}: /invocations answered {status}: {body}")
        (prediction,) = body["predictions"]
        status, _, body = server.post("/feedback", {"request_id": headers["X-Request-Id"], "token": headers["X-Feedback-Token"],
                                                    "label": [int(label)]})
        if status != 200:
            raise SystemExit(f"{case.kind}/{case.strategy}: /feedback answered {status}: {body}")
        case.answers.append((int(prediction), int(label), headers["X-Variant"], headers["X-Model-Version"]))


def settle(case: Case, server: Server, timeout: float = 60) -> None:
    """Waits until the records hold every label sent and the server serves what the registry's
    aliases say (the champion as its default arm, the challenger as its canary or none)."""
    deadline = time.monotonic() + timeout
    while server.labels() < len(case.answers) and time.monotonic() < deadline:
        time.sleep(0.05)
    if server.labels() < len(case.answers):
        case.failures.append(f"after request {len(case.answers)} the records hold {server.labels()} label sets")
    found = aliases(case)
    want, have = (found.get("champion"), found.get("challenger")), None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        arms = server.variants()
        canary = arms.get("canary", {})
        have = (arms["default"]["model_version"], canary.get("model_version") if canary.get("weight") else None)
        if have == tuple(str(v) if v else None for v in want):
            return
        time.sleep(0.2)
    case.failures.append(f"after request {len(case.answers)} the server serves {have}, the registry says {want}")


def tick(case: Case, monitor: str) -> None:
    result = run_group(tick_command([case.base, monitor]), case)
    line = summary(result.stdout, result.stderr, result.returncode)
    runs = client(case).search_runs([client(case).get_experiment_by_name("Default").experiment_id],
                                    "tags.`pipeline.step` = 'monitor'", order_by=["attributes.start_time DESC"],
                                    max_results=1)
    tags = runs[0].data.tags if result.returncode == 0 and runs else {}
    case.ticks.append((len(case.answers), tags, line))
    if tags.get("loop.retrain_run_id"):
        case.retrains += 1
    if tags.get("loop.promoted"):
        case.promotions.append((tags["loop.promoted"], tags["loop.replaced"], len(case.answers)))
    if result.returncode != 0 or tags.get("loop.trigger") == "true" or tags.get("loop.decision"):
        print(f"    [{len(case.answers)}] {line}", flush=True)


def retrain(case: Case, every_n: int) -> None:
    """The every-n baseline: `main` on the last `every_n` labelled rows, promoted through the gate."""
    rows = pd.DataFrame(case.answers[-every_n:], columns=["prediction", "label", "variant", "version"])
    frame = case.frame.iloc[len(case.answers) - len(rows):len(case.answers)].assign(label=rows["label"].values)
    path = case.folder / f"window-{len(case.answers)}.parquet"
    frame.to_parquet(path, index=False)
    before = aliases(case)["champion"]
    result = mlflow_run(case, "main", f"data.source={path} registry.promotion=always")
    case.retrains += 1
    after = aliases(case)["champion"]
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")] or ["no error line"]
        print(f"    [{len(case.answers)}] retrain failed (exit {result.returncode}): {errors[-1][:600]}", flush=True)
    elif after != before:
        case.promotions.append((str(after), str(before), len(case.answers)))
        print(f"    [{len(case.answers)}] retrained: v{after} replaces v{before}", flush=True)


def run_case(kind: str, strategy: str, args, tmp: Path) -> Case:
    folder = tmp / f"{kind}-{strategy}"
    (folder / "snapshots").mkdir(parents=True)
    original, y = draw(args.original_rows, args.seed + 100)
    original.assign(label=y).to_csv(folder / "stream.csv", index=False)
    base = (f"data=file data.source={folder / 'stream.csv'} data.target=label data.name=stream "
            f"model=logistic_regression seed={args.seed}")
    case = Case(kind, strategy, folder, bench_env(folder), base)
    case.frame, labels = stream(kind, args.requests, args.drift_at, args.seed)
    started = time.monotonic()
    result = mlflow_run(case, "main", "")
    if result.returncode != 0:
        raise SystemExit(f"the initial champion: {result.stderr[-3000:]}")
    server = None
    try:
        server = Server(case, args.canary_weight)
        monitor = (f"serve.records={server.records} serve.experiment=bench loop.retrain.original=false "
                   f"loop.retrain.snapshot_dir={folder / 'snapshots'}")
        for start in range(0, args.requests, args.tick):
            end = min(start + args.tick, args.requests)
            replay(case, server, case.frame.iloc[start:end], labels[start:end])
            settle(case, server)
            if strategy == "loop":
                tick(case, monitor)
                settle(case, server)
            elif strategy == "every-n" and end % args.every_n == 0 and end < args.requests:
                retrain(case, args.every_n)
                settle(case, server)
    finally:
        if server is not None:
            server.stop()
    case.seconds = time.monotonic() - started
    return case


# ---- the results ----

def holdout_accuracy(case: Case, version: str, holdout: tuple[pd.DataFrame, np.ndarray]) -> float:
    import mlflow

    mlflow.set_tracking_uri(case.env["MLFLOW_TRACKING_URI"])
    model = mlflow.sklearn.load_model(f"models:/{MODEL}/{version}")
    return float(np.mean(model.predict(holdout[0]) == holdout[1]))


def score(case: Case, args, best, holdout) -> dict:
    predictions, labels = (np.array([a[i] for a in case.answers]) for i in (0, 1))
    correct, drift = predictions == labels, (args.drift_at if case.kind != "none" else None)
    best_correct = best.predict(case.frame) == labels
    triggers = [n for n, tags, _ in case.ticks if tags.get("loop.trigger") == "true"]
    decisions = [tags.get("loop.decision") for _, tags, _ in case.ticks]
    worse, compared = [], []
    for promoted, replaced, at in case.promotions:
        new, old = holdout_accuracy(case, promoted, holdout), holdout_accuracy(case, replaced, holdout)
        compared.append(f"at {at}: v{promoted} {new:.3f} replaced v{replaced} {old:.3f}")
        worse += [compared[-1]] if new < old else []
    tail = slice(max(len(correct) - 2000, drift or 0), len(correct))  # post-drift requests only
    return {"stream": case.kind, "strategy": case.strategy, "requests": len(correct),
            "accuracy": float(correct.mean()), "oracle_accuracy_after_drift": float(best_correct[drift or 0:].mean()),
            "post_drift_accuracy": float(correct[drift:].mean()) if drift else None,
            "last_2000_gap": float(correct[tail].mean() - best_correct[tail].mean()),
            "triggers": triggers, "false_alarms": [n for n in triggers if drift is None or n <= drift],
            "detection_delay": next((n - drift for n in triggers if drift and n > drift), None),
            "recovery": recovery(correct, best_correct, drift) if drift else None,
            "retrains": case.retrains, "promotions": [list(p) for p in case.promotions],
            "rollbacks": decisions.count("rollback"), "worse_promotions": worse, "promotions_on_holdout": compared,
            "failures": case.failures, "seconds": round(case.seconds, 1),
            "ticks": [(n, line) for n, _, line in case.ticks]}


def cell(value, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def report(results: list[dict], drops: dict, args) -> list[str]:
    lines = ["| stream | the champion on a pre-drift holdout | on a post-drift holdout | the oracle on it |", "|---|---|---|---|"]
    lines += [f"| {k} | {d['before']:.3f} | {d['after']:.3f} | {d['oracle']:.3f} |" for k, d in drops.items()]
    lines += ["", "| stream | strategy | whole-stream accuracy | after the drift | last 2,000 vs oracle | trigger after "
              "(labelled requests) | recovery (requests) | retrains | promoted / rolled back | false alarms | "
              "promoted worse | minutes |", "|" + "---|" * 12]
    for r in results:
        lines.append(f"| {r['stream']} | {r['strategy']} | {r['accuracy']:.3f} | {cell(r['post_drift_accuracy'], '{:.3f}')} | "
                     f"{r['last_2000_gap']:+.3f} | {cell(r['detection_delay'])} | "
                     f"{cell(r['recovery']) if r['stream'] != 'none' else '-'}"
                     f"{' (never)' if r['stream'] != 'none' and r['recovery'] is None else ''} | {r['retrains']} | "
                     f"{len(r['promotions'])} / {r['rollbacks']} | {len(r['false_alarms'])} | {len(r['worse_promotions'])} | "
                     f"{r['seconds'] / 60:.1f} |")
    return lines + [""] + goals(results, args)


def goals(results: list[dict], args) -> list[str]:
    """The issue's goals, each PASS or FAIL on these results."""
    by = {(r["stream"], r["strategy"]): r for r in results}
    out = []

    def goal(text: str, ok: bool | None) -> None:
        out.append(f"- {'n/a ' if ok is None else 'PASS' if ok else 'FAIL'} {text}")

    loop = by.get(("none", "loop"))
    seen = f"{loop['retrains']} retrains, {len(loop['false_alarms'])} triggers" if loop else "not run"
    goal(f"no drift, {args.requests:,} requests: 0 retrains, 0 triggers (loop: {seen})",
         loop["retrains"] == 0 and not loop["false_alarms"] if loop else None)
    for kind in ("concept", "covariate"):
        r = by.get((kind, "loop"))
        if r is None:
            continue
        goal(f"{kind}: a trigger within 1,000 labelled requests ({cell(r['detection_delay'])})",
             r["detection_delay"] is not None and r["detection_delay"] <= 1000)
        goal(f"{kind}: recovery within 2 points of the oracle ({cell(r['recovery'])} requests)", r["recovery"] is not None)
        others = [by[(kind, s)] for s in ("never", "every-n") if (kind, s) in by]
        theirs = ", ".join(f"{o['strategy']} {o['accuracy']:.3f}" for o in others)
        goal(f"{kind}: whole-stream accuracy above both baselines ({r['accuracy']:.3f} vs {theirs})",
             all(r["accuracy"] > o["accuracy"] for o in others) if others else None)
        goal(f"{kind}: no promoted model worse than the one it replaced on the post-drift holdout "
             f"({len(r['promotions'])} promoted; worse: {r['worse_promotions'] or 'none'})",
             not r["worse_promotions"] if r["promotions"] else None)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--drift-at", type=int, default=6000)
    parser.add_argument("--tick", type=int, default=250, help="requests between monitor runs (and retrain checks)")
    parser.add_argument("--every-n", type=int, default=5000)
    parser.add_argument("--original-rows", type=int, default=3000)
    parser.add_argument("--canary-weight", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--streams", nargs="+", default=["none", "concept", "covariate"],
                        choices=["none", "concept", "covariate"])
    parser.add_argument("--strategies", nargs="+", default=["loop", "never", "every-n"],
                        choices=["loop", "never", "every-n"])
    args = parser.parse_args()
    if args.every_n % args.tick or not 0 < args.drift_at < args.requests:
        parser.error("--every-n must be a multiple of --tick, and --drift-at inside the stream")

    out = RESULTS / f"loop-{dt.datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT, capture_output=True, text=True).stdout.strip()
    print(f"bench_loop at {rev}: {vars(args)}; load {os.getloadavg()}", flush=True)
    results, drops = [], {}
    with tempfile.TemporaryDirectory(prefix="mlpipe-bench-loop-", ignore_cleanup_errors=True) as tmp:
        for kind in args.streams:
            best = oracle(kind, args.seed)
            holdout = draw(10000, args.seed + 13, kind)
            for strategy in args.strategies:
                print(f"{kind} / {strategy} ...", flush=True)
                case = run_case(kind, strategy, args, Path(tmp))
                if kind not in drops:
                    before = draw(10000, args.seed + 17)
                    drops[kind] = {"before": holdout_accuracy(case, "1", before), "after": holdout_accuracy(case, "1", holdout),
                                   "oracle": float(np.mean(best.predict(holdout[0]) == holdout[1]))}
                results.append(score(case, args, best, holdout))
                pd.DataFrame(case.answers, columns=["prediction", "label", "variant", "version"]).to_csv(
                    out / f"{kind}-{strategy}.csv", index=False)
                r = results[-1]
                print(f"  {kind} / {strategy}: accuracy {r['accuracy']:.3f}, trigger after {r['detection_delay']}, "
                      f"recovery {r['recovery']}, retrains {r['retrains']}, promotions {r['promotions']}, "
                      f"false alarms {r['false_alarms']}, failures {r['failures']}, {r['seconds']:.0f} s", flush=True)
    lines = report(results, drops, args)
    print("\n".join(lines))
    (out / "results.json").write_text(json.dumps({"rev": rev, "args": vars(args), "load_end": os.getloadavg(),
                                                  "drops": drops, "results": results}, indent=1))
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
