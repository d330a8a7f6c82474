"""A config group's fields with ranges or choices, checked when the group's dataclass is built:
a bad value is a ConfigError naming its key."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from mlpipe.errors import ConfigError


def spec(ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
         choices: tuple[str, ...] | None = None, default: Any = MISSING) -> Any:
    """A field with a range (`ge` <= value, `gt` < value, ...) or a set of choices; None passes."""
    return field(default=default, metadata={"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices})


@dataclass
class Checked:
    """Checks each field's range or choices when built; KEY is the group's dotted path."""

    KEY = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value, rules = getattr(self, f.name), f.metadata
            if value is None or not rules:
                continue
            name = f"{type(self).KEY}.{f.name}"
            if rules["choices"] and value not in rules["choices"]:
                raise ConfigError(f"{name}={value!r}; expected one of {', '.join(rules['choices'])}")
            bounds = [(rules["ge"], ">=", lambda v, b: v >= b), (rules["gt"], ">", lambda v, b: v > b),
                      (rules["le"], "<=", lambda v, b: v <= b), (rules["lt"], "<", lambda v, b: v < b)]
            failed = [f"{op} {bound:g}" for bound, op, ok in bounds if bound is not None and not ok(value, bound)]
            if failed:
                wanted = " and ".join(f"{op} {b:g}" for b, op, _ in bounds if b is not None)
                raise ConfigError(f"{name}={value!r}: expected a value {wanted}")
