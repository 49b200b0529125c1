"""Training checks: a loss that falls, a model that can memorize one batch (the first loss: ``loss.py``).

Each check trains (or evaluates) a copy of the model in train mode, with dropout turned off wherever a loss is
measured or memorized, so that the numbers are repeatable and regularisation does not hide a bug.

How to read the results:

- :func:`overfit_one_batch` trains on one small batch until the loss goes below a target: ``target=`` if given;
  else 0.05 for classification-like losses (cross-entropy, NLL, binary cross-entropy, or integer targets: about
  95% probability on every right answer), plus the least loss label smoothing allows; else 1% of the initial
  loss. ``pass`` when reached; ``warn`` when the mean of the last 10 losses came at least halfway from the
  initial loss to the target (more steps or a higher lr would probably do); ``fail`` otherwise, or whenever the
  loss is NaN, never changes, has no gradient, or differs between two calls on the same batch (targets re-drawn
  inside the loss). A failure names what it could see: parameters whose gradient stayed ``None`` or zero
  (detached/unused), parameters missing from the optimizer, frozen ones.
- :func:`loss_decreases` takes a few optimizer steps on real batches and evaluates the loss on the first batch
  before and after each. It compares the mean of the first two evaluations with the mean of the last two:
  ``pass`` if it fell by at least 1%, ``warn`` if by 0.1-1% (or a training batch gave NaN/inf while the evaluations
  stayed finite), ``fail`` if it stayed within 0.1%, went up, or became NaN/inf.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._common import _call, _check_module, _copy, _device_of, _guard, _map, _run, _Stop, _tensors
from ._result import ERROR, FAIL, PASS, WARN, CheckResult

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]

_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
_MULTICLASS = (nn.CrossEntropyLoss, nn.NLLLoss)
_BINARY = (nn.BCELoss, nn.BCEWithLogitsLoss)
_MULTICLASS_FNS = (F.cross_entropy, F.nll_loss)
_BINARY_FNS = (F.binary_cross_entropy, F.binary_cross_entropy_with_logits)
_MODE = "train mode, dropout off"
_RAISED = "The forward pass, the loss or the optimizer raised on this batch: fix that first."

PLAYBOOK = (
    "A model that cannot memorize one small batch has a bug: in the model (a detached tensor, a frozen layer, a "
    "missing activation), the loss (wrong reduction, wrong target format), the labels (misaligned with inputs), "
    "or the optimizer wiring (parameters not passed to it, zero_grad missing, lr far too low)."
)
"""The explanation of a failed :func:`overfit_one_batch`, from the debugging playbook."""


# --- shared plumbing ----------------------------------------------------------------------------------------


def _validate(steps: int, lr: float | None, optimizer_factory: OptimizerFactory | None, loss_fn: Any) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"invalid steps={steps!r}: must be an int >= 1")
    if lr is not None and not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"invalid lr={lr!r}: must be a finite number > 0")
    if optimizer_factory is not None and not callable(optimizer_factory):
        raise ValueError(
            f"invalid optimizer_factory={optimizer_factory!r}: must be callable(params) -> Optimizer"
        )
    if not callable(loss_fn):
        raise ValueError(f"invalid loss_fn={loss_fn!r}: must be callable(outputs, targets) -> tensor")


def _prepare(model: nn.Module, *batch: Any) -> tuple[nn.Module, list[nn.Module], list[Any]]:
    """A train-mode copy with dropout off, its dropout modules, and ``batch`` detached onto its device."""
    with _guard(
        "copying the model", "The check works on copy.deepcopy(model): make the model deep-copyable."
    ):
        work = _copy(model).train()
    dropouts = [m for m in work.modules() if isinstance(m, _DROPOUT)]
    for m in dropouts:
        m.eval()
    device = _device_of(work)
    return work, dropouts, [_map(b, lambda t: t.detach().to(device)) for b in batch]


def _loss(loss_fn: Callable[..., Any], work: nn.Module, x: Any, y: Any) -> torch.Tensor:
    """``loss_fn(work(x), y)``."""
    return _scalar(loss_fn(_call(work, x), y))


def _scalar(loss: Any) -> torch.Tensor:
    """``loss`` as a 0-d tensor; anything else than a one-element tensor is an ``error`` verdict."""
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        what = f"shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise _Stop(
            ERROR,
            f"loss_fn returned {what}, not a scalar tensor",
            "loss_fn(outputs, targets) must return the scalar loss: use reduction='mean'.",
        )
    return loss.reshape(())


def _optimizer(
    work: nn.Module, optimizer_factory: OptimizerFactory | None, lr: float | None
) -> torch.optim.Optimizer:
    params = [p for p in work.parameters() if p.requires_grad]
    if not params:
        raise _Stop(
            FAIL,
            "no parameter requires grad: nothing can be trained",
            "Every parameter is frozen (requires_grad=False). " + PLAYBOOK,
        )
    if optimizer_factory is None:
        return torch.optim.Adam(params, lr=lr if lr is not None else 1e-3)
    with _guard(
        "optimizer_factory(params)", "optimizer_factory(params) must return a torch.optim.Optimizer."
    ):
        opt = optimizer_factory(params)
        for group in opt.param_groups if lr is not None else ():
            group["lr"] = lr
    return opt


def _lr_of(opt: torch.optim.Optimizer) -> float | str:
    lrs = {float(g["lr"]) for g in opt.param_groups if isinstance(g.get("lr"), (int, float))}
    return lrs.pop() if len(lrs) == 1 else "various"


class _GradWatch:
    """Which trainable parameters ever get a non-zero gradient, and which the optimizer does not hold."""

    def __init__(self, work: nn.Module, opt: torch.optim.Optimizer) -> None:
        self.named = [(n, p) for n, p in work.named_parameters() if p.requires_grad]
        self.frozen = [n for n, p in work.named_parameters() if not p.requires_grad]
        held = {id(p) for g in opt.param_groups for p in g["params"]}
        self.not_in_optimizer = [n for n, p in self.named if id(p) not in held]
        self.got_grad = [False] * len(self.named)
        self.peak = torch.zeros(len(self.named), device=_device_of(work))

    def update(self) -> None:
        """Called after each backward: folds this step's gradient norms in, without a device sync."""
        norms = []
        for i, (_, p) in enumerate(self.named):
            if p.grad is None:
                norms.append(self.peak.new_zeros(()))
            else:
                self.got_grad[i] = True
                norms.append(torch.linalg.vector_norm(p.grad.detach().float()).to(self.peak.device))
        if norms:
            self.peak = torch.maximum(self.peak, torch.stack(norms))

    def findings(self) -> tuple[str, dict[str, Any]]:
        """Sentences naming the suspects (detached/unused, not in the optimizer, frozen), and their ``numbers``."""
        peak = self.peak.tolist()
        groups = {
            "detached_params": [
                n for (n, _), g, v in zip(self.named, self.got_grad, peak, strict=True) if not g or v == 0
            ],
            "not_in_optimizer": self.not_in_optimizer,
            "frozen_params": self.frozen,
        }
        says = {
            "detached_params": "detached/unused: {} (their gradient stayed None or zero: a .detach(), .data, "
            "torch.no_grad() or a layer never called lies on their path to the loss)",
            "not_in_optimizer": "not in the optimizer: {} (it was built from other parameters: pass "
            "model.parameters())",
            "frozen_params": "frozen (requires_grad=False): {}",
        }
        text = " ".join(f"Found {says[k].format(_names(v))}." for k, v in groups.items() if v)
        return text, {k: ", ".join(v) for k, v in groups.items() if v}


def _by(change: float) -> str:
    """A relative change for a summary: ``by 12.5%``, or ``5.3e+20x`` when it is huge."""
    return f"by {change:.1%}" if abs(change) < 10 else f"{1 + change:.3g}x"


def _names(names: list[str], limit: int = 6) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _kind(loss_fn: Any, y: Any) -> str:
    """``multiclass``, ``binary``, ``integer-targets`` or ``other``."""
    if isinstance(loss_fn, _MULTICLASS) or loss_fn in _MULTICLASS_FNS:
        return "multiclass"
    if isinstance(loss_fn, _BINARY) or loss_fn in _BINARY_FNS:
        return "binary"
    if isinstance(y, torch.Tensor) and not (y.is_floating_point() or y.is_complex() or y.dtype == torch.bool):
        return "integer-targets"
    return "other"


# --- overfit_one_batch --------------------------------------------------------------------------------------


def overfit_one_batch(
    model: nn.Module,
    inputs: Any,
    targets: Any,
    loss_fn: Callable[..., torch.Tensor],
    *,
    optimizer_factory: OptimizerFactory | None = None,
    steps: int = 200,
    lr: float | None = None,
    target: float | None = None,
) -> CheckResult:
    """Train a copy on one batch until the loss goes below ``target``: can the model memorize it?

    Args:
        model: The model (left unchanged; a copy is trained in train mode with dropout off).
        inputs: The batch's inputs (a tensor, or a tuple/list/dict of them). Keep it small: 8-32 samples.
        targets: The batch's targets, passed to ``loss_fn(outputs, targets)``.
        loss_fn: Returns the scalar loss.
        optimizer_factory: ``params -> optimizer`` (default: Adam, lr 1e-3).
        steps: The most optimizer steps to take; training stops as soon as the loss is below ``target``.
        lr: The learning rate; with ``optimizer_factory`` it overrides the lr of every param group.
        target: The loss to get below (default: see the module docstring).

    Returns:
        The ``overfit_one_batch`` result; ``table`` samples the loss curve (about 20 rows).

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``.
        ValueError: An option is out of range.
    """
    _check_module(model)
    _validate(steps, lr, optimizer_factory, loss_fn)
    if target is not None and not (isinstance(target, (int, float)) and math.isfinite(target)):
        raise ValueError(f"invalid target={target!r}: must be a finite number")

    def run() -> CheckResult:
        work, _, (x, y) = _prepare(model, inputs, targets)
        opt = _optimizer(work, optimizer_factory, lr)
        watch = _GradWatch(work, opt)
        with _guard("the first forward pass and loss", _RAISED), torch.no_grad():
            probe = [float(_loss(loss_fn, work, x, y).item()) for _ in range(2)]
        if not all(math.isfinite(v) for v in probe):
            raise _Stop(
                FAIL,
                f"the initial loss is {probe[0]}: nothing to memorize from",
                "The loss is NaN/inf before any step: run initial_loss and data_check. " + PLAYBOOK,
            )
        moving = abs(probe[1] - probe[0]) > 1e-6 * max(1.0, abs(probe[0]))
        goal = target if target is not None else _default_target(loss_fn, y, work, x, probe[0])
        losses: list[float] = []
        with _guard("training on the batch", _RAISED):
            for _ in range(steps + 1):
                opt.zero_grad(set_to_none=True)
                loss = _loss(loss_fn, work, x, y)
                losses.append(float(loss.item()))
                if (
                    not math.isfinite(losses[-1])
                    or losses[-1] <= goal
                    or len(losses) > steps
                    or not loss.requires_grad
                ):
                    break
                loss.backward()
                watch.update()
                opt.step()
        return _overfit_result(losses, goal, watch, opt, probe if moving else None)

    return _run("overfit_one_batch", model, run)


def _default_target(loss_fn: Any, y: Any, work: nn.Module, x: Any, initial: float) -> float:
    if _kind(loss_fn, y) == "other":
        return initial - 0.99 * abs(initial)  # 1% of a positive initial loss
    smoothing = (
        float(getattr(loss_fn, "label_smoothing", 0.0) or 0.0)
        if isinstance(loss_fn, nn.CrossEntropyLoss)
        else 0.0
    )
    if smoothing > 0:
        with torch.no_grad():
            outs = _tensors(_call(work, x))
        c = outs[0].shape[1] if outs and outs[0].dim() >= 2 else 2
        q, r = 1 - smoothing + smoothing / c, smoothing / c
        return -(q * math.log(q) + (c - 1) * r * math.log(r)) + 0.05  # least CE with smoothed targets, + 0.05
    return 0.05


def _overfit_result(
    losses: list[float],
    goal: float,
    watch: _GradWatch,
    opt: torch.optim.Optimizer,
    moving: list[float] | None,
) -> CheckResult:
    initial, final, steps = losses[0], losses[-1], len(losses) - 1
    finite = [v for v in losses if math.isfinite(v)]
    low = min(finite) if finite else math.nan
    tail = sum(losses[-10:]) / len(losses[-10:])
    stride = max(1, math.ceil(steps / 20))
    table = [{"step": i, "loss": v} for i, v in enumerate(losses) if i % stride == 0 or i == steps]
    found, found_numbers = watch.findings()
    numbers: dict[str, Any] = {
        "initial_loss": initial,
        "final_loss": final,
        "min_loss": low,
        "last10_mean_loss": tail,
        "target": goal,
        "steps_taken": steps,
        "reached": final <= goal,
        "optimizer": type(opt).__name__,
        "lr": _lr_of(opt),
        "mode": _MODE,
        **found_numbers,
    }
    if final <= goal:
        summary = (
            f"memorized the batch: loss {initial:.4g} -> {final:.4g} (< target {goal:.4g}) in {steps} steps"
        )
        return CheckResult(
            "overfit_one_batch",
            PASS,
            summary,
            "The model, loss and optimizer can fit one batch: "
            "gradients reach the parameters that matter and the labels are consistent with the inputs.",
            numbers,
            table,
        )
    verdict, lead, notes = FAIL, "", []
    if moving:
        notes.append(
            f"The loss differs between two calls on the same batch with the same parameters ({moving[0]:.6g} "
            f"vs {moving[1]:.6g}): something random sits in the model or the loss, e.g. targets re-drawn, "
            "permuted or augmented inside the loss independently of the inputs. A moving target cannot be "
            "memorized."
        )
    if not math.isfinite(final):
        summary = f"the loss became {final} at step {steps}"
        lead = "The loss diverged: the lr is far too high, or the model or loss computes log(0), 0/0 or exp(big). "
    elif steps == 0:
        summary = f"the loss {initial:.4g} has no gradient: it is detached from every parameter"
        notes.append("The loss has no grad_fn: the model's output (or the loss) is detached from the graph.")
    elif max(finite) - low <= 1e-7 * max(1.0, abs(initial)):
        summary = f"the loss did not change at all: {initial:.6g} for {steps} steps"
    else:
        summary = (
            f"could not memorize one batch: loss {initial:.4g} -> {tail:.4g} (mean of the last 10) in {steps} "
            f"steps, target {goal:.4g}"
        )
        if not moving and initial > goal and (initial - tail) / (initial - goal) >= 0.5:
            verdict, lead = (
                WARN,
                "It got at least halfway: more steps or a higher lr would probably do; if not: ",
            )
    explanation = " ".join(s for s in (lead + PLAYBOOK, found, *notes) if s)
    return CheckResult("overfit_one_batch", verdict, summary, explanation, numbers, table)


# --- loss_decreases -----------------------------------------------------------------------------------------


def loss_decreases(
    model: nn.Module,
    batches: Iterable[Sequence[Any]] | Sequence[Any],
    loss_fn: Callable[..., torch.Tensor],
    *,
    optimizer_factory: OptimizerFactory | None = None,
    steps: int = 10,
    lr: float | None = None,
) -> CheckResult:
    """Take a few optimizer steps on real batches: does the loss on a fixed batch go down?

    Args:
        model: The model (left unchanged; a copy is trained in train mode).
        batches: An iterable of ``(inputs, targets)`` (the first ``steps`` are drawn, and cycled if fewer), or
            one ``(inputs, targets)`` tuple whose inputs are a tensor or dict. The first batch is also the fixed
            batch the loss is evaluated on, with dropout off, before the first step and after every step.
        loss_fn: Returns the scalar loss.
        optimizer_factory: ``params -> optimizer`` (default: Adam, lr 1e-3).
        steps: Optimizer steps.
        lr: The learning rate; with ``optimizer_factory`` it overrides the lr of every param group.

    Returns:
        The ``loss_decreases`` result; ``table`` has the held-batch loss and the training loss of every step.

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``.
        ValueError: An option is out of range, or ``batches`` is empty or holds something else than pairs.
    """
    _check_module(model)
    _validate(steps, lr, optimizer_factory, loss_fn)
    single = isinstance(batches, tuple) and len(batches) == 2 and isinstance(batches[0], (torch.Tensor, dict))
    drawn = [batches] if single else list(itertools.islice(iter(batches), steps))  # type: ignore[arg-type]
    if not drawn:
        raise ValueError("invalid batches: empty, must hold at least one (inputs, targets)")
    for i, b in enumerate(drawn):
        if not isinstance(b, (tuple, list)) or len(b) != 2:
            raise ValueError(f"invalid batch {i} of type {type(b).__name__}: must be (inputs, targets)")

    def run() -> CheckResult:
        work, dropouts, moved = _prepare(model, *drawn)
        opt = _optimizer(work, optimizer_factory, lr)
        watch = _GradWatch(work, opt)
        evals: list[float] = []
        train: list[float] = []

        def evaluate() -> None:
            for m in dropouts:
                m.eval()
            with torch.no_grad():
                evals.append(float(_loss(loss_fn, work, *moved[0]).item()))
            for m in dropouts:  # the training steps run as the user trains: dropout on
                m.train()

        with _guard("a training step", _RAISED):
            evaluate()
            for step in range(steps):
                opt.zero_grad(set_to_none=True)
                loss = _loss(loss_fn, work, *moved[step % len(moved)])
                train.append(float(loss.item()))
                if loss.requires_grad:
                    loss.backward()
                watch.update()
                opt.step()
                evaluate()
        return _decrease_result(evals, train, watch, opt, len(moved))

    return _run("loss_decreases", model, run)


# fmt: off
_DECREASE = {
    "nan": (FAIL, "the loss became NaN/inf", "Training diverged within a few steps: the lr is far too high, or the "
            "model or loss computes log(0), 0/0 or exp(large). Lower the lr 10x; shape_trace shows the first "
            "non-finite layer."),
    "nan-batch": (WARN, "the loss decreased, but some training batches gave NaN/inf", "The held-batch loss went "
                  "down, yet some training batches gave a non-finite loss: look at those batches (data_check) and "
                  "at the loss's numerics."),
    "down": (PASS, "the loss decreased {by}", "A few optimizer steps lower the loss: gradients flow and the "
             "optimizer is wired to them."),
    "barely": (WARN, "the loss barely decreased ({pct})", "The loss fell by less than 1%: the lr may be too low, "
               "or the model is already trained."),
    "up": (FAIL, "the loss went up {by}", "Training makes the loss worse: the lr is far too high (lower it 10x), "
           "the update climbs the loss (a sign-flipped gradient: optimizer maximize=True, a hand-written update "
           "with + instead of -), or gradients pile up across steps (zero_grad missing)."),
    "flat": (FAIL, "the loss did not decrease ({pct})", "Training does not move the loss: the lr is far too low, "
             "or the parameters that matter are not in the optimizer, frozen or detached from the loss "
             "(overfit_one_batch names them)."),
}
# fmt: on
"""``loss_decreases`` outcomes: verdict, summary (formatted with the change) and explanation."""


def _decrease_result(
    evals: list[float], train: list[float], watch: _GradWatch, opt: torch.optim.Optimizer, n_batches: int
) -> CheckResult:
    k = 2 if len(evals) >= 4 else 1
    first, last = sum(evals[:k]) / k, sum(evals[-k:]) / k
    change = (
        (last - first) / max(abs(first), 1e-12) if math.isfinite(first) and math.isfinite(last) else math.nan
    )
    if not math.isfinite(change):
        outcome = "nan"
    elif change <= -0.01:
        outcome = "down" if all(math.isfinite(v) for v in train) else "nan-batch"
    else:
        outcome = "barely" if change < -0.001 else "up" if change > 0.001 else "flat"
    verdict, summary, explanation = _DECREASE[outcome]
    summary = summary.format(by=_by(abs(change)), pct=f"{change:+.2%}")
    found, found_numbers = watch.findings()
    numbers: dict[str, Any] = {
        "first_loss": first,
        "last_loss": last,
        "relative_change": change,
        "steps": len(train),
        "batches": n_batches,
        "optimizer": type(opt).__name__,
        "lr": _lr_of(opt),
        **found_numbers,
    }
    table = [
        {"step": i, "held_loss": e, "train_loss": train[i - 1] if i else None} for i, e in enumerate(evals)
    ]
    what = f": held-batch loss {first:.4g} -> {last:.4g} (mean of the first {k} vs the last {k} evaluations)"
    return CheckResult(
        "loss_decreases", verdict, summary + what, f"{explanation} {found}".strip(), numbers, table
    )
