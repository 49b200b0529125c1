"""The scalar (loss-curve) rules: loss_divergence, loss_plateau, overfitting, underfitting, loss_spike."""

from __future__ import annotations

from .base import Rule

LOSS_RULES: list[type[Rule]] = []
"""The loss-curve rule classes."""
