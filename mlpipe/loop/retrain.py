"""What a trigger starts (docs/loop.md#the-retrain): the labelled rows the watched version served,
written as a Parquet snapshot named by its content digest; then `main` on the original source
plus the snapshot (data.append), or the snapshot alone (loop.retrain.original=false), through the
full gate, registered as the challenger and never as the champion (registry.promotion=never). Every
run it makes carries the monitor run's id (loop.origin), and the version it registers too."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mlpipe.data import sources
from mlpipe.errors import DataError
from mlpipe.run.outputs import LOOP_ORIGIN_TAG as ORIGIN_TAG  # on every run (and the version) a retrain made
from mlpipe.run.outputs import ROLE_TAG
from mlpipe.serving.records import reads


def labelled(target: str, experiment: str, version: str, timeout_s: float, rows: int,
             after_feedback: int | None = None, after_request: int | None = None) -> pd.DataFrame:
    """The newest `rows` labelled rows `version` answered whose inputs the server kept, of those
    labelled after label set `after_feedback` (where the performance rule's change began), else
    of those answered after request `after_request` (where a drifted window began)."""
    since = after_request if after_feedback is None and after_request is not None else 0
    frame = reads.served_frame(target, experiment, timeout_s, after_id=since, limit=int(rows), model_version=version,
                               labelled_after=after_feedback if after_feedback is not None else -1, newest=True)
    return frame.tail(int(rows))


def snapshot(served: pd.DataFrame, reference: pd.DataFrame, target: str,
             folder: str | Path) -> tuple[Path, dict[str, str]]:
    """The labelled served rows as training rows (the reference's feature columns and types, the
    label as `target`; a row served and labelled the same way again kept once) in
    `folder`/snapshot-<digest>.parquet: its path, and the monitor run's tags
    for it (the artifact it is logged as, the sha256 of its rows, their count)."""
    missing = [c for c in reference.columns if c not in served.columns]
    if missing:
        raise DataError(f"retrain: the served rows lack {', '.join(map(str, missing))}: the server did not keep them "
                        "(serve.inputs.columns / private); a snapshot needs every feature")
    rows = served[list(reference.columns)].astype(reference.dtypes.to_dict(), errors="ignore")
    rows = rows.assign(**{target: served["label"].infer_objects().to_numpy()})
    rows = rows.drop_duplicates(keep="last").reset_index(drop=True)  # a row served again and again counts once
    digest = sources.rows_digest(rows)
    path = Path(folder).expanduser() / f"snapshot-{digest[:16]}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        partial = path.with_suffix(".partial")
        rows.to_parquet(partial, index=False)
        os.replace(partial, path)  # never a half-written snapshot under its name
    return path, {"loop.snapshot": f"loop/{path.name}", "loop.snapshot_digest": digest,
                  "loop.snapshot_rows": str(len(rows))}


@dataclass
class Retrain:
    command: list[str]
    overrides: str


def command(project: str, overrides: str, snapshot_path: Path, rcfg, model_name: str, data_name: str,
            origin: str) -> Retrain:
    """The `mlflow run` of `main` a trigger starts: the monitor's own overrides, then the data,
    the model name pinned to the watched one, promotion off, and the origin."""
    appended = [str(a) for a in rcfg.append]
    data = ([f"data.append=[{','.join([str(snapshot_path), *appended])}]"] if rcfg.original else
            [f"data.source={snapshot_path}", f"data.append=[{','.join(appended)}]", f"data.name={data_name}"])
    extra = [*data, f"registry.model_name={model_name}", "registry.promotion=never", f"loop.origin={origin}"]
    text = " ".join([overrides.strip(), str(rcfg.overrides or "").strip(), *map(shlex.quote, extra)]).strip()
    return Retrain([sys.executable, "-m", "mlflow", "run", project, "-e", "main", "--env-manager", "local",
                    "-P", f"overrides={text}"], text)


@dataclass
class Outcome:
    """What the retrain did: its pipeline run, the challenger it registered (None: none), and one
    line for the monitor's card and terminal."""

    run_id: str | None
    challenger: str | None
    line: str


def run(client, retrain: Retrain, cwd: str, timeout_s: float, origin: str, model: str, alias: str,
        experiment_id: str) -> Outcome:
    """Runs it as a pipeline of its own (not inside the monitor's run: MLFLOW_RUN_ID dropped) and
    reads what it left: its `main` run and the version at `alias` it registered."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
    try:
        done = subprocess.run(retrain.command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return Outcome(_pipeline_run(client, origin, experiment_id), None, "the retrain took over loop.retrain."
                       f"timeout_s={timeout_s:g} s and was stopped; {model}@champion keeps serving")
    run_id = _pipeline_run(client, origin, experiment_id)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        why = errors[-1] if errors else (done.stderr.strip().splitlines() or ["no output"])[-1]
        return Outcome(run_id, None, f"the retrain failed (exit {done.returncode}): {why[:400]}; "
                                     f"{model}@champion keeps serving")
    from mlpipe.registry import versions

    version = versions.current(client, model, alias)
    if version is None or (version.tags or {}).get(ORIGIN_TAG) != origin:
        return Outcome(run_id, None, f"the retrain ran but registered no {model}@{alias} (its qa did not pass, or "
                                     f"nothing changed); {model}@champion keeps serving")
    return Outcome(run_id, str(version.version), f"the retrain registered {model} v{version.version} as {alias}")


def _pipeline_run(client, origin: str, experiment_id: str) -> str | None:
    """The `main` run the retrain started in the monitor's experiment (tagged with its origin)."""
    runs = client.search_runs([experiment_id], f"tags.`{ORIGIN_TAG}` = '{origin}' and tags.`{ROLE_TAG}` = 'pipeline'",
                              max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None
