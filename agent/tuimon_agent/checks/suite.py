"""Running several checks at once: what ``Monitor.sanity_check`` and ``tuimon check`` use."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ._result import ERROR, CheckResult

ALL_CHECKS = (
    "data_check",
    "shape_trace",
    "initial_loss",
    "gradient_check",
    "overfit_one_batch",
    "loss_decreases",
)
"""Every check, cheapest first; the order ``run_checks`` runs them in."""

GRADIENT_SAMPLES = 4
"""Samples of the batch the gradient check uses (finite differences cost two forward passes per checked entry)."""
OVERFIT_SAMPLES = 16
"""Samples of the batch the overfit check tries to memorize."""


def _slice(x: Any, n: int) -> Any:
    """The first ``n`` samples of a tensor, or of each tensor in a tuple/list/dict."""
    if isinstance(x, (tuple, list)):
        return type(x)(_slice(v, n) for v in x)
    if isinstance(x, dict):
        return {k: _slice(v, n) for k, v in x.items()}
    return x[:n] if hasattr(x, "shape") and len(x.shape) > 0 else x


def run_checks(
    model: Any,
    batch: Sequence[Any],
    loss_fn: Callable[..., Any],
    *,
    batches: Iterable[Sequence[Any]] | None = None,
    val: Sequence[Any] | None = None,
    num_classes: int | None = None,
    optimizer_factory: Callable[[Any], Any] | None = None,
    checks: Sequence[str] | None = None,
    on_result: Callable[[CheckResult], None] | None = None,
) -> list[CheckResult]:
    """Run sanity checks on a model and one batch.

    Args:
        model: The ``torch.nn.Module`` (left as it was: parameters, gradients, buffers, mode, RNG state).
        batch: ``(inputs, targets)``.
        loss_fn: ``loss_fn(outputs, targets) -> scalar tensor``.
        batches: Real batches for ``loss_decreases`` (default: the one ``batch``).
        val: ``(inputs, targets)`` of validation data, to look for samples shared with ``batch``.
        num_classes: For classification: the number of classes (else inferred where possible).
        optimizer_factory: ``params -> optimizer`` for the training checks (default: Adam).
        checks: Which checks (names from :data:`ALL_CHECKS`), in that order; default all.
        on_result: Called with each result as soon as it is known.

    Returns:
        The results, in the order run. A check that raised is an ``error`` result carrying the exception.

    Raises:
        ValueError: ``batch`` is not ``(inputs, targets)`` or a check name is unknown.
    """
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError(f"invalid batch of type {type(batch).__name__}: must be (inputs, targets)")
    names = tuple(checks) if checks is not None else ALL_CHECKS
    unknown = [n for n in names if n not in ALL_CHECKS]
    if unknown:
        raise ValueError(f"invalid checks={unknown!r}: choose from {', '.join(ALL_CHECKS)}")
    inputs, targets = batch
    from . import data, gradients, loss, shapes, training

    calls: dict[str, Callable[[], CheckResult]] = {
        "data_check": lambda: data.data_check(inputs, targets, val=val, num_classes=num_classes),
        "shape_trace": lambda: shapes.shape_trace(model, inputs, targets=targets, loss_fn=loss_fn),
        "initial_loss": lambda: loss.initial_loss(model, inputs, targets, loss_fn, num_classes=num_classes),
        "gradient_check": lambda: gradients.gradient_check(
            model, _slice(inputs, GRADIENT_SAMPLES), _slice(targets, GRADIENT_SAMPLES), loss_fn
        ),
        "overfit_one_batch": lambda: training.overfit_one_batch(
            model,
            _slice(inputs, OVERFIT_SAMPLES),
            _slice(targets, OVERFIT_SAMPLES),
            loss_fn,
            optimizer_factory=optimizer_factory,
        ),
        "loss_decreases": lambda: training.loss_decreases(
            model,
            list(batches) if batches is not None else [batch],
            loss_fn,
            optimizer_factory=optimizer_factory,
        ),
    }
    results = []
    for name in names:
        t0 = time.perf_counter()
        try:
            result = calls[name]()
        except Exception as exc:  # a check must never take the caller down
            tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
            result = CheckResult(
                name,
                ERROR,
                f"the check could not run: {tb}",
                "The check raised instead of returning a verdict; the message above says why. This is most often "
                "an input the check does not support (say so in an issue) or a model that raises on this batch.",
                seconds=time.perf_counter() - t0,
            )
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def report(results: Sequence[CheckResult]) -> str:
    """All results as text, with a closing line counting verdicts."""
    counts = {v: sum(r.verdict == v for r in results) for v in ("pass", "warn", "fail", "error")}
    tail = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    return "\n\n".join(r.report() for r in results) + f"\n\nchecks: {tail or 'none run'}"
