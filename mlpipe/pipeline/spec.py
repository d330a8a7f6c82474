"""The shape of the pipeline: step order, what each step consumes, which config it reads."""

from __future__ import annotations

from dataclasses import dataclass

from mlpipe.errors import ConfigError


@dataclass(frozen=True)
class StepSpec:
    name: str
    # The step whose run id this step takes as input (None for ingest).
    upstream: str | None
    # Top-level config groups whose resolved values enter the step's cache key.
    config_keys: tuple[str, ...]
    # False for serve, which takes a model URI rather than its upstream's run id.
    takes_run_id: bool = True

    @property
    def upstream_param(self) -> str | None:
        """Entry-point parameter carrying the upstream run id, e.g. `preprocess_run_id`."""
        return f"{self.upstream}_run_id" if self.upstream and self.takes_run_id else None


STEPS: dict[str, StepSpec] = {
    spec.name: spec
    for spec in (
        StepSpec("ingest", None, ("data",)),
        StepSpec("preprocess", "ingest", ("data", "preprocess", "seed", "serialization", "skops_trusted_types", "trust")),
        StepSpec("train", "preprocess", ("model", "train", "seed", "serialization", "skops_trusted_types", "runtime",
                                         "trust")),
        # qa and serve load models past the trust boundary: its settings enter their keys
        StepSpec("qa", "train", ("qa", "serialization", "skops_trusted_types", "runtime", "trust")),
        StepSpec("register", "qa", ("qa", "registry", "trust")),
        StepSpec("serve", "register", ("serve", "registry", "serialization", "skops_trusted_types", "trust"),
                 takes_run_id=False),
    )
}
ORDER = tuple(STEPS)
# Entry points that run through the same harness but are not pipeline steps: the team report
# reads the team's state and makes nothing a step consumes (never cached: its inputs are a
# moving registry and tracking store).
REPORTS: dict[str, StepSpec] = {"report": StepSpec("report", None, ("data", "team", "serve", "registry")),
                                 # the team gate signs a verdict on a member's candidate (docs/team.md)
                                 "gate": StepSpec("gate", None, ("data", "team", "qa", "registry", "trust")),
                                 # the closed loop's watch on the served model (docs/loop.md)
                                 "monitor": StepSpec("monitor", None, ("loop", "serve", "registry"))}


def spec_of(step: str) -> StepSpec:
    return STEPS.get(step) or REPORTS[step]
# Steps a sweep runs once, for the best job only, after every job has finished.
AFTER_SWEEP = ("register", "serve")


def select_steps(steps: object) -> list[str]:
    """`all`, `"train,qa"` or `["train", "qa"]` -> the steps in pipeline order.

    The selection must be contiguous, so each selected step's input is either made in
    this pipeline or by an earlier, finished run of its upstream step.
    """
    if steps is None or steps == "all":
        return list(ORDER)
    names = steps.split(",") if isinstance(steps, str) else list(steps)
    names = [str(n).strip() for n in names if str(n).strip()]
    unknown = [n for n in names if n not in STEPS]
    if unknown or not names:
        raise ConfigError(
            f"unknown step(s) {unknown or names} in main.steps; expected 'all' or a list of "
            f"{', '.join(ORDER)}"
        )
    positions = sorted({ORDER.index(n) for n in names})
    if positions != list(range(positions[0], positions[-1] + 1)):
        missing = [ORDER[i] for i in range(positions[0], positions[-1]) if i not in positions]
        raise ConfigError(
            f"main.steps must be contiguous: {','.join(names)} skips {','.join(missing)}"
        )
    return [ORDER[i] for i in positions]


def forced_steps(force: object) -> set[str]:
    """`main.force`: true -> every step, false -> none, a list -> those steps."""
    if force is True:
        return set(ORDER)
    if force in (False, None):
        return set()
    names = [force] if isinstance(force, str) else list(force)
    unknown = [n for n in names if n not in STEPS]
    if unknown:
        raise ConfigError(f"unknown step(s) {unknown} in main.force; expected true, false or a list of {', '.join(ORDER)}")
    return set(names)
