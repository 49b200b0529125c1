"""Diagnosis: rules that read a run's records and raise alerts (``protocol.ALERT`` records).

The rules run on the agent thread (never on the training thread), and again over a finished run's file with
``tuimon diagnose``. :mod:`.base` tells a rule author how to write one; :class:`.engine.Diagnoser` runs them.
"""

from __future__ import annotations

from .activation_rules import ACTIVATION_RULES
from .base import CRITICAL, INFO, RULE_NAMES, WARNING, Context, Finding, Rule
from .engine import Diagnoser
from .gradient_rules import GRADIENT_RULES
from .input_rules import INPUT_RULES
from .loss_rules import LOSS_RULES
from .nonfinite import NonFinite

RULE_CLASSES: list[type[Rule]] = []
"""Every built-in rule class, in the order the engine runs them."""

RULE_CLASSES.extend([NonFinite, *INPUT_RULES])  # causes first: other rules read whether they are active
RULE_CLASSES.extend(LOSS_RULES)
RULE_CLASSES.extend([*GRADIENT_RULES, *ACTIVATION_RULES])


def default_rules() -> list[Rule]:
    """One fresh instance of each built-in rule.

    Returns:
        The rule instances, in :data:`RULE_CLASSES` order.
    """
    return [cls() for cls in RULE_CLASSES]


__all__ = [
    "CRITICAL",
    "INFO",
    "RULE_CLASSES",
    "RULE_NAMES",
    "WARNING",
    "Context",
    "Diagnoser",
    "Finding",
    "Rule",
    "default_rules",
]
