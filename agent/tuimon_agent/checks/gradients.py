"""Gradient check: does the backward pass compute the derivative of the forward pass?

:func:`gradient_check` compares the gradients autograd computes with central finite differences,
``(L(w + eps) - L(w - eps)) / 2 eps``, for a seeded random sample of entries of every trainable parameter tensor.
It works on a float64 copy of the model in eval mode (dropout off, BatchNorm on its running statistics), so
rounding and randomness do not blur the comparison.

How to read the result: ``table`` has one row per parameter tensor: ``name``, ``shape``, ``checked`` entries,
``kinks`` among them, ``max_abs_err``, ``max_rel_err``, the worst entry (``worst_index``, with ``analytic`` and
``numeric`` there) and ``status`` (``ok``, ``MISMATCH``, ``no gradient``, ``unused``, ``only kinks``, or ``frozen``
for ``requires_grad=False``, which is skipped). ``numbers`` counts tensors, entries, kinks and forward passes.

- ``pass``: every checked entry agrees within ``atol + rtol * |numeric|``.
- ``fail``: some entry disagrees. The summary names the worst tensor and entry, with both numbers; the table has
  one row per parameter tensor (``status`` ``MISMATCH`` marks the bad ones). A ratio of exactly 2, a sign flip or
  a missing term points at a custom ``torch.autograd.Function``'s ``backward``; a numeric derivative with a zero
  (or absent) analytic one points at a ``.detach()``, ``.data`` or ``torch.no_grad()`` on the parameter's path.
  ``status`` ``no gradient`` is that case for a tensor that got no ``.grad`` at all.
- ``warn``: a trainable parameter got no gradient and does not change the loss (``unused``): it is never used in
  ``forward``, or used only on a path the loss ignores. Or every checked entry of a tensor sat on a kink.

Kinks: ReLU, max-pooling, ``abs`` and friends are not differentiable everywhere. If ``w +- eps`` straddles such a
point, the central difference averages two different slopes and disagrees with the (correct) one-sided slope
autograd returns. Such an entry is recognised by its one-sided differences, ``(L(w + eps) - L(w)) / eps`` and
``(L(w) - L(w - eps)) / eps``, disagreeing by more than the tolerance and by at least the error itself; it is
counted in ``kinks`` and skipped rather than failed. A smooth function's one-sided differences agree to
``O(eps)``, so a wrong backward in a smooth layer is never mistaken for a kink.

Cost: one forward and backward pass, then two forward passes per checked entry (at most ``max_entries`` per
tensor): ``numbers["forward_passes"]`` says how many.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ._common import (
    _call,
    _check_module,
    _copy,
    _cuda_devices,
    _device_of,
    _guard,
    _map,
    _reseed,
    _run,
    _Stop,
    _tensors,
)
from ._result import ERROR, FAIL, PASS, WARN, CheckResult

NAME = "gradient_check"

_MODE_NOTE = "float64, eval mode (dropout off, BatchNorm on running statistics)"
_STATUSES = ("ok", "MISMATCH", "no gradient", "unused", "only kinks", "frozen")


# --- the check -----------------------------------------------------------------------------------------------


def gradient_check(
    model: nn.Module,
    inputs: Any,
    targets: Any = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    *,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    max_entries: int = 64,
    seed: int = 0,
) -> CheckResult:
    """Compare autograd's gradients with central finite differences, entry by entry.

    Works on a float64 copy in eval mode; floating inputs and targets are cast to float64, integer ones kept. Pass
    the whole model or a single submodule with inputs for it: it is the same call.

    Args:
        model: The module to check (left unchanged).
        inputs: A tensor, or a tuple/list (``model(*inputs)``) or dict (``model(**inputs)``) of them. Keep the
            batch small: each checked entry costs two forward passes.
        targets: Passed to ``loss_fn(outputs, targets)``; ``None`` calls ``loss_fn(outputs)``.
        loss_fn: Returns the loss (a non-scalar loss is summed). ``None``: a fixed random projection of every
            floating output element, seeded by ``seed``, so every output element matters.
        eps: The finite-difference step.
        atol: Absolute tolerance of ``|analytic - numeric|``.
        rtol: Relative tolerance, times ``|numeric|``.
        max_entries: Entries checked per parameter tensor (a seeded random subset; all if the tensor is smaller).
        seed: Seeds the entry subset, the default projection and the RNG before every forward pass.

    Returns:
        The ``gradient_check`` result; ``table`` has one row per parameter tensor.

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``.
        ValueError: An option is out of range.
    """
    _check_module(model)
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"invalid eps={eps!r}: must be a finite number > 0")
    for key, value in (("atol", atol), ("rtol", rtol)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"invalid {key}={value!r}: must be a finite number >= 0")
    if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
        raise ValueError(f"invalid max_entries={max_entries!r}: must be an int >= 1")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"invalid seed={seed!r}: must be an int")
    return _run(
        NAME,
        model,
        lambda: _gradient_check(model, inputs, targets, loss_fn, eps, atol, rtol, max_entries, seed),
    )


def _gradient_check(
    model: nn.Module,
    inputs: Any,
    targets: Any,
    loss_fn: Callable[..., torch.Tensor] | None,
    eps: float,
    atol: float,
    rtol: float,
    max_entries: int,
    seed: int,
) -> CheckResult:
    with _guard("copying the model in float64", "The check works on copy.deepcopy(model).double()."):
        work = _copy(model).double().eval()
    device, devices = _device_of(work), _cuda_devices(work)

    def cast(t: torch.Tensor) -> torch.Tensor:
        t = t.detach().to(device)
        return t.double() if t.is_floating_point() else t

    x, y = _map(inputs, cast), _map(targets, cast)
    gen = torch.Generator().manual_seed(seed)
    projections: list[torch.Tensor] = []

    def forward() -> torch.Tensor:
        _reseed(seed, devices)  # a model drawing random numbers in eval mode draws the same ones every pass
        out = _call(work, x)
        if loss_fn is not None:
            loss = loss_fn(out) if y is None else loss_fn(out, y)
            if not isinstance(loss, torch.Tensor):
                raise TypeError(f"loss_fn returned {type(loss).__name__}, not a tensor")
            return loss.sum()
        outs = [t for t in _tensors(out) if t.is_floating_point()]
        if not outs:
            raise TypeError("the model returned no floating-point tensor to project (pass a loss_fn)")
        if not projections:
            projections.extend(torch.randn(t.shape, generator=gen, dtype=t.dtype).to(device) for t in outs)
        return sum((t * r).sum() for t, r in zip(outs, projections, strict=True))  # type: ignore[return-value]

    with _guard(
        "the forward or backward pass in float64",
        "The model or the loss failed on a float64 copy in eval mode. A layer that hard-codes float32 "
        "(torch.tensor(..., dtype=torch.float32), .float()) cannot be checked this way.",
    ):
        loss = forward()
        f0 = float(loss.item())
        if not math.isfinite(f0):
            raise _Stop(
                ERROR,
                f"the loss is {f0} at the starting point: nothing to differentiate",
                "The forward pass already gives NaN/inf: run initial_loss and shape_trace first.",
            )
        if loss.requires_grad:
            loss.backward()

    rows: list[dict[str, Any]] = []
    worst: tuple[float, str, str, float, float, float] | None = (
        None  # err/tol, name, index, analytic, numeric, tol
    )
    nudged = _guard(
        "a forward pass with a parameter nudged by eps", "The loss could be computed once, not again."
    )
    with nudged, torch.no_grad():
        for name, p in work.named_parameters():
            if not p.requires_grad:
                rows.append({"name": name, "shape": _shape(p), "checked": 0, "status": "frozen"})
                continue
            row, entry = _check_tensor(p, forward, f0, eps, atol, rtol, max_entries, gen)
            rows.append({"name": name, **row})
            if entry is not None and (worst is None or entry[0] > worst[0]):
                worst = (entry[0], name, *entry[1:])
    return _verdict(rows, worst, eps, atol, rtol)


def _verdict(
    rows: list[dict[str, Any]],
    worst: tuple[float, str, str, float, float, float] | None,
    eps: float,
    atol: float,
    rtol: float,
) -> CheckResult:
    checked = [r for r in rows if r["status"] != "frozen"]
    by_status = {s: [r["name"] for r in rows if r["status"] == s] for s in _STATUSES}
    bad = by_status["MISMATCH"] + by_status["no gradient"]
    numbers: dict[str, Any] = {
        "mode": _MODE_NOTE,
        "tensors_checked": len(checked),
        "entries_checked": sum(r["checked"] for r in checked),
        "kinks": sum(r["kinks"] for r in checked),
        "mismatched_tensors": len(bad),
        "unused_tensors": len(by_status["unused"]),
        "frozen_tensors": len(by_status["frozen"]),
        "worst_abs_err": max((r["max_abs_err"] for r in checked), default=0.0),
        "forward_passes": 1 + 2 * sum(r["checked"] for r in checked),
        "eps": eps,
        "atol": atol,
        "rtol": rtol,
    }
    if not checked:
        return CheckResult(
            NAME,
            ERROR,
            "no parameter requires grad: nothing to check",
            "Every parameter has requires_grad=False (or the module has none).",
            numbers,
            rows,
        )
    kinks = f", {numbers['kinks']} kink entries skipped" if numbers["kinks"] else ""
    if bad and worst is not None:
        _, wname, index, analytic, numeric, tol = worst
        summary = (
            f"{wname}{index}: analytic {analytic:.6g} vs numeric {numeric:.6g} (|err| "
            f"{abs(analytic - numeric):.3g} > tol {tol:.3g}); {len(bad)} of {len(checked)} tensors mismatch"
        )
        explanation = (
            f"The backward pass does not compute the derivative of the forward pass for {', '.join(bad)}. Look at "
            f"the module that owns {wname}: a custom torch.autograd.Function whose backward is wrong (a missing "
            "term, a wrong scale or sign, gradients returned in the wrong order), a hand-written gradient, or an "
            "in-place change of a tensor saved for backward. An analytic gradient of 0 where the numeric one is "
            "not means the path is cut (.detach(), .data, torch.no_grad(), a non-differentiable op)."
        )
        if by_status["no gradient"]:
            explanation += (
                f" No gradient reached {', '.join(by_status['no gradient'])} at all, yet nudging it "
                "changes the loss: its path to the loss is detached."
            )
        return CheckResult(NAME, FAIL, summary, f"{explanation} Checked in {_MODE_NOTE}.", numbers, rows)
    unused, only_kinks = by_status["unused"], by_status["only kinks"]
    if unused or only_kinks:
        parts, advice = [], ["The other gradients match."]
        if unused:
            parts.append(
                f"unused parameter: {', '.join(unused)} got no gradient and does not change the loss"
            )
            advice.append(
                "An unused parameter is never used in forward (a layer built but not called, a branch "
                "not taken on this batch) or only on a path the loss ignores: nothing will train it."
            )
        if only_kinks:
            parts.append(f"every checked entry of {', '.join(only_kinks)} sat on a kink")
            advice.append("Entries on kinks could not be checked: try a smaller eps or another batch.")
        return CheckResult(NAME, WARN, "; ".join(parts) + kinks, " ".join(advice), numbers, rows)
    return CheckResult(
        NAME,
        PASS,
        f"analytic and numeric gradients agree: worst |err| {numbers['worst_abs_err']:.3g} over "
        f"{numbers['entries_checked']} entries of {len(checked)} tensors{kinks}",
        f"Autograd's gradients match central finite differences (eps={eps:g}) within atol={atol:g} + "
        f"rtol={rtol:g}*|numeric|, checked in {_MODE_NOTE}. Entries whose one-sided differences disagree "
        "(ReLU or max-pool kinks) are skipped, not failed.",
        numbers,
        rows,
    )


def _shape(p: torch.Tensor) -> str:
    return "x".join(str(s) for s in p.shape) or "scalar"


def _check_tensor(
    p: torch.Tensor,
    forward: Callable[[], torch.Tensor],
    f0: float,
    eps: float,
    atol: float,
    rtol: float,
    max_entries: int,
    gen: torch.Generator,
) -> tuple[dict[str, Any], tuple[float, str, float, float, float] | None]:
    """Finite differences for a sample of ``p``'s entries; returns its table row and its worst entry.

    The worst entry is ``(err / tol, "[i, j]", analytic, numeric, tol)``, among entries that are not kinks.
    """
    n = p.numel()
    if n > max_entries:
        flat = torch.randperm(n, generator=gen)[:max_entries].sort().values.tolist()
    else:
        flat = list(range(n))
    grad = p.grad
    analytic = (
        grad.detach().reshape(-1) if grad is not None else torch.zeros(n, dtype=p.dtype, device=p.device)
    )
    analytic_vals = analytic[torch.tensor(flat, device=analytic.device)].tolist()
    data = p.detach()  # a view: writing into it perturbs the copy's parameter in place
    kinks = 0
    max_abs = max_rel = 0.0
    worst: tuple[float, str, float, float, float] | None = None
    for i, a in zip(flat, analytic_vals, strict=True):
        index = tuple(int(v) for v in np.unravel_index(i, tuple(p.shape)))
        orig = float(data[index].item())
        data[index] = orig + eps
        hp = float(data[index].item()) - orig or eps  # the step actually taken, after rounding
        fp = float(forward().item())
        data[index] = orig - eps
        hm = orig - float(data[index].item()) or eps
        fm = float(forward().item())
        data[index] = orig
        numeric = (fp - fm) / (hp + hm)
        err = abs(a - numeric)
        tol = atol + rtol * abs(numeric)
        if err > tol:
            spread = abs((fp - f0) / hp - (f0 - fm) / hm)
            if spread > tol and spread >= err:  # the slope changes within +-eps: a kink, not a backward bug
                kinks += 1
                continue
        max_abs = max(max_abs, err)
        max_rel = max(max_rel, err / max(abs(a), abs(numeric)) if err else 0.0)
        ratio = err / tol if tol > 0 else (math.inf if err > 0 else 0.0)
        if worst is None or ratio > worst[0]:
            worst = (ratio, "[" + ", ".join(map(str, index)) + "]", a, numeric, tol)
    if worst is None:
        status = "only kinks"
    elif worst[0] > 1:
        status = "no gradient" if grad is None else "MISMATCH"
    else:
        status = "unused" if grad is None else "ok"
    row = {
        "shape": _shape(p),
        "checked": len(flat),
        "kinks": kinks,
        "max_abs_err": max_abs,
        "max_rel_err": max_rel,
    }
    if worst is not None:
        row.update(worst_index=worst[1], analytic=worst[2], numeric=worst[3])
    row["status"] = status
    return row, worst
