"""mlpipe/registry/promotion.py: whether a new version takes the champion alias."""

from __future__ import annotations

import pytest

from mlpipe.errors import ConfigError
from mlpipe.registry.promotion import Decision, decide


def test_always_promotes_even_a_worse_model():
    assert decide("always", "accuracy", 0.1, 0.9, True, True) == Decision(True, "registry.promotion=always")


def test_never_promotes_even_a_better_model():
    assert decide("never", "accuracy", 0.99, 0.5, True, True) == Decision(False, "registry.promotion=never")


def test_unknown_policy():
    with pytest.raises(ConfigError) as info:
        decide("sometimes", "accuracy", 0.9, 0.8, True, True)
    message = str(info.value)
    assert "registry.promotion='sometimes'" in message
    assert "better, always or never" in message


def test_better_without_champion_promotes():
    assert decide("better", "accuracy", None, None, True, False) == Decision(True, "no current champion")


def test_better_candidate_without_metric():
    decision = decide("better", "accuracy", None, 0.9, True, True)
    assert decision == Decision(False, "the new version has no accuracy to compare")


def test_better_champion_without_metric():
    decision = decide("better", "r2", 0.5, None, True, True)
    assert decision.promote is False
    assert decision.reason.startswith("the champion has no r2 to compare")
    assert "registry.promotion=always" in decision.reason


def test_better_higher_is_better():
    assert decide("better", "accuracy", 0.95, 0.9, True, True) == \
        Decision(True, "accuracy 0.9500 beats champion's 0.9000")
    assert decide("better", "accuracy", 0.85, 0.9, True, True) == \
        Decision(False, "accuracy 0.8500 does not beat champion's 0.9000")


def test_better_requires_strict_improvement():
    decision = decide("better", "accuracy", 0.9, 0.9, True, True)
    assert decision == Decision(False, "accuracy 0.9000 does not beat champion's 0.9000")


def test_better_lower_is_better():
    assert decide("better", "rmse", 2.0, 3.0, False, True) == Decision(True, "rmse 2.0000 beats champion's 3.0000")
    assert decide("better", "rmse", 3.5, 3.0, False, True).promote is False
    assert decide("better", "rmse", 3.0, 3.0, False, True).promote is False


def test_a_version_that_failed_qa_is_never_promoted():
    for policy in ("always", "better"):
        decision = decide(policy, "accuracy", 0.99, None, True, False, validated=False)
        assert decision == Decision(False, "qa did not pass (registered through registry.allow_unvalidated)")


def test_a_version_that_replaces_an_incompatible_champion_is_promoted_unless_never():
    decision = decide("better", "r2", 0.4, 0.9, True, True, replaces=True)
    assert decision.promote and "qa.champion.on_incompatible=replace" in decision.reason
    assert not decide("never", "r2", 0.4, 0.9, True, True, replaces=True).promote
    assert not decide("better", "r2", 0.4, 0.9, True, True, validated=False, replaces=True).promote
