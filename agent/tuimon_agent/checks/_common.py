"""Helpers the checks share: copying a model, calling it, guarding a step, isolating the RNG, timing a check."""

from __future__ import annotations

import contextlib
import copy
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from ._result import ERROR, CheckResult


def _check_module(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"invalid model of type {type(model).__name__}: must be a torch.nn.Module")


def _device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model without tensors."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _cuda_devices(model: nn.Module) -> list[int]:
    """The CUDA device indices holding the model's parameters and buffers."""
    tensors = [*model.parameters(), *model.buffers()]
    return sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})


@contextlib.contextmanager
def _isolated(model: nn.Module) -> Iterator[None]:
    """Fork the global RNG state (CPU and the model's CUDA devices): what the check draws is not seen outside."""
    with torch.random.fork_rng(devices=_cuda_devices(model)):
        yield


def _reseed(seed: int, devices: list[int]) -> None:
    """Seed the CPU generator and those of ``devices`` only: the ones :func:`_isolated` forked."""
    torch.default_generator.manual_seed(seed)
    for i in devices:
        with torch.cuda.device(i):
            torch.cuda.manual_seed(seed)


def _copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every ``.grad`` cleared (the user's gradients are not the check's)."""
    work = copy.deepcopy(model)
    for p in work.parameters():
        p.grad = None
    return work


def _map(x: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply ``fn`` to every tensor in ``x`` (a tensor or nested tuple/list/dict); other values pass through."""
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, (tuple, list)):
        return type(x)(_map(v, fn) for v in x)
    if isinstance(x, dict):
        return {k: _map(v, fn) for k, v in x.items()}
    return x


def _tensors(x: Any) -> list[torch.Tensor]:
    """Every tensor in ``x`` (a tensor or nested tuple/list/dict), in order."""
    found: list[torch.Tensor] = []
    _map(x, lambda t: found.append(t) or t)
    return found


def _call(model: nn.Module, inputs: Any) -> Any:
    """``model(inputs)``, ``model(*inputs)`` for a tuple/list, ``model(**inputs)`` for a dict."""
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    if isinstance(inputs, dict):
        return model(**inputs)
    return model(inputs)


def _exc_text(exc: BaseException) -> str:
    """``Type: message`` on one line, at most 300 characters."""
    text = traceback.format_exception_only(type(exc), exc)[-1].strip().replace("\n", " ")
    return text if len(text) <= 300 else text[:297] + "..."


class _Stop(Exception):
    """Ends a check early with a verdict (a bug in the user's code, or a check that cannot run): never escapes."""

    def __init__(self, verdict: str, summary: str, explanation: str = "", **numbers: Any) -> None:
        super().__init__(summary)
        self.verdict, self.summary, self.explanation, self.numbers = verdict, summary, explanation, numbers


@contextlib.contextmanager
def _guard(what: str, explanation: str) -> Iterator[None]:
    """Turn an exception raised by user code inside the block into an ``error`` verdict naming ``what`` failed."""
    try:
        yield
    except _Stop:
        raise
    except Exception as exc:
        raise _Stop(ERROR, f"{what} raised: {_exc_text(exc)}", explanation) from exc


def _run(name: str, model: nn.Module, body: Callable[[], CheckResult]) -> CheckResult:
    """Run ``body`` with the RNG forked, turning a :class:`_Stop` into its result, and time it."""
    t0 = time.perf_counter()
    with _isolated(model):
        try:
            result = body()
        except _Stop as stop:
            result = CheckResult(name, stop.verdict, stop.summary, stop.explanation, stop.numbers)
    result.seconds = time.perf_counter() - t0
    return result
