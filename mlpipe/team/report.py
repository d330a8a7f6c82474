"""The team report's readings (`mlflow run . -e report`): the held-out evaluation rows, every
member's champion and the team champion scored on them past the trust boundary, the team
model's promotions, the A/B tests in the serving records, and the members' step runs. The
tables and charts made of them are mlpipe/reports/team.py's (pure)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from mlpipe.data import sources
from mlpipe.data.rows import held_out
from mlpipe.errors import ConfigError, DataError, one_line
from mlpipe.registry import provenance, versions
from mlpipe.quality import compare
from mlpipe.run import handoff, outputs
from mlpipe.serving import abreport
from mlpipe.serving.records import reads
from mlpipe.serving.records.db import is_postgres
from mlpipe.training import model_io


def holdout(dcfg) -> tuple[pd.DataFrame, pd.Series]:
    """The team evaluation set: the rows of `data.source` that every ingest held out."""

    if dcfg.holdout_fraction <= 0:
        raise ConfigError("the team report needs held-out rows no member trained on: set team.holdout_fraction "
                          "(data.holdout_fraction) above 0, and run the members' pipelines with it")
    frame = sources.load_source(dcfg.source)
    rows = frame[held_out(frame, dcfg.holdout_fraction)]
    if rows.empty:
        raise DataError(f"data.holdout_fraction={dcfg.holdout_fraction} holds out no row of {dcfg.source}")
    return rows.drop(columns=[dcfg.target]), rows[dcfg.target]


@dataclass
class Candidate:
    """A model on the leaderboard: the team champion or a member's champion."""

    label: str  # "team champion" or the member's name
    model_uri: str
    version: str
    member: str
    answers: np.ndarray | None = None  # its predictions on the held-out rows (scores for roc_auc)
    error: str = ""
    tags: dict[str, str] | None = None  # the version's tags (its lineage.* among them)


def candidates(client, team, alias: str) -> list[Candidate]:
    found = []
    champion = versions.current(client, team.shared_model, alias)
    if champion is not None:
        found.append(Candidate("team champion", f"models:/{team.shared_model}/{champion.version}",
                               str(champion.version), (champion.tags or {}).get(outputs.MEMBER_TAG, ""),
                               tags=dict(champion.tags or {})))
    for member in [str(m["name"]) for m in team.members]:
        version = versions.current(client, f"{team.shared_model}.{member}", alias)
        if version is not None:
            found.append(Candidate(member, f"models:/{team.shared_model}.{member}/{version.version}",
                                   str(version.version), member, tags=dict(version.tags or {})))
    return found


def unseen_rows(client, c: Candidate, dcfg) -> str:
    """"" when the model's ingest held out the same rows as this report (the same data source and
    `data.holdout_fraction`), so it never trained on the evaluation set; else why it may have."""
    run_id = (c.tags or {}).get(outputs.lineage_tag("ingest"))
    if not run_id:
        return "not scored: no ingest run in its lineage, so whether it trained on the evaluation rows is unknown"
    params = client.get_run(run_id).data.params
    if params.get("data.source") != str(dcfg.source):
        return f"not scored: trained on {params.get('data.source')}, not {dcfg.source}"
    fraction = params.get("data.holdout_fraction")
    if fraction is None or float(fraction) != float(dcfg.holdout_fraction):
        return (f"not scored: its ingest held out data.holdout_fraction={fraction}, not {dcfg.holdout_fraction}, "
                "so it may have trained on evaluation rows")
    return ""


def score(client, found: list[Candidate], features: pd.DataFrame, metric: str, serialization: str,
          trusted: list[str], dcfg, tcfg, team, runtime: str = "onnx") -> None:
    """Each candidate's answers on the held-out rows (its predictions; for roc_auc, its scores
    of the positive class), loaded past the trust boundary; a model that may have trained on
    those rows (unseen_rows), or that cannot be loaded or scored, is listed with its reason."""
    trust = provenance.trust_for(client, tcfg, team)  # only the team gate vouches here
    for c in found:
        c.error = unseen_rows(client, c, dcfg)
        if c.error:
            continue
        try:
            proof = provenance.validated(client, c.model_uri, "the team report scores only models the team gate "
                                         "passed", trust.keyring, trust.gate_experiment)
            c.answers = _answers(proof, features, metric, serialization, trusted, runtime)
        except Exception as exc:  # noqa: BLE001 - one unusable model does not hide the others
            c.error = one_line(exc)[:300]


def _answers(proof, features: pd.DataFrame, metric: str, serialization: str, trusted: list[str],
             runtime: str) -> np.ndarray:
    """A validated model's predictions on the held-out rows (the positive class's probability for
    roc_auc): its ONNX conversion under runtime=onnx (nothing unpickled), else scikit-learn's."""
    if runtime == "onnx":
        model, _ = model_io.load_onnx(proof.load_uri, proof.digest)
        labels, probabilities = model.outputs(features[model.input_schema.input_names()])
        return np.asarray(probabilities)[:, 1] if compare.needs_scores(metric) else np.asarray(labels)
    model, _ = model_io.load_model(proof.load_uri, serialization, trusted, expect_digest=proof.digest)
    return np.asarray(model.predict_proba(features))[:, 1] if compare.needs_scores(metric) \
        else np.asarray(model.predict(features))


def promotions(client, shared: str, alias: str) -> list[dict[str, Any]]:
    """The team model's versions, newest first: where each came from, who promoted it, the evidence."""
    champion = versions.current(client, shared, alias)
    out = []
    for v in sorted(versions.all_of(client, shared), key=lambda v: int(v.version), reverse=True):
        tags = v.tags or {}
        evidence = json.loads(tags.get(outputs.EVIDENCE_TAG) or "{}")
        out.append({"version": str(v.version), "champion": bool(champion and champion.version == v.version),
                    "from": tags.get(outputs.COPIED_FROM_TAG, ""), "member": tags.get(outputs.MEMBER_TAG, ""),
                    "promoted_by": tags.get(outputs.PROMOTED_BY_TAG, ""), "at": tags.get(outputs.PROMOTED_AT_TAG, ""),
                    "experiment": tags.get(outputs.PROMOTED_EXPERIMENT_TAG, ""), "test": evidence.get("test", ""),
                    "p_value": evidence.get("p_value", float("nan")),
                    "difference": evidence.get("accuracy_diff", evidence.get("mae_diff", float("nan"))),
                    "ci": f"[{evidence['ci_low']:.4f}, {evidence['ci_high']:.4f}]" if "ci_low" in evidence else ""})
    return out


def of_model(served: dict[str, tuple[str, str]], shared: str) -> bool:
    """True when every arm served a version of the team model or of a member's `<shared>.<member>`:
    the report's dataset and model, not another test in the same records."""
    names = [(versions.parse_model_uri(uri) or (None,))[0] for uri, _ in served.values()]
    return bool(names) and all(n is not None and (n == shared or n.startswith(f"{shared}.")) for n in names)


def ab_tests(client, target: str, ab: dict, promoted: list[dict[str, Any]], timeout_s: float,
             shared: str) -> list[dict[str, Any]]:
    """The A/B experiments in the serving records that served the team model `shared` (or its
    members'), with their state now: the verdict of the same test the promoting report runs (its
    task from the control's model, as that report finds it), and its labelled rows as that
    report counts them."""
    if not is_postgres(target) and not Path(target).is_file():
        return []
    out = []
    for exp in reads.experiments(target, timeout_s):
        name = exp["experiment"]
        done = [p["version"] for p in promoted if p["experiment"] == name]
        labelled: Any = "-"
        try:
            served = reads.served_models(target, name, timeout_s)
            if not of_model(served, shared):
                continue
            task = ab["task"] or abreport.task_of(client, served, exp["control"] if exp["control"] in served
                                                  else next(iter(served), None))
            result = abreport.build(target, name, ab, [], task, timeout_s)
            state, labelled = result["recommendation"], sum(int(a["labelled"]) for a in result["arms"])
        except Exception as exc:  # noqa: BLE001 - one experiment that cannot be read does not hide the rest
            state = f"cannot decide: {one_line(exc)[:200]}"
        out.append({"experiment": name, "arms": ", ".join(v["name"] for v in exp["variants"]),
                    "control": exp["control"], "requests": exp["requests"], "labelled_rows": labelled,
                    "state": state + (f" (promoted: version {', '.join(done)})" if done else "")})
    return out


def team_runs(client, team, days: float) -> list[Any]:
    """Every step run of the team's members' experiments (`<team>/<member>`) of the last `days`."""
    since = int((time.time() - days * 86400) * 1000)
    ids = [e.experiment_id for e in (client.get_experiment_by_name(f"{team.name}/{m['name']}") for m in team.members)
           if e is not None]
    if not ids:
        return []
    return handoff.all_runs(client, ids, f"attributes.start_time >= {since} and tags.`{outputs.STEP_TAG}` != ''")


def run_table(runs: Sequence[Any]) -> pd.DataFrame:
    """One row per step run: member, step, status, start, duration, peak memory, error type and
    the qa checks it failed."""
    rows = []
    for run in runs:
        tags, info = run.data.tags, run.info
        if tags.get(outputs.STEP_TAG) == "serve" and run.data.params.get("serve.mode") == "forever":
            continue  # a model server runs until stopped: its hours are not a step's duration
        end = info.end_time or info.start_time
        rows.append({"member": tags.get(outputs.MEMBER_TAG, ""), "step": tags.get(outputs.STEP_TAG, ""),
                     "status": info.status, "started": pd.Timestamp(info.start_time, unit="ms"),
                     "duration_s": (end - info.start_time) / 1000.0,
                     "peak_rss_mb": run.data.metrics.get("step.peak_rss_mb", float("nan")),
                     "error_type": tags.get(outputs.ERROR_TYPE_TAG, ""),
                     "qa_failed": tags.get(outputs.QaOutput.tag_name("failed_checks"), "")
                     if tags.get(outputs.STEP_TAG) == "qa" else ""})
    return pd.DataFrame(rows, columns=["member", "step", "status", "started", "duration_s", "peak_rss_mb",
                                       "error_type", "qa_failed"])


def experiments(client) -> list[str]:
    """Every experiment the login can read (the loop's monitor runs may be in any of them)."""
    return [e.experiment_id for e in client.search_experiments(max_results=1000)]
