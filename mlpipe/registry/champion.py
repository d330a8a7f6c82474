"""The champion a candidate is compared with in qa: `registry.model_name@registry.champion_alias`,
loaded past the trust boundary, or the reason this data cannot score it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from mlflow.tracking import MlflowClient

from mlpipe import signing
from mlpipe.registry import provenance, versions
from mlpipe.run.outputs import VERSION_METRIC_TAG
from mlpipe.training import metric_names, model_io


@dataclass
class Champion:
    """What qa compares with: `info` for the report (version, URI, a note), the loaded `model`
    when there is one to evaluate, else `reason` (a champion this data cannot score) or neither
    (nothing to compare: no champion yet, or the candidate is the champion). `metrics` are
    filled by qa once it has evaluated the model on its test rows."""

    info: dict[str, Any]
    model: Any = None
    reason: str | None = None
    metrics: dict[str, float] | None = field(default=None)

    @property
    def version(self) -> str | None:
        return self.info.get("version")


def find(client: MlflowClient, model_name: str, alias: str, candidate_uri: str, task: str, test: pd.DataFrame,
         target: str, trust: tuple[str, list[str]], tcfg) -> Champion:
    """The champion for a candidate of `task` scored on `test`: loaded only when qa validated it
    and its files are unchanged (an UntrustedModelError otherwise: a refused champion fails qa,
    it is not skipped); `trust` is (serialization, skops_trusted_types), `tcfg` the `trust` config
    group (the keys whose verdicts count)."""
    current = versions.current(client, model_name, alias)
    if current is None:
        return Champion({"note": f"no {model_name}@{alias} yet: nothing to compare"})
    info = {"version": current.version, "model_uri": f"models:/{model_name}@{alias}"}
    if current.source == candidate_uri:
        return Champion(info | {"note": "the candidate is the champion"})
    validated_on = (current.tags or {}).get(VERSION_METRIC_TAG)
    if validated_on and validated_on not in metric_names.TASK_METRICS[task]:
        return Champion(info, reason=f"the champion was validated on {validated_on}, not a {task} metric")
    proof = provenance.validated(client, f"models:/{model_name}/{current.version}",
                                 f"move {model_name}@{alias} to a version qa validated", signing.keyring(tcfg))
    model, _ = model_io.load_model(proof.load_uri, *trust, expect_digest=proof.digest)
    schema = model.metadata.get_input_schema()
    columns = set(schema.input_names()) if schema is not None else None
    if columns is not None and not columns <= set(test.columns) - {target}:
        missing = sorted(columns - set(test.columns))
        return Champion(info, reason=f"the champion's input schema needs columns this data lacks: {missing}")
    return Champion(info, model=model)
