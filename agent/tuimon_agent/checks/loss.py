"""The initial-loss check: does the untrained model score what a model that knows nothing should?

How to read the result:

- :func:`initial_loss` compares the loss of the untrained model with what a model that knows nothing scores:
  ``ln C`` for ``C``-class cross-entropy (uniform predictions), ``ln 2`` for binary cross-entropy. ``pass`` within
  ±25% (``ratio`` in ``numbers`` is loss / reference); ``warn`` from 1.25 to 2× above or 0.5 to 0.75× below;
  ``fail`` beyond (far above: over-confident logits from a bad init or a missing scale, ``reduction='sum'``; far
  below: the labels leak into the inputs or the loss's sign is flipped). It fails whatever the ratio when the
  outputs are already probabilities (a softmax before ``CrossEntropyLoss``) or are not log-probabilities for
  ``NLLLoss``. Other losses get ``pass`` with "no reference for this loss".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._common import _call, _check_module, _guard, _run, _tensors
from ._result import FAIL, PASS, WARN, CheckResult
from .training import (
    _MODE,
    _MULTICLASS,
    _MULTICLASS_FNS,
    _kind,
    _prepare,
    _scalar,
)


def initial_loss(
    model: nn.Module,
    inputs: Any,
    targets: Any,
    loss_fn: Callable[..., torch.Tensor],
    *,
    num_classes: int | None = None,
) -> CheckResult:
    """Compare the untrained model's loss with what knowing nothing scores (``ln C`` for ``C`` classes).

    Classification is recognised from ``CrossEntropyLoss``/``NLLLoss`` (``C`` = outputs' dim 1), binary
    cross-entropy (reference ``ln 2``), ``num_classes``, or integer targets with a loss function of your own
    (``C`` = outputs' last dim).

    Args:
        model: The model (left unchanged; a copy is evaluated in train mode with dropout off, without gradients).
        inputs: A batch's inputs (a tensor, or a tuple/list/dict of them).
        targets: The batch's targets.
        loss_fn: Returns the scalar loss.
        num_classes: The number of classes, when it cannot be read off the outputs.

    Returns:
        The ``initial_loss`` result.

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``.
        ValueError: ``num_classes`` is not an int >= 2, or ``loss_fn`` is not callable.
    """
    _check_module(model)
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2
    ):
        raise ValueError(f"invalid num_classes={num_classes!r}: must be an int >= 2")
    if not callable(loss_fn):
        raise ValueError(f"invalid loss_fn={loss_fn!r}: must be callable(outputs, targets) -> tensor")

    def run() -> CheckResult:
        work, _, (x, y) = _prepare(model, inputs, targets)
        with (
            _guard("the forward pass or the loss", "Run shape_trace to see which layer fails on this batch."),
            torch.no_grad(),
        ):
            out = _call(work, x)
            value = float(_scalar(loss_fn(out, y)).item())
        outs = [t for t in _tensors(out) if t.is_floating_point()]
        logits = outs[0] if outs else None
        classes = _classes(_kind(loss_fn, y), num_classes, logits, y)
        numbers: dict[str, Any] = {"loss": value, "mode": _MODE}
        if classes is not None:
            numbers.update(expected=math.log(classes), ratio=value / math.log(classes), num_classes=classes)
            numbers["reference"] = f"ln {classes}"
        verdict, summary, explanation = _initial_verdict(value, numbers, loss_fn, logits)
        return CheckResult("initial_loss", verdict, summary, explanation, numbers)

    return _run("initial_loss", model, run)


def _initial_verdict(
    value: float, numbers: dict[str, Any], loss_fn: Any, logits: torch.Tensor | None
) -> tuple[str, str, str]:
    """Verdict, summary and explanation of :func:`initial_loss`."""
    if not math.isfinite(value):
        return (
            FAIL,
            f"the initial loss is {value}",
            (
                "The untrained model already gives a NaN/inf loss: look for log(0), 0/0 or an overflow "
                "(shape_trace shows the first non-finite layer; data_check the inputs)."
            ),
        )
    if "ratio" not in numbers:
        return (
            PASS,
            f"initial loss {value:.4g} (no reference for this loss)",
            (
                "Only cross-entropy-like losses have a known value for an untrained model; compare this one "
                "with the loss of a trivial predictor (e.g. predicting the mean target)."
            ),
        )
    classes, expected, ratio = numbers["num_classes"], numbers["expected"], numbers["ratio"]
    what = f"initial loss {value:.4g} vs ln {classes} = {expected:.4g} (ratio {ratio:.2f})"
    output_bug = _output_bug(loss_fn, logits)
    if output_bug:
        return FAIL, f"{output_bug[0]}; {what}", output_bug[1]
    if 0.75 <= ratio <= 1.25:
        return (
            PASS,
            what,
            (
                f"An untrained model predicts about uniformly over {classes} classes, scoring "
                f"ln {classes}; this one does (within ±25%)."
            ),
        )
    if ratio < 0.75:
        return (
            WARN if ratio >= 0.5 else FAIL,
            what,
            (
                "The untrained model already does better than chance: the labels leak into the inputs (a "
                "target column left in the features, an index that encodes the class), the model was already "
                "trained, or the loss's sign is flipped (it is never negative here)."
            ),
        )
    explanation = (
        "The untrained model is confidently wrong: its logits are too large. Usually the last layer's "
        "init is too big (scale its weights down, zero its bias) or the inputs are not normalised; a "
        "temperature or scale in the model can do the same."
    )
    batch = logits.shape[0] if logits is not None and logits.dim() >= 1 else 0
    if batch > 1 and abs(value / (batch * expected) - 1) < 0.25:
        explanation += f" The loss is close to batch size x ln {classes}: does the loss use reduction='sum'?"
    return WARN if ratio <= 2 else FAIL, what, explanation


def _classes(kind: str, num_classes: int | None, logits: torch.Tensor | None, y: Any) -> int | None:
    """The number of classes ``C`` of the ``ln C`` reference (2 for binary losses); ``None``: no reference."""
    if kind == "binary":
        return 2
    if num_classes is not None:
        return num_classes
    if logits is None or logits.dim() < 2:
        return None
    if kind == "multiclass":
        return int(logits.shape[1]) if logits.shape[1] >= 2 else None
    if kind == "integer-targets" and logits.shape[-1] >= 2:
        c = int(logits.shape[-1])
        return c if y.numel() == 0 or (int(y.min()) >= 0 and int(y.max()) < c) else None
    return None


def _output_bug(loss_fn: Any, logits: torch.Tensor | None) -> tuple[str, str] | None:
    """A ``(summary, explanation)`` when the outputs are in the wrong form for the loss, else ``None``."""
    if logits is None or logits.dim() < 2 or logits.shape[1] < 2 or logits.numel() == 0:
        return None
    multi = isinstance(loss_fn, _MULTICLASS) or loss_fn in _MULTICLASS_FNS
    if not multi:
        return None
    out = logits.detach().double()
    probabilities = bool(((out >= 0) & (out <= 1)).all()) and bool(((out.sum(1) - 1).abs() < 1e-4).all())
    nll = isinstance(loss_fn, nn.NLLLoss) or loss_fn is F.nll_loss
    if probabilities:
        if nll:
            return (
                "a softmax before NLLLoss (the outputs are probabilities, not log-probabilities)",
                "NLLLoss expects log-probabilities: end the model with log_softmax, not softmax (or drop it "
                "and use CrossEntropyLoss on the raw logits).",
            )
        return (
            "a softmax before CrossEntropyLoss (the outputs are already probabilities)",
            "The model's outputs are in [0, 1] and sum to 1 over the classes: it ends with a softmax, and "
            "CrossEntropyLoss applies log_softmax again. The loss then sits near ln C with tiny gradients "
            "and training stalls. Remove the final softmax: CrossEntropyLoss wants raw logits.",
        )
    if nll and not bool((out.logsumexp(1).abs() < 1e-3).all()):
        return (
            "NLLLoss on outputs that are not log-probabilities",
            "NLLLoss takes log-probabilities: end the model with log_softmax, or use CrossEntropyLoss on the "
            "raw logits.",
        )
    return None
