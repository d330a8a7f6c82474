"""The loop's decision on a canaried challenger (docs/loop.md#the-canary): the sequential A/B test
(serving/abtest.py, the mSPRT: valid however often it is read) on the requests answered since
the challenger was registered, between the served model's arm and the `canary` arm. The
challenger wins: it takes the champion alias (only a version whose verdict a trusted key signed)
and the challenger alias is removed; it is significantly worse, or has answered
`loop.canary.max_rows` labelled rows without a decision: rolled back (the challenger alias is
removed, and the server's canary arm goes to weight 0); else the test waits for more labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlpipe.errors import DataError, one_line
from mlpipe.registry import versions
from mlpipe.run.outputs import LOOP_ORIGIN_TAG
from mlpipe.serving import abreport
from mlpipe.serving.records import reads
from mlpipe.serving.variants import CANARY


@dataclass
class Decision:
    action: str  # promote, rollback, wait
    line: str
    version: str  # the challenger's
    result: dict[str, Any] | None = None  # the A/B report it rests on


def pending(client, model: str, alias: str):
    """The challenger a retrain of the loop registered (tagged with its monitor run), or None."""
    version = versions.current(client, model, alias)
    return version if version is not None and (version.tags or {}).get(LOOP_ORIGIN_TAG) else None


def decide(client, challenger, target: str, experiment: str, ab: dict, task: str, timeout_s: float,
           max_rows: int) -> Decision:
    """What the A/B test of the canary since the challenger's registration says (see the module doc)."""
    version, since = str(challenger.version), float(challenger.creation_timestamp) / 1000
    try:
        result = abreport.build(target, experiment, ab, [], task, timeout_s, since_ts=since)
    except DataError as exc:
        return Decision("wait", f"canary v{version}: no A/B evidence yet ({one_line(exc)[:200]})", version)
    arms = {a["variant"]: a for a in result["arms"]}
    if CANARY not in arms:
        return Decision("wait", f"canary v{version}: the canary arm has answered nothing since v{version} was "
                                "registered; is the server running with serve.canary.alias set?", version, result)
    if result["winner"] == CANARY:
        return Decision("promote", f"canary v{version} wins: {result['recommendation']}", version, result)
    worse = any(t["challenger"] == CANARY and t["significant"] and not t["better"] for t in result["tests"])
    if worse:
        return Decision("rollback", f"canary v{version} loses: {result['recommendation']}", version, result)
    if arms[CANARY]["labelled"] >= max_rows:
        return Decision("rollback", f"canary v{version}: no decision after {arms[CANARY]['labelled']} labelled rows "
                                    f"(loop.canary.max_rows={max_rows}): {result['recommendation']}", version, result)
    return Decision("wait", f"canary v{version}: {result['recommendation']}", version, result)


def act(client, decision: Decision, target: str, experiment: str, model: str, rcfg, trust,
        timeout_s: float) -> dict[str, str]:
    """Promotes or rolls back as decided; the monitor run's tags for it."""
    tags = {"loop.decision": decision.action, "loop.canary_version": decision.version}
    if decision.action == "promote":
        served = reads.served_models(target, experiment, timeout_s)
        moved = abreport.promote(client, decision.result, served, model, rcfg.champion_alias, rcfg.lock_timeout_s,
                                 trust)  # its evidence kept on the version, under the lock
        tags |= {"loop.promoted": moved["version"], "loop.replaced": moved["previous_version"]}
    if decision.action in ("promote", "rollback"):
        client.delete_registered_model_alias(model, rcfg.challenger_alias)
    return tags
