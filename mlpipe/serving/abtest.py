"""A/B tests between served models, the pure part: variants, routing and the statistics.

No I/O here: the server (server.py) routes with `assign`/`thompson`, the report
(serve.mode=report) computes `compare` on the records the server kept (records.py).
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from mlpipe.errors import ConfigError, one_line

POLICIES = ("weighted", "thompson")


@dataclass(frozen=True)
class Variant:
    name: str
    model_uri: str
    weight: float = 1.0


def configured_variants(scfg: dict) -> list | None:
    """`serve.variants`, or the list in the YAML file `serve.variants_file` (not both)."""
    path = scfg.get("variants_file")
    if not path:
        return scfg.get("variants")
    if scfg.get("variants"):
        raise ConfigError("set serve.variants or serve.variants_file, not both")
    import yaml
    from pathlib import Path

    file = Path(str(path)).expanduser()
    if not file.is_file():
        raise ConfigError(f"serve.variants_file={path!r}: no such file (from {Path.cwd()})")
    try:
        loaded = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"serve.variants_file={path!r} is not valid YAML: {one_line(exc)}") from None
    if isinstance(loaded, dict) and "variants" in loaded:
        loaded = loaded["variants"]
    if not isinstance(loaded, list) or not loaded:
        raise ConfigError(f"serve.variants_file={path!r} must hold a non-empty list of {{name, model_uri, weight}}")
    return loaded


def parse_variants(raw: Sequence[Any] | None, default_uri: str) -> list[Variant]:
    """`serve.variants` -> checked variants; none configured = one variant `default` at `default_uri`."""
    if not raw:
        return [Variant("default", default_uri, 1.0)]
    variants, seen = [], set()
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) - {"name", "model_uri", "weight"}:
            raise ConfigError(f"serve.variants[{i}]={item!r}; expected a mapping with name, model_uri and weight")
        name, uri = str(item.get("name") or "").strip(), str(item.get("model_uri") or "").strip()
        if not name or not uri:
            raise ConfigError(f"serve.variants[{i}] needs a name and a model_uri, got {item!r}")
        if name in seen:
            raise ConfigError(f"serve.variants: the name {name!r} is used twice; variant names must be unique")
        try:
            weight = float(item.get("weight", 1.0))
        except (TypeError, ValueError):
            raise ConfigError(f"serve.variants[{i}].weight={item.get('weight')!r} is not a number") from None
        if not math.isfinite(weight) or weight < 0:
            raise ConfigError(f"serve.variants[{i}].weight={weight}; expected a number >= 0")
        seen.add(name)
        variants.append(Variant(name, uri, weight))
    if sum(v.weight for v in variants) <= 0:
        raise ConfigError("serve.variants: every weight is 0; at least one variant needs a positive weight")
    return variants


def unit_hash(experiment: str, key: str) -> float:
    """A stable number in [0, 1) for (experiment, key): the same key lands in the same arm."""
    digest = hashlib.sha256(f"{experiment}\x1f{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def pick(weights: Sequence[float], u: float) -> int:
    """The index whose slice of the cumulative weights contains u * total."""
    total = float(sum(weights))
    point, acc = u * total, 0.0
    last = max(i for i, w in enumerate(weights) if w > 0)
    for i, w in enumerate(weights):
        acc += w
        if w > 0 and point < acc:
            return i
    return last


def assign(weights: Sequence[float], experiment: str, key: str | None, rng: random.Random) -> int:
    """Sticky by key (hash of experiment and key against the weights), random without one."""
    return pick(weights, unit_hash(experiment, key) if key else rng.random())


def thompson(successes: Sequence[int], failures: Sequence[int], rng: np.random.Generator) -> int:
    """Thompson sampling: draw from each arm's Beta(1 + correct, 1 + wrong), take the largest."""
    draws = [rng.beta(1 + s, 1 + f) for s, f in zip(successes, failures)]
    return int(np.argmax(draws))


# -- statistics --------------------------------------------------------------------------------

def two_proportion_z(success_a: int, n_a: int, success_b: int, n_b: int) -> tuple[float, float]:
    """Two-sided z test of equal proportions (pooled). Returns (z, p)."""
    from scipy.stats import norm

    if n_a == 0 or n_b == 0:
        return float("nan"), float("nan")
    pooled = (success_a + success_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0:
        return 0.0, 1.0
    z = (success_b / n_b - success_a / n_a) / se
    return float(z), float(2 * norm.sf(abs(z)))


def chi_square(successes: Sequence[int], totals: Sequence[int]) -> tuple[float, float]:
    """Chi-square test of independence of arm and outcome over all arms. Returns (chi2, p)."""
    from scipy.stats import chi2_contingency

    table = np.array([[s, n - s] for s, n in zip(successes, totals)], dtype=float)
    if (table.sum(axis=0) == 0).any() or (table.sum(axis=1) == 0).any():
        return 0.0, 1.0
    chi2, p, _, _ = chi2_contingency(table, correction=False)
    return float(chi2), float(p)


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Two-sided Mann-Whitney U test. Returns (U of b, p)."""
    from scipy.stats import mannwhitneyu

    if len(a) == 0 or len(b) == 0:
        return float("nan"), float("nan")
    result = mannwhitneyu(b, a, alternative="two-sided")
    return float(result.statistic), float(result.pvalue)


def arm_summary(name: str, latencies: Sequence[float], outcomes: Sequence[float], task: str) -> dict[str, Any]:
    """n, latency percentiles and the outcome measure of one arm. outcomes: 1/0 correct per
    labelled row (classification) or absolute errors (regression)."""
    lat = np.asarray(latencies, dtype=float)
    out = np.asarray(outcomes, dtype=float)
    row: dict[str, Any] = {"variant": name, "requests": int(lat.size), "labelled": int(out.size)}
    for q in (50, 95, 99):
        row[f"latency_p{q}_ms"] = float(np.percentile(lat, q)) if lat.size else float("nan")
    if task == "classification":
        row["correct"] = int(out.sum())
        row["accuracy"] = float(out.mean()) if out.size else float("nan")
    else:
        row["mae"] = float(out.mean()) if out.size else float("nan")
        row["rmse"] = float(np.sqrt(np.mean(out**2))) if out.size else float("nan")
    return row


METHODS = ("sequential", "fixed")


def compare(arms: Sequence[dict[str, Any]], task: str, *, control: str, min_samples: int,
            alpha: float, method: str, sequential: dict[str, Any]) -> dict[str, Any]:
    """Each challenger against the control, and one recommendation.

    arms: dicts with name, latencies (ms), outcomes (see arm_summary) and optionally times (when
    each outcome's label arrived; else the outcomes' order). method=sequential (the default):
    the mSPRT's always-valid p-value and confidence sequence (sequential.py), valid however
    often the report is re-run while labels arrive; `sequential` holds its settings (serve.ab's
    tau, burn_in and default_tau: the mixture's effect-size scale, given or by the default
    rule, and the labelled rows per arm before its first look). method=fixed: the fixed-horizon tests, valid only when
    read once at a sample size fixed in advance: accuracy by a two-proportion z test per
    challenger (and a chi-square over all arms when there are more than two), regression by
    Mann-Whitney U on absolute errors. Latency: Mann-Whitney U. Alpha is split over the
    challengers (Bonferroni). Below `min_samples` labelled rows in an arm, nothing is decided."""
    if method not in METHODS:
        raise ConfigError(f"serve.ab.method={method!r}; expected sequential or fixed")
    if task not in ("classification", "regression"):
        raise ConfigError(f"A/B task {task!r}; expected classification or regression")
    names = [a["name"] for a in arms]
    if control not in names:
        raise ConfigError(f"serve.ab.control={control!r} is not a variant; variants: {', '.join(names)}")
    by_name = {a["name"]: a for a in arms}
    summaries = [arm_summary(a["name"], a["latencies"], a["outcomes"], task) for a in arms]
    challengers = [n for n in names if n != control]
    alpha_each = alpha / max(1, len(challengers))
    base = by_name[control]
    tests, short = [], [s["variant"] for s in summaries if s["labelled"] < min_samples]
    for name in challengers:
        arm = by_name[name]
        test: dict[str, Any] = {"control": control, "challenger": name, "alpha": alpha_each}
        if method == "sequential":
            test |= _sequential(base, arm, task, alpha_each, sequential)
        elif task == "classification":
            a, b = np.asarray(base["outcomes"]), np.asarray(arm["outcomes"])
            z, p = two_proportion_z(int(a.sum()), a.size, int(b.sum()), b.size)
            diff = (b.mean() - a.mean()) if a.size and b.size else float("nan")
            test |= {"test": "two-proportion z", "statistic": z, "p_value": p, "accuracy_diff": float(diff),
                     "better": bool(diff > 0)}
        else:
            u, p = mann_whitney(base["outcomes"], arm["outcomes"])
            diff = (np.mean(arm["outcomes"]) - np.mean(base["outcomes"])) if len(arm["outcomes"]) and \
                len(base["outcomes"]) else float("nan")
            test |= {"test": "Mann-Whitney U (absolute error)", "statistic": u, "p_value": p,
                     "mae_diff": float(diff), "better": bool(diff < 0)}
        lu, lp = mann_whitney(base["latencies"], arm["latencies"])
        test |= {"latency_test": "Mann-Whitney U", "latency_statistic": lu, "latency_p_value": lp}
        test["significant"] = bool(not short and math.isfinite(test["p_value"]) and test["p_value"] < alpha_each
                                   and not test.get("empty_interval"))
        tests.append(test)
    result: dict[str, Any] = {"task": task, "control": control, "min_samples": min_samples, "alpha": alpha,
                              "method": method, "arms": summaries, "tests": tests}
    if task == "classification" and len(arms) > 2:
        chi2, p = chi_square([s["correct"] for s in summaries], [s["labelled"] for s in summaries])
        result["overall"] = {"test": "chi-square", "statistic": chi2, "p_value": p}
    result["recommendation"], result["winner"] = _recommend(tests, short, control, min_samples, summaries)
    return result


# What an empty confidence sequence means, where the report would print [low, high] with low > high.
EMPTY_INTERVAL = ("the confidence sequence is empty: the running intervals no longer overlap, so no single "
                  "difference fits every look (the difference moved over time, or the same rows came again "
                  "and again); not significant whatever p says: start a new serve.experiment")


def _sequential(base: dict, arm: dict, task: str, alpha: float, settings: dict[str, Any]) -> dict[str, Any]:
    """The mSPRT of one challenger against the control over their labelled rows merged in the
    order the labels arrived (a stable sort on `times`)."""
    from mlpipe.serving import sequential

    out_c, out_t = list(base["outcomes"]), list(arm["outcomes"])
    t_c = list(base.get("times") or range(len(out_c)))
    t_t = list(arm.get("times") or range(len(out_t)))
    order = sorted([(t, 0, i) for i, t in enumerate(t_c)] + [(t, 1, i) for i, t in enumerate(t_t)])
    arms = [a for _, a, _ in order]
    outcomes = [(out_t if a else out_c)[i] for _, a, i in order]
    # the mixture's scale must not move as data arrives: from the control's first burn_in labelled rows only
    burn_in = int(settings["burn_in"])
    first = [outcomes[i] for i, a in enumerate(arms) if a == 0][:burn_in]
    tau = float(settings["tau"]) if settings["tau"] else sequential.default_tau(task, first, settings["default_tau"])
    seq = sequential.always_valid(arms, outcomes, tau=tau, alpha=alpha, burn_in=burn_in)
    name = "accuracy_diff" if task == "classification" else "mae_diff"
    diff = seq.diff
    return {"test": "mSPRT (always valid)", "statistic": float("nan"), "p_value": seq.p_value, name: diff,
            "ci_low": seq.ci_low, "ci_high": seq.ci_high, "tau": tau, "looks": seq.looks,
            "empty_interval": bool(seq.ci_low > seq.ci_high),
            "better": bool(diff > 0) if task == "classification" else bool(diff < 0)}


def _recommend(tests, short, control, min_samples, summaries) -> tuple[str, str | None]:
    if short:
        have = ", ".join(f"{s['variant']}={s['labelled']}" for s in summaries)
        return (f"collect more data: every arm needs {min_samples} labelled rows (have {have}); "
                f"keep {control}", None)
    broken = [t["challenger"] for t in tests if t.get("empty_interval")]
    winners = [t for t in tests if t["significant"] and t["better"]]
    if winners:
        key = "accuracy_diff" if "accuracy_diff" in winners[0] else "mae_diff"
        best = max(winners, key=lambda t: t[key] if key == "accuracy_diff" else -t[key])
        return (f"promote {best['challenger']}: better than {control} "
                f"(p={best['p_value']:.3g} < {best['alpha']:.3g})", best["challenger"])
    worse = [t["challenger"] for t in tests if t["significant"] and not t["better"]]
    if worse:
        return f"keep {control}: {', '.join(worse)} significantly worse", None
    if broken:
        return f"keep {control}: the test of {', '.join(broken)} is void ({EMPTY_INTERVAL})", None
    return f"keep {control}: no significant difference", None
