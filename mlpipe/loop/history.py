"""The loop's history on a model (the team report shows it, docs/loop.md#audit): every monitor run
that raised a trigger or decided a canary, newest first, with what it did and the runs and
versions it links to; quiet runs are counted, not listed."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from mlpipe.run.outputs import STEP_TAG

HEADER = ["monitor run", "when (UTC)", "version watched", "trigger", "retrain run", "challenger", "canary", "promoted"]


def monitor_runs(client, model: str, experiment_ids: list[str], limit: int = 200) -> list[Any]:
    """The newest `limit` FINISHED monitor runs on `model` in these experiments."""
    if not experiment_ids:
        return []
    return client.search_runs(experiment_ids, f"tags.`{STEP_TAG}` = 'monitor' and tags.`loop.model` = '{model}' "
                              "and attributes.status = 'FINISHED'", max_results=limit,
                              order_by=["attributes.start_time DESC"])


def table(runs: list[Any]) -> tuple[list[list[Any]], int]:
    """(a row per run that acted, newest first; how many runs only watched)."""
    rows, quiet = [], 0
    for run in runs:
        tags = run.data.tags
        decision = tags.get("loop.decision", "")
        if tags.get("loop.trigger") != "true" and not decision:
            quiet += 1
            continue
        when = datetime.fromtimestamp(run.info.start_time / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")
        canary = f"{decision} v{tags.get('loop.canary_version', '?')}" if decision else ""
        promoted = f"v{tags['loop.promoted']} (was v{tags.get('loop.replaced', '?')})" if tags.get("loop.promoted") else ""
        rows.append([run.info.run_id, when, tags.get("loop.version", ""), tags.get("loop.reason", "")[:160],
                     tags.get("loop.retrain_run_id", ""), tags.get("loop.challenger", ""), canary, promoted])
    return rows, quiet
