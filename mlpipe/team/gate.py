"""The team's gate (`mlflow run . -e gate -P candidate=...`, docs/team.md#the-team-gate): a member's
candidate scored on the team evaluation set as the team's server runs it, its ONNX conversion
under onnxruntime, with nothing of the candidate unpickled, imported or run; the verdict is signed
by the step with the team's gate key (`team.gate.key`), which members do not hold.

The checks: the candidate never trained on the evaluation rows (its ingest held out the same
rows), its directory asks for no code (training/model_io.check_loader), it has an ONNX conversion
whose graph passes training/onnx_model.check_graph, `qa.thresholds` on the evaluation set, and it
trails the team champion (scored the same way) by at most `qa.champion.tolerance` on
`qa.champion.metrics`.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mlpipe.errors import ConfigError, UntrustedModelError, UpstreamError, one_line
from mlpipe.quality import gate as checks
from mlpipe.registry import versions
from mlpipe.team import report
from mlpipe.training import estimators, metric_names, model_io, onnx_model


@dataclass
class GateResult:
    """What the gate found: the candidate's logged model and files digest, its checks, its metrics."""

    candidate: str  # the URI asked about
    version: Any  # the registered version
    model_uri: str  # its source, models:/m-...
    digest: str = ""
    checks: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)

    @property
    def failed(self) -> list:
        return checks.failures(self.checks)


def resolve(client, candidate: str):
    """The registered version a candidate URI names (`models:/<model>.<member>@champion`, `/3`)."""
    parsed = versions.parse_model_uri(candidate) if candidate else None
    if parsed is None or versions.logged_model_id(candidate) is not None:
        raise ConfigError(f"gate: candidate={candidate!r}; expected a registered version, e.g. "
                          "-P candidate=models:/wine_model.bob@champion")
    version = versions.version_for_uri(client, candidate)
    if version is None:
        raise UpstreamError(f"gate: {candidate}: no such model version in the registry")
    return version


def scored(source: str, features: pd.DataFrame, truth: pd.Series, task: str) -> tuple[str, dict[str, float]]:
    """(files digest, metrics on the evaluation set) of a logged model's ONNX conversion; an
    UntrustedModelError when its directory names code or it has no acceptable conversion."""
    import yaml

    with tempfile.TemporaryDirectory(prefix="mlpipe-gate-") as tmp:
        local = model_io.download_model(source, tmp)
        digest = model_io.files_digest(local)
        model_io.check_loader(yaml.safe_load((Path(local) / "MLmodel").read_text()) or {}, Path(local), source)
        model = onnx_model.load(local, source)
    columns = model.input_schema.input_names()
    return digest, estimators.score(task, truth, model.predict(features[columns]))


def assess(client, candidate: str, features: pd.DataFrame, truth: pd.Series, task: str, qa, team, dcfg,
           alias: str) -> GateResult:
    """The gate's checks on `candidate` (see the module's docstring)."""
    version = resolve(client, candidate)
    result = GateResult(candidate, version, version.source)
    tags = dict(version.tags or {})
    unseen = report.unseen_rows(client, report.Candidate("", candidate, str(version.version), "", tags=tags), dcfg)
    result.checks.append(checks.Check("gate.unseen_rows", not unseen, None, "held out the evaluation rows", unseen))
    try:
        result.digest, result.metrics = scored(version.source, features, truth, task)
    except UntrustedModelError as exc:
        result.checks.append(checks.Check("gate.onnx", False, None, "an ONNX conversion and no code", one_line(exc)))
        return result
    result.checks.append(checks.Check("gate.onnx", True, None, "an ONNX conversion and no code", "onnxruntime"))
    for metric, limit in (qa.thresholds.get(task) or {}).items():
        if limit is not None:
            result.checks.append(checks.limit_check(f"gate.{metric}", result.metrics.get(metric), float(limit),
                                                    metric_names.greater_is_better(metric)))
    result.checks += _against_champion(client, team, alias, result, features, truth, task, qa)
    return result


def _against_champion(client, team, alias: str, result: GateResult, features, truth, task: str, qa) -> list:
    champion = versions.current(client, team.shared_model, alias)
    if champion is None or champion.source == result.model_uri or not qa.champion.enabled:
        return []
    try:
        _, theirs = scored(champion.source, features, truth, task)
    except (UntrustedModelError, UpstreamError) as exc:
        return [checks.Check("gate.champion", True, None, "the team champion scored",
                             f"not compared: {one_line(exc)[:200]}")]
    found, tolerance = [], float(qa.champion.tolerance)
    for metric in qa.champion.metrics.get(task) or []:
        better = metric_names.greater_is_better(metric)
        limit = theirs[metric] - tolerance if better else theirs[metric] + tolerance
        found.append(checks.limit_check(f"gate.champion.{metric}", result.metrics.get(metric), limit, better,
                                        f"{team.shared_model} v{champion.version}: {theirs[metric]:.4g}"))
    return found
