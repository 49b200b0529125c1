"""Pytest helpers: the sanity checks as assertions for your own test suite.

Each ``assert_*`` runs one check from :mod:`tuimon_agent.checks` on a copy of your model (the model, its gradients
and the global RNG state are left as they were) and raises :class:`AssertionError` with the check's full report
(verdict, what was found, what to do, the numbers and the first table rows) when the verdict is ``fail`` or
``error``. A ``warn`` passes: it only looks odd. Each returns the :class:`~tuimon_agent.checks.CheckResult`, so a
test can assert more::

    from tuimon_agent.testing import assert_can_overfit, assert_gradients_match


    def test_my_net_is_wired_right():
        model = MyNet()
        x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
        assert_gradients_match(model, x[:4], y[:4], nn.CrossEntropyLoss())
        assert_can_overfit(model, x, y, nn.CrossEntropyLoss(), steps=300)

Importing this module does not import torch: each assertion imports its check (and torch) when it runs.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .checks._result import CheckResult

__all__ = ["assert_gradients_match", "assert_can_overfit", "assert_loss_decreases", "assert_shapes"]

Shape = tuple[Any, ...]


def _ok(result: CheckResult) -> CheckResult:
    if not result.ok:
        raise AssertionError(result.report())
    return result


def assert_gradients_match(
    model: Any, inputs: Any, targets: Any = None, loss_fn: Callable[..., Any] | None = None, **options: Any
) -> CheckResult:
    """Assert that autograd's gradients match finite differences.

    Runs :func:`~tuimon_agent.checks.gradients.gradient_check`.

    Args:
        model: The model, or a single module of it.
        inputs: Inputs for it; keep the batch small (two forward passes per checked entry).
        targets: Targets for ``loss_fn``; ``None`` calls ``loss_fn(outputs)``.
        loss_fn: The loss; ``None`` projects the outputs on a fixed random direction.
        **options: ``eps``, ``atol``, ``rtol``, ``max_entries``, ``seed``.

    Returns:
        The passing (or warning) result.

    Raises:
        AssertionError: The check failed, with its report as the message.
    """
    from .checks.gradients import gradient_check

    return _ok(gradient_check(model, inputs, targets, loss_fn, **options))


def assert_can_overfit(
    model: Any, inputs: Any, targets: Any, loss_fn: Callable[..., Any], **options: Any
) -> CheckResult:
    """Assert that a copy of the model can memorize one batch.

    Runs :func:`~tuimon_agent.checks.training.overfit_one_batch`.

    Args:
        model: The model.
        inputs: One small batch's inputs.
        targets: Its targets.
        loss_fn: The loss.
        **options: ``optimizer_factory``, ``steps``, ``lr``, ``target``.

    Returns:
        The passing (or warning) result.

    Raises:
        AssertionError: The check failed, with its report as the message.
    """
    from .checks.training import overfit_one_batch

    return _ok(overfit_one_batch(model, inputs, targets, loss_fn, **options))


def assert_loss_decreases(
    model: Any, batches: Iterable[Sequence[Any]] | Sequence[Any], loss_fn: Callable[..., Any], **options: Any
) -> CheckResult:
    """Assert that a few training steps lower the loss.

    Runs :func:`~tuimon_agent.checks.training.loss_decreases`.

    Args:
        model: The model.
        batches: An iterable of ``(inputs, targets)``, or one such tuple.
        loss_fn: The loss.
        **options: ``optimizer_factory``, ``steps``, ``lr``.

    Returns:
        The passing (or warning) result.

    Raises:
        AssertionError: The check failed, with its report as the message.
    """
    from .checks.training import loss_decreases

    return _ok(loss_decreases(model, batches, loss_fn, **options))


def assert_shapes(
    model: Any,
    inputs: Any,
    *,
    expected: dict[str, Shape] | None = None,
    targets: Any = None,
    loss_fn: Callable[..., Any] | None = None,
) -> CheckResult:
    """Assert that a forward pass has no shape bug, and optionally that given modules output given shapes.

    Runs :func:`~tuimon_agent.checks.shapes.shape_trace`.

    Args:
        model: The model.
        inputs: A batch's inputs.
        expected: Module name (as in ``model.named_modules()``) to its expected output shape; ``None`` in a shape
            matches any size, e.g. ``{"head": (None, 10)}``. For a module called several times, every call must
            match.
        targets: Targets, to check the loss's view of the shapes too.
        loss_fn: The loss.

    Returns:
        The passing (or warning) result.

    Raises:
        AssertionError: The check failed, or a module's output shape is not the expected one (or the module never
            ran), with the report as the message.
    """
    from .checks.shapes import shape_trace

    result = _ok(shape_trace(model, inputs, targets=targets, loss_fn=loss_fn))
    problems = []
    for module, want in (expected or {}).items():
        got = [_as_shape(row.get("out_shape")) for row in result.table if row.get("module") == module]
        if not got:
            problems.append(f"{module!r}: not called in the forward pass (no such module, or an unused one)")
        for shape in got:
            if not _matches(shape, tuple(want)):
                problems.append(f"{module!r}: output shape {_show(shape)}, expected {_show(tuple(want))}")
    if problems:
        raise AssertionError(
            "shape_trace: unexpected output shapes\n        "
            + "\n        ".join(problems)
            + "\n"
            + result.report()
        )
    return result


def _as_shape(value: Any) -> Any:
    """A shape as a tuple of ints (nested tuples for several tensors), from a tuple/list/``torch.Size``/string.

    Strings are ``"8×10"``, ``"8x10"``, ``"scalar"``, ``"(8, 10)"``, ``"[8, 10]"``; several tensors joined by
    ``", "`` give a tuple of shapes. Anything unreadable stays as it was (and matches nothing).
    """
    if isinstance(value, (tuple, list)):
        return tuple(_as_shape(v) for v in value)
    if isinstance(value, int) or value is None:
        return value
    if hasattr(value, "__iter__") and not isinstance(value, str):
        return tuple(int(v) for v in value)  # torch.Size
    text = str(value).strip()
    if text[:1] in "([":
        try:
            return _as_shape(ast.literal_eval(text))
        except (ValueError, SyntaxError):
            return text
    shapes = [_one_shape(p) for p in text.split(",") if p.strip()]
    if not shapes or any(s is None for s in shapes):
        return text
    return shapes[0] if len(shapes) == 1 else tuple(shapes)


def _one_shape(text: str) -> tuple[int, ...] | None:
    """``"8×10"`` or ``"8x10"`` as ``(8, 10)``, ``"scalar"`` as ``()``; ``None`` if it is neither."""
    text = text.strip()
    if text == "scalar":
        return ()
    return (
        tuple(int(d) for d in re.split(r"\s*[x×]\s*", text))
        if re.fullmatch(r"\d+(\s*[x×]\s*\d+)*", text)
        else None
    )


def _matches(got: Any, want: Any) -> bool:
    """``None`` in ``want`` matches any size (or any sub-shape); tuples match element-wise."""
    if want is None:
        return True
    if isinstance(want, tuple):
        return isinstance(got, tuple) and len(got) == len(want) and all(map(_matches, got, want))
    return got == want


def _show(shape: Any) -> str:
    if isinstance(shape, tuple):
        return "(" + ", ".join(_show(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
    return "any" if shape is None else str(shape)
