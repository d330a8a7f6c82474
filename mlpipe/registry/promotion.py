"""Whether a newly registered version should take the champion alias (a pure decision)."""

from __future__ import annotations

from dataclasses import dataclass

from mlpipe.errors import ConfigError


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(policy: str, metric: str, candidate: float | None, champion: float | None,
           greater_is_better: bool, has_champion: bool, validated: bool = True, replaces: bool = False) -> Decision:
    """`better` promotes only a strict improvement on `metric`; `always` / `never` as named.
    A version whose qa gate failed (registered through registry.allow_unvalidated) never is; one
    that qa let replace a champion this data cannot score (`replaces`) is, unless `never`."""
    if not validated:
        return Decision(False, "qa did not pass (registered through registry.allow_unvalidated)")
    if replaces and policy != "never":
        return Decision(True, "replaces a champion this data cannot score (qa.champion.on_incompatible=replace)")
    if policy == "always":
        return Decision(True, "registry.promotion=always")
    if policy == "never":
        return Decision(False, "registry.promotion=never")
    if policy != "better":
        raise ConfigError(f"registry.promotion={policy!r}; expected better, always or never")
    if not has_champion:
        return Decision(True, "no current champion")
    if candidate is None:
        return Decision(False, f"the new version has no {metric} to compare")
    if champion is None:
        return Decision(False, f"the champion has no {metric} to compare; promote by hand or set registry.promotion=always")
    better = candidate > champion if greater_is_better else candidate < champion
    relation = "beats" if better else "does not beat"
    return Decision(better, f"{metric} {candidate:.4f} {relation} champion's {champion:.4f}")
