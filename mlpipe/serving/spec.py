"""What a server process serves, JSON-able: the variants, the routing, batching and limits, the
records, the trust boundary (worker processes read it from MLPIPE_SERVE_SPEC)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from mlpipe.errors import ConfigError
from mlpipe.serving import abtest

SPEC_ENV = "MLPIPE_SERVE_SPEC"


@dataclass
class ServeSpec:
    """Everything a server process needs, JSON-able (worker processes read it from SPEC_ENV)."""

    variants: list[dict]
    experiment: str
    records: str
    policy: str
    key_header: str
    override_header: str
    allow_override: bool  # serve.routing.allow_override
    batching: dict
    limits: dict
    # serve.feedback: secret_file, max_body_kb, max_label_chars (serving/feedback.py)
    feedback: dict
    refresh_seconds: float
    flush_ms: float
    records_timeout_s: float  # serve.records_timeout_s
    thompson_refresh_seconds: float
    # the variant the A/B report compares the others with (serve.ab.control, else the first)
    control: str
    # the trust boundary for model files (top-level `serialization`, `skops_trusted_types`)
    serialization: str
    trusted_types: list[str]
    # serve.allow_unvalidated: load models no passing qa run vouches for (registry/provenance.py)
    allow_unvalidated: bool = False
    seed: int | None = None  # tests: a seeded router
    workers: int = 1  # serve.workers: processes writing the same records
    # serve.runtime: onnx (model.onnx under onnxruntime, nothing unpickled) or sklearn (MLflow's pyfunc)
    runtime: str = "onnx"
    # `trust`: the public keys whose signed verdicts count, and the revoked key ids (mlpipe/signing.py)
    signers: list[str] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)
    gate_experiment: str | None = None  # under serve.team_variants: the team gate's experiment id
    onnx_threads: list[int] = field(default_factory=lambda: [1, 1])  # serve.onnx: onnxruntime's intra-op and inter-op threads
    inputs: dict = field(default_factory=lambda: {"sample_rate": 0.0, "columns": None, "private": [],
                                                  "max_chars": 65536})  # serve.inputs (serving/capture.py)
    canary: dict | None = None  # serve.canary {alias, weight} when its alias is set (variants.CANARY)

    @classmethod
    def from_config(cls, scfg: dict, default_uri: str, records_path: str, serialization: str,
                    trusted_types: list[str], tcfg=None, team=None) -> "ServeSpec":
        """`tcfg`: the `trust` group; its keys are resolved here (serve.allow_unvalidated: none needed),
        and with serve.team_variants those of `team`'s gate (registry/provenance.trust_for)."""
        from mlflow import MlflowClient

        from mlpipe.registry import provenance

        variants = abtest.parse_variants(abtest.configured_variants(scfg), default_uri)
        # types and ranges were checked when the config was composed (mlpipe/schema/)
        routing, limits = scfg["routing"], scfg["limits"]
        trust = provenance.trust_for(MlflowClient(), tcfg, team if scfg.get("team_variants") else None) \
            if tcfg is not None and not scfg["allow_unvalidated"] else None
        keys = trust.keyring if trust else None
        return cls(variants=[v.__dict__ for v in variants], experiment=str(scfg["experiment"]),
                   records=records_path, policy=routing["policy"], key_header=routing["key_header"],
                   override_header=routing["override_header"], allow_override=bool(routing["allow_override"]),
                   feedback=dict(scfg["feedback"]), batching=dict(scfg["batching"]), inputs=dict(scfg["inputs"]),
                   canary=_canary(scfg, variants),
                   limits=dict(limits), refresh_seconds=float(scfg["refresh_seconds"]),
                   flush_ms=float(scfg["records_flush_ms"]), records_timeout_s=float(scfg["records_timeout_s"]),
                   thompson_refresh_seconds=float(routing["thompson_refresh_seconds"]),
                   serialization=serialization, trusted_types=list(trusted_types),
                   allow_unvalidated=bool(scfg["allow_unvalidated"]), control=_control(scfg, variants),
                   workers=int(scfg["workers"]), runtime=str(scfg["runtime"]),
                   onnx_threads=[int(scfg["onnx"]["intra_op_threads"]), int(scfg["onnx"]["inter_op_threads"])],
                   signers=keys.texts() if keys else [], revoked=sorted(keys.revoked) if keys else [],
                   gate_experiment=trust.gate_experiment if trust else None)

    def keyring(self):
        from mlpipe import signing

        return signing.Keyring.from_texts(self.signers, self.revoked)

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> "ServeSpec":
        return cls(**json.loads(text))


def _canary(scfg: dict, variants) -> dict | None:
    """serve.canary when its alias is set: beside exactly one served registered model."""
    from mlpipe.registry.versions import parse_model_uri

    canary = scfg.get("canary") or {}
    if not canary.get("alias"):
        return None
    if scfg["routing"]["policy"] != "weighted":
        raise ConfigError(f"serve.canary.alias={canary['alias']!r} needs serve.routing.policy=weighted (the canary "
                          f"answers serve.canary.weight of requests), not {scfg['routing']['policy']}")
    if len(variants) != 1 or parse_model_uri(variants[0].model_uri) is None:
        raise ConfigError(f"serve.canary.alias={canary['alias']!r} needs one served registered model "
                          "(models:/<name>@<alias>), not serve.variants or a path")
    return {"alias": str(canary["alias"]), "weight": float(canary["weight"])}


def _control(scfg: dict, variants) -> str:
    names = [v.name for v in variants]
    control = scfg["ab"]["control"] or names[0]
    if control not in names:
        raise ConfigError(f"serve.ab.control={control!r} is not a served variant; variants: {', '.join(names)}")
    return control
