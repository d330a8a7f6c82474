"""What the driver reports: a line per step as it ends, the summary table, its files in the
parent run, the steps' report cards under `cards/` with an index, and the pipeline's score."""

from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mlflow.entities import Metric, Run
from mlflow.tracking import MlflowClient

from mlpipe.errors import UpstreamError, one_line
from mlpipe.reports import cards
from mlpipe.run.outputs import CARD_HTML, ERROR_MESSAGE_TAG, SUMMARY_TAG, QaOutput


@dataclass
class StepResult:
    step: str
    run_id: str
    outcome: str  # ran | cached
    seconds: float
    summary: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


FIGURES = (("step s", "step.wall_s", "{:.1f}"), ("cpu s", "step.cpu_s", "{:.1f}"), ("peak MB", "step.peak_rss_mb", "{:.0f}"))


def result_of(step: str, run: Run, outcome: str, seconds: float) -> StepResult:
    return StepResult(step, run.info.run_id, outcome, seconds, run.data.tags.get(SUMMARY_TAG, ""), dict(run.data.metrics))


def step_line(result: StepResult) -> str:
    """What the terminal shows as each step ends: `[mlpipe] train ran in 8.8 s: validation.accuracy=1.0000`."""
    return f"[mlpipe] {result.step} {result.outcome} in {result.seconds:.1f} s: {result.summary}".rstrip(": ")


def format_table(results: list[StepResult]) -> str:
    """The summary the driver prints: step, run id, cached or ran, seconds the driver waited, the
    step's own wall time, CPU time and peak RSS (of the reused run when cached), key result."""
    header = ("step", "run id", "outcome", "seconds", *(name for name, _, _ in FIGURES), "result")
    rows = [header]
    for r in results:
        figures = [fmt.format(r.metrics[key]) if key in r.metrics else "-" for _, key, fmt in FIGURES]
        rows.append((r.step, r.run_id, r.outcome, f"{r.seconds:.1f}", *figures, r.summary))
    last = len(header) - 1
    widths = [max(len(row[i]) for row in rows) for i in range(last)]
    lines = ["  ".join(cell.ljust(widths[i]) if i < last else cell for i, cell in enumerate(row)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 6)
    return "\n".join(line.rstrip() for line in lines)


def score_of(outputs: dict[str, Run]) -> tuple[str, float] | None:
    """The qa primary metric of a pipeline and its value (what a sweep optimises), from qa's
    typed hand-off; None without a finished qa or its value."""
    qa = outputs.get("qa")
    if qa is None:
        return None
    try:
        metric = QaOutput.from_run(qa).primary_metric
    except UpstreamError:
        return None
    value = qa.data.metrics.get(f"qa.{metric}")
    return (metric, value) if value is not None and not math.isnan(value) else None


def log_summary(client: MlflowClient, run_id: str, results: list[StepResult], name: str = "pipeline_summary") -> None:
    table = format_table(results)
    client.log_text(run_id, table + "\n", f"{name}.txt")
    client.log_dict(run_id, [asdict(r) for r in results], f"{name}.json")
    now = int(time.time() * 1000)
    walls = [Metric(f"{r.step}.wall_s", r.metrics["step.wall_s"], now, 0) for r in results if "step.wall_s" in r.metrics]
    if walls:
        client.log_batch(run_id, metrics=walls)


def publish_cards(client: MlflowClient, parent_run_id: str, rows: list[tuple[str, Run, str]], where: str) -> None:
    """Copy each step's card into the parent run under `where`, with an index page that holds them all.

    Best effort: a missing card (a step that died before writing one) is listed as such."""
    if not rows:
        return
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "cards"
            out.mkdir()
            def copy(i: int, step: str, run: Run) -> str | None:
                href = f"{i:02d}-{step}.html"
                try:
                    got = client.download_artifacts(run.info.run_id, CARD_HTML, str(Path(tmp) / str(i)))
                    shutil.copyfile(got, out / href)
                    return href
                except Exception:  # noqa: BLE001 - no card to copy
                    return None

            with ThreadPoolExecutor(max_workers=len(rows)) as pool:  # each a download: they wait on I/O
                hrefs = list(pool.map(copy, range(1, len(rows) + 1), [r[0] for r in rows], [r[1] for r in rows]))
            index = [{"step": step, "run_id": run.info.run_id, "status": run.info.status, "outcome": outcome,
                      "href": href, "summary": run.data.tags.get(SUMMARY_TAG) or run.data.tags.get(ERROR_MESSAGE_TAG, "")}
                     for (step, run, outcome), href in zip(rows, hrefs)]
            pages = {href: (out / href).read_text(encoding="utf-8") for href in hrefs if href}
            html = cards.render_index(f"pipeline {parent_run_id}", index, pages)
            (out / "index.html").write_text(html, encoding="utf-8")
            (out / "index.json").write_text(json.dumps(index, indent=1))
            client.log_artifacts(parent_run_id, str(out), where)
    except Exception as exc:  # noqa: BLE001 - the pipeline's outcome matters more than its cards
        print(f"warning: main: report cards not linked: {type(exc).__name__}: {one_line(exc)}", file=sys.stderr)


def run_name(kind: str, cfg, when: float, swept: dict[str, str] | None = None) -> str:
    """A pipeline's or a sweep's run name in MLflow's UI, after what it ran: `main wine
    RandomForestClassifier 12-06 18:30` (MLflow's own names are random words). A sweep over the
    data or model group (`swept`: group -> its values) is named after the values it sweeps."""
    import time

    swept = swept or {}
    estimator = swept.get("model") or str(cfg.model.get("_target_", "")).rsplit(".", 1)[-1] or "model"
    data = swept.get("data") or cfg.data.name
    return f"{kind} {data} {estimator} {time.strftime('%m-%d %H:%M', time.localtime(when))}"
