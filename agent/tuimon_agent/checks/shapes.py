"""``shape_trace``: one forward pass with a hook on every module, and the shape bugs it reveals.

How to read the result: ``table`` has one row per module *call*, in the order the calls started (a container
comes before its children; a module called twice has two rows): ``module`` (qualified name, ``(model)`` for the
model itself), ``type``, ``in_shape`` / ``out_shape`` (``8×1×8×8``; several tensors joined by ``, ``; an empty
``out_shape`` means the call raised), ``dtype`` and ``device`` of the output, ``params`` (the module's own
parameters, not its children's) and ``nonfinite`` (NaN/Inf in the output).

Each problem found is a *finding*: ``fail`` for what is a bug, ``warn`` for what only looks like one. The summary
names the most serious finding, the explanation lists them all with what to do, and ``numbers`` counts them
(``fails``, ``warns``) beside the model's size (``params``, ``modules``, ``calls``). The findings:

* a prediction/target pair whose shapes broadcast in the loss, e.g. ``(N, 1)`` against ``(N,)`` in ``MSELoss``:
  the loss silently compares every prediction with every target (an ``N×N`` matrix);
* probabilities or log-probabilities (a final ``Softmax``/``LogSoftmax``) fed to ``CrossEntropyLoss``, which
  applies log-softmax itself; or ``NLLLoss`` fed something that is not log-probabilities;
* integer inputs reaching a layer with floating-point weights, and floating inputs of another precision than the
  weights (``float64`` data into a ``float32`` model);
* channels-last images (``N×H×W×C``) fed to a channels-first convolution;
* a batch dimension mixed with another (``x.view(-1, k)`` with the wrong ``k``): the batch size changes on the way;
* the first module whose output holds NaN or Inf;
* a forward pass or loss that raises: the row of the module that raised, and its message.

The model is left as it was: hooks are removed (even when the forward raises), the pass runs under ``no_grad`` in
eval mode, each module's train/eval mode and every buffer are restored, and the global RNG state is forked.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._result import ERROR, FAIL, PASS, WARN, CheckResult

NAME = "shape_trace"
MAX_ROWS = 2000
"""Rows kept in ``table``; ``numbers['calls']`` counts them all."""
PROB_TOL = 1e-3
"""How far from 1 a row of (exponentiated) outputs may sum and still count as a probability distribution."""
ELEMENTWISE_LOSSES = (nn.MSELoss, nn.L1Loss, nn.SmoothL1Loss, nn.HuberLoss, nn.BCELoss, nn.BCEWithLogitsLoss)
ELEMENTWISE_FUNCTIONS = ("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "binary_cross_entropy")
"""Functional losses (and their ``_with_logits`` forms) that compare prediction and target element by element."""
_PERMUTE = {1: "permute(0, 2, 1)", 2: "permute(0, 3, 1, 2)", 3: "permute(0, 4, 1, 2, 3)"}


@dataclass
class _Finding:
    kind: str
    verdict: str
    title: str
    advice: str


def _dt(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _tensors(x: Any) -> Iterator[torch.Tensor]:
    """Every tensor in ``x``, looking inside tuples, lists and dicts."""
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (tuple, list)):
        for v in x:
            yield from _tensors(v)
    elif isinstance(x, dict):
        for v in x.values():
            yield from _tensors(v)


def _shape(t: torch.Tensor) -> str:
    return "×".join(str(s) for s in t.shape) if t.dim() else "scalar"


def _shapes(x: Any) -> str:
    ts = list(_tensors(x))
    return ", ".join(_shape(t) for t in ts[:6]) + (", …" if len(ts) > 6 else "")


def _finite(t: torch.Tensor) -> bool:
    if not t.is_floating_point() or t.numel() == 0:
        return not t.is_complex() or bool(torch.isfinite(t).all())
    return bool(
        torch.isfinite(torch.stack(torch.aminmax(t))).all()
    )  # NaN propagates; 7x faster than isfinite


def _nonfinite(ts: list[torch.Tensor]) -> bool:
    return not all(_finite(t) for t in ts)


def _prediction(out: Any) -> torch.Tensor | None:
    """The tensor a loss would see: the output itself, ``out['logits']``, or the first tensor inside."""
    if isinstance(out, dict) and isinstance(out.get("logits"), torch.Tensor):
        return out["logits"]
    return next(_tensors(out), None)


def _loss_kind(loss_fn: Any) -> str:
    """``ce``, ``nll``, ``elementwise`` or ``other``."""
    name = getattr(loss_fn, "__name__", "")
    if isinstance(loss_fn, nn.CrossEntropyLoss) or name == "cross_entropy":
        return "ce"
    if isinstance(loss_fn, nn.NLLLoss) or name == "nll_loss":
        return "nll"
    if isinstance(loss_fn, ELEMENTWISE_LOSSES) or name.removesuffix("_with_logits") in ELEMENTWISE_FUNCTIONS:
        return "elementwise"
    return "other"


def _distribution(pred: torch.Tensor) -> str | None:
    """``probabilities`` or ``log-probabilities`` if every row along dim 1 is one, else None."""
    if pred.dim() < 2 or pred.shape[1] < 2 or not pred.is_floating_point() or pred.numel() == 0:
        return None
    if not _finite(pred):
        return None
    p = pred.detach().double()
    if bool((p >= 0).all()) and bool((p <= 1).all()) and bool(((p.sum(1) - 1).abs() < PROB_TOL).all()):
        return "probabilities"
    if bool((p <= 1e-6).all()) and bool(((p.exp().sum(1) - 1).abs() < PROB_TOL).all()):
        return "log-probabilities"
    return None


class _Tracer:
    """The hooks' shared state: rows, the stack of calls in flight and the findings they raise."""

    def __init__(self, model: nn.Module, batch: int | None) -> None:
        self.names = {id(m): name or "(model)" for name, m in model.named_modules()}
        self.batch = batch
        self.rows: list[dict[str, Any]] = []
        self.stack: list[int] = []
        self.findings: list[_Finding] = []
        self.last_leaf: tuple[nn.Module, Any] | None = None
        self.batch_numels: set[int] = set()
        """Sizes of the tensors seen with the batch in dim 0: a view of one of them keeps its size."""

    def flag(self, kind: str, verdict: str, title: str, advice: str) -> None:
        # Only the first of each kind: it is the one to fix, and the rest usually follow from it.
        if all(f.kind != kind for f in self.findings):
            self.findings.append(_Finding(kind, verdict, title, advice))

    def pre(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        name = self.names.get(id(module), "?")
        tensors = list(_tensors(args)) + list(_tensors(kwargs))
        self.rows.append(
            {
                "module": name,
                "type": type(module).__name__,
                "in_shape": _shapes((args, kwargs)),
                "out_shape": "",
                "dtype": _dt(tensors[0].dtype) if tensors else "",
                "device": str(tensors[0].device) if tensors else "",
                "params": sum(p.numel() for p in module.parameters(recurse=False)),
                "nonfinite": False,
            }
        )
        caller = self.rows[self.stack[-1]]["module"] if self.stack else None
        self.stack.append(len(self.rows) - 1)
        first = args[0] if args and isinstance(args[0], torch.Tensor) else (tensors[0] if tensors else None)
        if first is None:
            return
        if caller is None:
            self.batch_numels.update(t.numel() for t in tensors if t.dim() and t.shape[0] == self.batch)
        elif (
            self.batch is not None
            and first.dim()
            and first.shape[0] != self.batch
            and first.numel() in self.batch_numels  # a reshape of a batch tensor, not e.g. position ids
        ):
            self._batch_changed(
                first, f"before {name!r} ({type(module).__name__}), in the forward of {caller!r}"
            )
        self._dtype(module, name, first)
        self._channels_last(module, name, first)

    def post(self, module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        if not self.stack:
            return
        row = self.rows[self.stack.pop()]
        tensors = list(_tensors(out))
        row["out_shape"] = _shapes(out) if tensors else type(out).__name__
        if tensors:
            row["dtype"] = _dt(tensors[0].dtype)
            row["device"] = str(tensors[0].device)
        row["nonfinite"] = _nonfinite(tensors)
        self.batch_numels.update(t.numel() for t in tensors if t.dim() and t.shape[0] == self.batch)
        if not any(True for _ in module.children()):
            self.last_leaf = (module, out)
        name = row["module"]
        if row["nonfinite"]:
            inputs_bad = _nonfinite(list(_tensors(args)))
            self.flag(
                "nonfinite",
                FAIL,
                f"NaN/Inf first appears in the output of {name!r} ({row['type']})",
                "its inputs already held NaN/Inf: look at the data (data_check) or the code before it"
                if inputs_bad
                else "its inputs were finite: look for log(0), division by zero, sqrt of a negative, exp overflow "
                "or an uninitialized (torch.empty) parameter or buffer in this module",
            )
        first_in = next(_tensors(args), None)
        if (
            tensors
            and self.batch is not None
            and first_in is not None
            and first_in.dim()
            and first_in.shape[0] == self.batch
            and tensors[0].dim()
            and tensors[0].shape[0] != self.batch
        ):
            self._batch_changed(tensors[0], f"in {name!r} ({row['type']})")

    def _batch_changed(self, t: torch.Tensor, where: str) -> None:
        if self.batch in tuple(t.shape[1:]):
            return  # a transpose (sequence-first layers): the batch is still there, just elsewhere
        self.flag(
            "batch",
            FAIL,
            f"the batch dimension changed from {self.batch} to {t.shape[0]} {where} (shape {_shape(t)})",
            "a reshape/view mixed the batch dimension with another, so samples bleed into each other: use "
            "x.flatten(1) or x.view(x.size(0), -1) instead of x.view(-1, k), and check that k is the real "
            "feature size (ignore this if dim 0 is not the batch, e.g. nodes of a graph)",
        )

    def _dtype(self, module: nn.Module, name: str, x: torch.Tensor) -> None:
        weights = [p for p in module.parameters(recurse=False) if p.is_floating_point()]
        if not weights or any(True for _ in module.children()):
            return
        w = weights[0].dtype
        kind = type(module).__name__
        if not x.is_floating_point() and not x.is_complex():
            if "embed" in kind.lower():
                return
            self.flag(
                "dtype",
                FAIL,
                f"integer input ({_dt(x.dtype)}) reaches {name!r} ({kind}) whose weights are {_dt(w)}",
                "this will error or be silently cast: convert the data with x.float() (and normalize it), or, "
                "for token/category ids, look them up with nn.Embedding first",
            )
        elif x.is_floating_point() and x.dtype != w:
            self.flag(
                "dtype",
                WARN,  # a fail if the forward then raises
                f"{_dt(x.dtype)} input reaches {name!r} ({kind}) whose weights are {_dt(w)}",
                f"convert the data to the model's dtype (x.to({w})), usually in the dataset or collate "
                "function: mixed precisions error out or are silently cast, and float64 doubles memory and time",
            )

    def _channels_last(self, module: nn.Module, name: str, x: torch.Tensor) -> None:
        if not isinstance(module, nn.modules.conv._ConvNd):  # transposed ones too: input channels in dim 1
            return
        dims = len(module.kernel_size)
        c = module.in_channels
        if x.dim() == dims + 2 and x.shape[1] != c and x.shape[-1] == c:
            self.flag(
                "channels",
                FAIL,
                f"channels-last input {_shape(x)} to {name!r} ({type(module).__name__}), which expects "
                f"in_channels={c} in dim 1",
                f"PyTorch convolutions are channels-first (N, C, ...): x = x.{_PERMUTE[dims]} (or fix the "
                "dataset's transform, e.g. torchvision's ToTensor)",
            )


def _check_loss(tracer: _Tracer, out: Any, targets: Any, loss_fn: Callable[..., Any] | None) -> float | None:
    """Flag loss-side bugs: broadcasting shapes, (log-)probabilities into CrossEntropyLoss/NLLLoss, a raising loss."""
    pred = _prediction(out)
    if pred is None:
        return None
    kind = _loss_kind(loss_fn) if loss_fn is not None else "none"
    if isinstance(targets, torch.Tensor) and pred.shape != targets.shape and kind not in ("ce", "nll"):
        try:
            both = torch.Size(torch.broadcast_shapes(pred.shape, targets.shape))
        except RuntimeError:
            both = None  # the loss itself will raise: reported below
        if both is not None and both.numel() > max(pred.numel(), targets.numel()):
            loss = "an elementwise loss" if loss_fn is None else getattr(loss_fn, "__name__", "the loss")
            loss = type(loss_fn).__name__ if isinstance(loss_fn, nn.Module) else loss
            tracer.flag(
                "broadcast",
                WARN if kind == "none" else FAIL,
                f"prediction {_shape(pred)} and target {_shape(targets)} broadcast to "
                f"{'×'.join(map(str, both))} in {loss}",
                "every prediction is compared with every target, so the loss goes down without the model "
                "learning: make the shapes equal, e.g. pred.squeeze(-1) or target.unsqueeze(-1)",
            )
    dist = _distribution(pred)
    last = tracer.last_leaf
    if (
        last is not None
        and last[1] is pred
        and isinstance(last[0], (nn.Softmax, nn.LogSoftmax, nn.Softmax2d))
    ):
        what = f"a final {type(last[0]).__name__}"
    else:
        what = f"outputs that are {dist or 'not log-probabilities'}"
    if kind == "ce" and (dist is not None or what.startswith("a final")):
        tracer.flag(
            "softmax",
            FAIL,
            f"CrossEntropyLoss is fed {what}",
            "CrossEntropyLoss applies log-softmax itself, so a softmax before it squashes the gradients and "
            "training stalls: return raw logits (remove the Softmax), or keep LogSoftmax and use NLLLoss",
        )
    elif kind == "nll" and dist != "log-probabilities":
        tracer.flag(
            "softmax",
            FAIL if dist == "probabilities" else WARN,
            f"NLLLoss is fed {what}",
            "NLLLoss expects log-probabilities: end the model with LogSoftmax(dim=1), or use CrossEntropyLoss "
            "on raw logits",
        )
    if loss_fn is None or targets is None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. MSELoss's size warning: the finding above says it better
            loss = loss_fn(out, targets)
    except Exception as exc:  # a user bug: report it, never raise
        tracer.flag(
            "loss",
            FAIL,
            f"loss_fn(prediction {_shape(pred)}, targets) raised {type(exc).__name__}: {_first_line(exc)}",
            "the model's output and the targets do not fit this loss: compare their shapes and dtypes with what "
            "the loss documents (CrossEntropyLoss: (N, C) float logits and (N,) int64 class indices)",
        )
        return None
    return float(loss) if isinstance(loss, torch.Tensor) and loss.numel() == 1 else None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0].rstrip(".") if lines else ""
    return text[:200] + ("…" if len(text) > 200 else "")


def shape_trace(
    model: nn.Module,
    inputs: Any,
    *,
    targets: Any = None,
    loss_fn: Callable[..., Any] | None = None,
) -> CheckResult:
    """Trace one forward pass module by module and flag the shape, dtype and layout bugs it shows.

    Args:
        model: The model; left as it was (hooks removed, modes and buffers restored, RNG state untouched).
        inputs: A tensor (``model(x)``), a tuple/list of tensors (``model(*inputs)``) or a dict
            (``model(**inputs)``). Dim 0 of the first tensor is taken as the batch size.
        targets: The batch's targets, to check them against the prediction.
        loss_fn: ``loss_fn(prediction, targets)``; its type decides which mismatches are bugs.

    Returns:
        A ``shape_trace`` result: a row per module call, ``fail`` for a bug, ``warn`` for a suspicion.

    Raises:
        ValueError: ``model`` is not an ``nn.Module``, ``inputs`` is not a tensor/tuple/list/dict or ``loss_fn``
            is not callable.
    """
    t0 = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise ValueError(f"invalid model={type(model).__name__}: must be a torch.nn.Module")
    if not isinstance(inputs, (torch.Tensor, tuple, list, dict)):
        raise ValueError(
            f"invalid inputs of type {type(inputs).__name__}: must be a tensor, tuple, list or dict"
        )
    if loss_fn is not None and not callable(loss_fn):
        raise ValueError(f"invalid loss_fn={loss_fn!r}: must be callable")
    first = next(_tensors(inputs), None)
    tracer = _Tracer(model, int(first.shape[0]) if first is not None and first.dim() else None)
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    handles = []
    devices = sorted({t.device.index or 0 for t in [*_tensors(inputs), *model.parameters()] if t.is_cuda})
    if isinstance(inputs, dict):
        args, kwargs = (), inputs
    else:
        args, kwargs = (tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)), {}
    out: Any = None
    raised: BaseException | None = None
    loss = None
    try:
        for m in model.modules():
            handles.append(m.register_forward_pre_hook(tracer.pre, with_kwargs=True))
            handles.append(m.register_forward_hook(tracer.post))
    except Exception as exc:  # e.g. a scripted module that takes no hooks
        for h in handles:
            h.remove()
        return CheckResult(NAME, ERROR, f"could not hook the model: {exc}", seconds=time.perf_counter() - t0)
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            model.eval()
            try:
                out = model(*args, **kwargs)
            except Exception as exc:  # the user's bug: diagnose it below
                raised = exc
            if raised is None:
                loss = _check_loss(tracer, out, targets, loss_fn)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
    if raised is not None:
        row = tracer.rows[tracer.stack[-1]] if tracer.stack else None
        where = f"{row['module']!r} ({row['type']})" if row else "the model's forward"
        for f in tracer.findings:
            f.verdict = FAIL if f.kind == "dtype" else f.verdict
        tracer.flag(
            "raised",
            FAIL,
            f"the forward raised in {where}: {type(raised).__name__}: {_first_line(raised)}",
            f"the table stops at that call (input {row['in_shape']})" if row else "no module was reached",
        )
    findings = sorted(tracer.findings, key=lambda f: f.verdict != FAIL)
    fails, warns = sum(f.verdict == FAIL for f in findings), sum(f.verdict == WARN for f in findings)
    numbers: dict[str, Any] = {
        "fails": fails,
        "warns": warns,
        "params": sum(p.numel() for p in model.parameters()),
    }
    numbers |= {"modules": len(modes), "calls": len(tracer.rows)}
    numbers |= {k: v for k, v in (("batch", tracer.batch), ("loss", loss)) if v is not None}
    if findings:
        summary = findings[0].title
        if raised is not None and findings[0].kind != "raised":
            summary += f" (the forward then raised {type(raised).__name__})"
        explanation = " ".join(f"{i}. {f.title}: {f.advice}." for i, f in enumerate(findings, 1))
    else:
        pred = _prediction(out)
        summary = f"{len(tracer.rows)} module calls, output {_shape(pred) if pred is not None else '?'}, no findings"
        explanation = (
            "Shapes, dtypes and layouts look consistent: the batch dimension is kept, no NaN/Inf appears"
            + (", and the prediction fits the loss" if loss_fn is not None and targets is not None else "")
            + ". Read the table to confirm each module sees the shape you expect."
        )
    verdict = FAIL if fails else WARN if warns else PASS
    return CheckResult(
        NAME, verdict, summary, explanation, numbers, tracer.rows[:MAX_ROWS], time.perf_counter() - t0
    )
