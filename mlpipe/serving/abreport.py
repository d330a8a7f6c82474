"""The A/B report (serve.mode=report): per-arm figures and tests over the serving records, a
recommendation, and with `serve.ab.promote` the champion alias moved to a significant winner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mlpipe.errors import ConfigError, DataError, UpstreamError
from mlpipe.registry import provenance, versions
from mlpipe.reports import cards, plots
from mlpipe.run import outputs
from mlpipe.run.storage import sqlite_path
from mlpipe.serving import abtest
from mlpipe.serving.records import reads
from mlpipe.serving.records.db import is_postgres


def default_records_path(tracking_uri: str) -> Path:
    """Beside a SQLite tracking store, else ~/.mlpipe/serve-records.db."""
    database = sqlite_path(tracking_uri)
    if database:
        return database.parent / "serve-records.db"
    return Path("~/.mlpipe/serve-records.db").expanduser()


def records_path(scfg: dict, tracking_uri: str) -> str:
    """`serve.records`: a postgresql:// URL as given, a file path made absolute, else the default."""
    target = scfg.get("records")
    if target and is_postgres(target):
        return str(target)
    return str(Path(str(target)).expanduser().resolve() if target else default_records_path(tracking_uri))


def outcomes(pairs: list[tuple[Any, Any]], task: str) -> list[float]:
    """1/0 per labelled row (classification), |prediction - label| (regression)."""
    if task == "classification":
        return [float(p == t) for p, t in pairs]
    try:
        return [abs(float(p) - float(t)) for p, t in pairs]
    except (TypeError, ValueError) as exc:
        raise DataError(f"regression feedback must be numbers: {exc}") from exc


def build(path: Path, experiment: str, ab: dict, configured: list[str], task: str, timeout_s: float,
          since_ts: float = 0.0) -> dict[str, Any]:
    """The A/B report of `experiment` from the records at `path` (read within `timeout_s`), of the
    requests answered from `since_ts` on (the loop's canary: from the challenger's registration)."""
    data = reads.labelled_rows(path, experiment, timeout_s, since_ts)
    arms = list(data["latencies"])
    if not arms:
        raise DataError(f"no answered requests for A/B experiment {experiment!r} in {path}")
    # the command line's serve.ab.control, else the control the server recorded when it started
    control = ab.get("control") or reads.served_control(path, experiment, timeout_s) or \
        next((n for n in configured if n in arms), arms[0])
    if control not in arms:
        raise ConfigError(f"serve.ab.control={control!r} has no answered requests in {experiment!r}; "
                          f"arms: {', '.join(arms)}")
    ordered = [control] + [a for a in arms if a != control]
    # serve.ab.repeats=once: a row sent again (same values) is one piece of evidence, its first label
    stream, repeats = reads.distinct(data["stream"]) if ab["repeats"] == "once" else (data["stream"], {})
    inputs = [{"name": a, "latencies": data["latencies"][a],
               "outcomes": outcomes([(r[0], r[1]) for r in stream.get(a, [])], task),
               "times": [r[2] for r in stream.get(a, [])]} for a in ordered]
    result = abtest.compare(inputs, task, control=control, min_samples=int(ab["min_samples"]),
                            alpha=float(ab["alpha"]), method=ab["method"], sequential=ab)
    for arm in result["arms"]:
        arm["errors"] = int(data["errors"].get(arm["variant"], 0))
        arm["repeats"] = int(repeats.get(arm["variant"], 0))  # labelled rows left out as repeats
        arm["model_versions"] = ", ".join(sorted(data["versions"].get(arm["variant"], set())))
        # whose model answered: the served versions' team.member (docs/team.md), else ""
        arm["member"] = ", ".join(sorted(data["authors"].get(arm["variant"], set())))
    result["latencies"] = {a: data["latencies"][a] for a in ordered}
    result["experiment"] = experiment
    return result


def promote_winner(client, result: dict[str, Any], served: dict[str, tuple[str, str]], rcfg: dict,
                   team, tcfg) -> dict[str, str] | None:
    """serve.ab.promote: a winner takes the champion alias: of the team model under a team (a copy
    of the member's version, by the lead), else of registry.model_name. None: no winner. Only a
    version whose verdict a key of `tcfg` (the `trust` group) signed may take it."""
    if not result["winner"]:
        return None
    if team.name:  # into the team model: only what the team gate passed (docs/team.md#the-team-gate)
        return promote_to_team(client, result, served, team.shared_model, rcfg["champion_alias"],
                               rcfg["lock_timeout_s"], team.member, provenance.trust_for(client, tcfg, team))
    return promote(client, result, served, rcfg["model_name"], rcfg["champion_alias"], rcfg["lock_timeout_s"],
                   provenance.trust_for(client, tcfg))


def promote(client, result: dict[str, Any], served: dict[str, tuple[str, str]], model_name: str,
            alias: str, lock_timeout_s: float, keyring) -> dict[str, str]:
    """Moves `alias` of `model_name` to the winner's version (under the registry lock), its
    evidence (`ab.evidence`) and experiment kept on the version first."""
    winner, uri, name, version = _served_version(result, served)
    if name is None:
        raise ConfigError(f"cannot promote variant {winner!r}: it serves {uri} (version {version}), not a registered "
                          "model version")
    if name != model_name:
        raise ConfigError(f"cannot promote variant {winner!r}: it serves {name} version {version}, not a version of "
                          f"registry.model_name={model_name!r}")
    _check_validated(client, name, version, f"{model_name}@{alias} was not moved", keyring)
    with versions.promotion_lock(model_name, lock_timeout_s):  # what it rests on is kept before the alias moves
        before = versions.current(client, model_name, alias)
        client.set_model_version_tag(model_name, version, outputs.PROMOTED_EXPERIMENT_TAG, result["experiment"])
        client.set_model_version_tag(model_name, version, outputs.EVIDENCE_TAG, evidence_tag(evidence(result)))
        versions.set_alias(client, model_name, alias, version)
    return {"model": model_name, "alias": alias, "version": version,
            "previous_version": str(before.version) if before else "none"}


def _served_version(result: dict[str, Any], served: dict[str, tuple[str, str]]) -> tuple[str, str, str | None, str]:
    """(winner, the URI it serves, the registered model's name or None, the version it answered with)."""
    winner = result["winner"]
    uri, version = served[winner]
    parsed = versions.parse_model_uri(uri)
    return winner, uri, parsed[0] if parsed and version.isdigit() else None, version


def _check_validated(client, name: str, version: str, what: str, trust) -> None:
    """Only a version qa validated, its files unchanged, may take an alias (registry/provenance.py);
    `what` says what was not done otherwise."""
    proof = provenance.validated(client, f"models:/{name}/{version}", f"{what}; promote a version qa validated",
                                 trust.keyring, trust.gate_experiment)
    provenance.check_files(proof.load_uri, proof.digest, what)


def evidence(result: dict[str, Any]) -> dict[str, Any]:
    """What the promotion rests on, kept on the promoted version (`ab.evidence`): the winner's
    test against the control and each arm's counts."""
    test = next(t for t in result["tests"] if t["challenger"] == result["winner"])
    keep = ("test", "p_value", "alpha", "accuracy_diff", "mae_diff", "ci_low", "ci_high", "tau", "looks")
    return {"experiment": result["experiment"], "method": result.get("method", "fixed"), "control": result["control"],
            "winner": result["winner"], **{k: test[k] for k in keep if k in test},
            "arms": {a["variant"]: {"member": a.get("member", ""), "labelled": a["labelled"],
                                    "requests": a["requests"]} for a in result["arms"]}}


def promote_to_team(client, result: dict[str, Any], served: dict[str, tuple[str, str]], team_model: str,
                    alias: str, lock_timeout_s: float, promoted_by: str, keyring) -> dict[str, str]:
    """Under a team: the winner's version (a member's `<team_model>.<member>`) copied into the
    team model (versions.copy_version: same files, run and lineage tags, plus where it came from
    and the evidence), which then takes `alias`. Only the lead may (docs/team.md)."""
    import datetime

    winner, uri, name, version = _served_version(result, served)
    if name is None or not (name == team_model or name.startswith(f"{team_model}.")):
        raise ConfigError(f"cannot promote variant {winner!r}: it serves {uri} (version {version}), not a version of "
                          f"the team model {team_model} or of a member's {team_model}.<member>")
    _check_validated(client, name, version, f"{team_model}@{alias} was not moved", keyring)
    source = client.get_model_version(name, version)
    with versions.promotion_lock(team_model, lock_timeout_s):
        before = versions.current(client, team_model, alias)
        target = version if name == team_model else _copy_of(client, team_model, f"{name}/{version}")
        if target is None:  # not copied yet (a report re-run finds the copy it made before)
            stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            target = versions.copy_version(client, source, team_model, {
                outputs.COPIED_FROM_TAG: f"{name}/{version}", outputs.PROMOTED_EXPERIMENT_TAG: result["experiment"],
                outputs.PROMOTED_BY_TAG: promoted_by, outputs.PROMOTED_AT_TAG: stamp,
                outputs.EVIDENCE_TAG: evidence_tag(evidence(result))},
                f"{name} version {version}, promoted by A/B experiment {result['experiment']}: "
                f"{result['recommendation']}").version
        versions.set_alias(client, team_model, alias, str(target))
    return {"model": team_model, "alias": alias, "version": str(target), "source": f"{name}/{version}",
            "previous_version": str(before.version) if before else "none"}


def _copy_of(client, team_model: str, source: str) -> str | None:
    """The team model's version already copied from `source` (`<model>.<member>/<version>`)."""
    return next((str(v.version) for v in versions.all_of(client, team_model)
                 if (v.tags or {}).get(outputs.COPIED_FROM_TAG) == source), None)


def evidence_tag(evidence: dict[str, Any]) -> str:
    """The evidence as a tag value (at most 5000 characters): the per-arm counts go first when
    there are too many arms, so the JSON stays whole."""
    import json

    text = json.dumps(evidence)
    return text if len(text) <= 5000 else json.dumps({k: v for k, v in evidence.items() if k != "arms"})


def task_of(client, served: dict[str, tuple[str, str]], arm: str | None) -> str:
    """The task the control's model was trained for (its train run's hand-off)."""
    from mlpipe.run.outputs import TrainOutput

    if arm and arm in served:
        version = versions.version_for_uri(client, served[arm][0])
        if version is not None and version.run_id:
            try:
                return TrainOutput.from_run(client.get_run(version.run_id)).task
            except UpstreamError:
                pass  # a model this pipeline's train did not make: the config must say
    raise ConfigError("cannot tell the A/B task from the served model; set serve.ab.task to classification or "
                      "regression")


def arm_metrics(result: dict[str, Any]) -> dict[str, float]:
    """Per-arm figures as run metrics (`ab.<variant>.<figure>`), NaN left out."""
    metrics = {}
    for arm in result["arms"]:
        for key in ("requests", "labelled", "accuracy", "mae", "latency_p50_ms", "latency_p99_ms"):
            if key in arm and arm[key] == arm[key]:  # not NaN
                metrics[f"ab.{arm['variant']}.{key}"] = float(arm[key])
    return metrics


def format_report(result: dict[str, Any]) -> str:
    """The verdict and one line per arm, as the terminal shows them (control first)."""
    measure = "accuracy" if result["task"] == "classification" else "mae"
    rows = [["variant", "model versions", "requests", "errors", "labelled", measure, "p50 ms", "p99 ms", "member"]]
    for arm in result["arms"]:
        value = arm.get(measure, float("nan"))
        rows.append([arm["variant"] + (" (control)" if arm["variant"] == result["control"] else ""),
                     arm["model_versions"] or "-", str(arm["requests"]), str(arm["errors"]), str(arm["labelled"]),
                     "-" if value != value else f"{value:.4f}", f"{arm['latency_p50_ms']:.1f}",
                     f"{arm['latency_p99_ms']:.1f}", arm.get("member") or "-"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    repeated = [f"{a['variant']} {a['repeats']}" for a in result["arms"] if a.get("repeats")]
    if repeated:
        lines.append(f"  labelled = distinct rows; repeats of a row counted once (serve.ab.repeats=once), left out: "
                     f"{', '.join(repeated)}")
    lines += [f"  {t['challenger']} vs {result['control']}: {t['test']}, p={t['p_value']:.3g}" + _interval(t)
              for t in result["tests"]]
    return "\n".join([f"A/B experiment {result['experiment']}: {result['recommendation']}", *lines])


def _interval(test: dict[str, Any]) -> str:
    """The confidence sequence as the terminal shows it; an empty one said in words, never as
    [low, high] with low above high."""
    if "ci_low" not in test:
        return ""
    if test.get("empty_interval"):
        return f"; {abtest.EMPTY_INTERVAL}"
    return (f", {(1 - test['alpha']) * 100:g}% confidence sequence for the difference [{test['ci_low']:.4f}, "
            f"{test['ci_high']:.4f}]")


def promotion_line(promote: bool, moved: dict[str, str] | None, result: dict[str, Any]) -> str:
    """The report's last line: what it changed in the registry, or that it changed nothing."""
    if not promote:
        return "read-only report: no alias moved (serve.ab.promote=true moves the champion to a winner)"
    if moved is None:
        return f"serve.ab.promote=true: no alias moved ({result['recommendation'].split(':', 1)[0]})"
    copied = f", a copy of {moved['source']}" if moved.get("source") and moved["source"] != \
        f"{moved['model']}/{moved['version']}" else ""
    if moved["previous_version"] == moved["version"]:
        return f"serve.ab.promote=true: {moved['model']}@{moved['alias']} already holds version {moved['version']}{copied}"
    before = "no version held it before" if moved["previous_version"] == "none" else \
        f"it was version {moved['previous_version']}"
    return f"promoted: {moved['model']}@{moved['alias']} is now version {moved['version']}{copied} ({before})"


def fill_card(card: cards.Card, result: dict[str, Any], ab: dict[str, Any]) -> None:
    """The tables, bar charts and latency histogram (`serve.ab.plot_dpi`, `latency_bins`)."""
    task = result["task"]
    measure = "accuracy" if task == "classification" else "mae"
    counted = "distinct rows" if ab["repeats"] == "once" else "every row"  # serve.ab.repeats
    header = ["variant", "member", "model versions", "requests", "errors", f"labelled ({counted})",
              "repeats left out", measure, "p50 ms", "p95 ms", "p99 ms"]
    card.add_table("Arms", header, [[a["variant"], a.get("member") or "-", a["model_versions"], a["requests"],
                                     a["errors"], a["labelled"], a["repeats"], a[measure], a["latency_p50_ms"],
                                     a["latency_p95_ms"], a["latency_p99_ms"]] for a in result["arms"]])
    diff = "accuracy_diff" if task == "classification" else "mae_diff"
    card.add_table("Tests against the control", ["challenger", "test", "difference", "CI low", "CI high", "p",
                                                 "alpha (Bonferroni)", "significant", "latency p (Mann-Whitney U)"],
                   [[t["challenger"], t["test"], t.get(diff, float("nan")),
                     "empty" if t.get("empty_interval") else t.get("ci_low", float("nan")),
                     "empty" if t.get("empty_interval") else t.get("ci_high", float("nan")), t["p_value"], t["alpha"],
                     t["significant"],
                     t["latency_p_value"]] for t in result["tests"]])
    names = [a["variant"] for a in result["arms"]]
    card.add_plot(f"{measure} per arm", plots.bars(names, [_num(a[measure]) for a in result["arms"]],
                                                   f"{measure} per arm"))
    card.add_plot("latency p50 / p99 (ms)", plots.paired_bars(
        names, [_num(a["latency_p50_ms"]) for a in result["arms"]],
        [_num(a["latency_p99_ms"]) for a in result["arms"]], ("p50", "p99"), "latency per arm (ms)"))
    card.add_image("latency distribution", latency_histogram(result["latencies"], ab["plot_dpi"], ab["latency_bins"]))
    card.outputs["recommendation"] = result["recommendation"]


def _num(value: float) -> float:
    return 0.0 if value is None or not np.isfinite(value) else float(value)


def latency_histogram(latencies: dict[str, list[float]], dpi: float, bins: int) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=dpi)
    values = [v for vs in latencies.values() for v in vs]
    edges = np.histogram_bin_edges(values, bins=bins) if values else bins
    for name, vs in latencies.items():
        ax.hist(vs, bins=edges, alpha=0.5, label=f"{name} (n={len(vs)})")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("requests")
    ax.legend()
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    plt.close(fig)
    return out.getvalue()
