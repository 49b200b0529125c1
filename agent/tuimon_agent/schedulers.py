"""Make a live learning-rate change persist under the optimizer's LR schedulers.

A scheduler derives each step's learning rate either from the group's current ``lr`` (the chainable form of
StepLR, MultiStepLR, ExponentialLR, LinearLR, ConstantLR, PolynomialLR, CosineAnnealingLR, ReduceLROnPlateau) or
from values it keeps: ``base_lrs`` (LambdaLR, MultiplicativeLR, CyclicLR, CosineAnnealingWarmRestarts, every
closed form), the group's ``initial_lr`` (what a scheduler created or restarted later starts from), OneCycleLR's
group keys ``initial_lr``/``max_lr``/``min_lr``, CyclicLR's ``max_lrs``, ReduceLROnPlateau's ``min_lrs``,
CosineAnnealingLR's and CosineAnnealingWarmRestarts' ``eta_min``. :func:`rescale` multiplies all of them by
``new / old`` for the changed group, so the schedule continues from the new level: after ``set_lr`` at step k, the
learning rate at every later step is what the schedule would have given × the factor.

``eta_min`` is one number for every group: it is scaled only when the change covers every group (or the optimizer
has one), and left as it is otherwise (then the cosine's floor stays where the user put it). SequentialLR and
ChainedScheduler are followed into their children.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable
from typing import Any


def _is_scheduler(obj: Any) -> bool:
    from torch.optim import lr_scheduler

    bases = tuple(
        c
        for c in (
            getattr(lr_scheduler, "LRScheduler", None),
            getattr(lr_scheduler, "ReduceLROnPlateau", None),
        )
        if c
    )
    return isinstance(obj, bases)


def discover(optimizer: Any) -> list[Any]:
    """The LR schedulers attached to ``optimizer``, found among the objects that refer to it (``gc``).

    Children of SequentialLR and ChainedScheduler are returned only through their parent.
    """
    found = []
    for o in gc.get_referrers(optimizer):
        # An instance's attributes may be referred to through its __dict__ (Python versions differ).
        owners = [o] if not isinstance(o, dict) else [r for r in gc.get_referrers(o) if _is_scheduler(r)]
        for s in owners:
            if _is_scheduler(s) and getattr(s, "optimizer", None) is optimizer and s not in found:
                found.append(s)
    children = {id(c) for s in found for c in _children(s)}
    return [s for s in found if id(s) not in children]


def _children(sched: Any) -> list[Any]:
    kids = getattr(sched, "_schedulers", None)
    return list(kids) if isinstance(kids, (list, tuple)) else []


def _mul(value: Any, factor: float) -> Any:
    if hasattr(value, "mul_") and hasattr(value, "detach"):  # a tensor lr (capturable optimizers)
        return value.mul_(factor)
    return value * factor


def _scale_list(obj: Any, attr: str, groups: Iterable[int], factor: float) -> None:
    values = getattr(obj, attr, None)
    if isinstance(values, list):
        for g in groups:
            if g < len(values) and values[g] is not None:
                values[g] = _mul(values[g], factor)


def rescale(optimizer: Any, schedulers: Iterable[Any], groups: list[int], factor: float) -> list[str]:
    """Scale what the schedulers derive the learning rate of ``groups`` from by ``factor``.

    Call it after setting the groups' ``lr`` themselves. Scheduler state belonging to other groups is untouched.

    Args:
        optimizer: The optimizer whose groups changed.
        schedulers: Its schedulers (:func:`discover`, plus any registered explicitly).
        groups: Indices of the changed param groups.
        factor: ``new_lr / old_lr``.

    Returns:
        The scheduler class names that were adjusted (for the ack).
    """
    all_groups = len(groups) == len(optimizer.param_groups)
    for g in groups:
        group = optimizer.param_groups[g]
        for key in ("initial_lr", "max_lr", "min_lr"):  # LRScheduler's start and OneCycleLR's phases
            if isinstance(group.get(key), (int, float)) or hasattr(group.get(key), "mul_"):
                group[key] = _mul(group[key], factor)
    names: list[str] = []
    seen: set[int] = set()
    stack = list(schedulers)
    while stack:
        s = stack.pop()
        if id(s) in seen:
            continue
        seen.add(id(s))
        stack.extend(_children(s))
        for attr in ("base_lrs", "max_lrs", "min_lrs", "_last_lr"):
            _scale_list(s, attr, groups, factor)
        if all_groups and isinstance(getattr(s, "eta_min", None), (int, float)):
            s.eta_min = s.eta_min * factor
        names.append(type(s).__name__)
    return names
