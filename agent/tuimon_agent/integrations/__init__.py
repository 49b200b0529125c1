"""Integrations with training frameworks, each an optional extra imported only when its module is imported.

- :mod:`tuimon_agent.integrations.lightning`: ``TuimonCallback``, a Lightning ``Callback``
  (``pip install tuimon-agent[lightning]``).
- :mod:`tuimon_agent.integrations.hf`: ``TuimonCallback``, a HuggingFace ``transformers.TrainerCallback``
  (``pip install tuimon-agent[hf]``).
- :class:`tuimon_agent.SummaryWriter` (``tuimon_agent.summary_writer``): a drop-in for
  ``torch.utils.tensorboard.SummaryWriter``.

Importing this package imports no framework.
"""

from __future__ import annotations

from typing import Any

EVAL_PREFIXES = (
    "val_",
    "eval_",
    "valid_",
    "validation_",
    "test_",
    "val/",
    "eval/",
    "valid/",
    "validation/",
    "test/",
)
"""Metric-name prefixes that mark an evaluation metric (the viewer pairs ``val_loss``, ``eval_loss``, ``val/loss``
... with the training ``loss``)."""


def is_eval_name(name: str) -> bool:
    """Whether a metric name is an evaluation metric: an :data:`EVAL_PREFIXES` prefix, or a last path component
    ``val``, ``valid``, ``validation``, ``eval`` or ``test`` (``Loss/test``, as in PyTorch's TensorBoard tutorial)."""
    if name.startswith(EVAL_PREFIXES):
        return True
    head, sep, last = name.rpartition("/")
    return bool(sep and head) and last in ("val", "valid", "validation", "eval", "test")


def is_scalar(v: Any) -> bool:
    """A loggable scalar: a number or a one-element tensor (bools, strings and lists are left out)."""
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return True
    numel = getattr(v, "numel", None)
    return callable(numel) and numel() == 1
