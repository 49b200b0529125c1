"""Feature maps of a fixed probe input at chosen layers, taken at the optimizer step (issue 3).

:class:`ProbeMaps` runs the watched model on the user's probe input every ``probe_every`` optimizer steps, in eval
mode and under ``torch.no_grad()``, captures the chosen layers' outputs with forward hooks that live only for that
call, downsamples and normalises each channel on the device into ``uint8`` pixels, and hands one stacked copy to the
agent thread (:func:`probe_payload` builds the ``feature_maps`` record). This module imports torch; the monitor
imports it only when ``watch()`` gets a ``probe=``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .instruments import Hook, unwrap

MAX_SIDE = 32
"""Largest side, in pixels, of a map as sent: bigger maps are average-pooled to fit, keeping their aspect."""
MAX_LAYERS = 16
"""Layers a probe may capture at most (``probe_layers=``)."""
MAX_CHANNELS = 64
"""Channels per layer a probe may capture at most (``probe_channels=``)."""
DEFAULT_LAYERS = 4
"""Layers the default choice keeps at most (spread over the model's Conv2d layers)."""
DEFAULT_CHANNELS = 8
"""Channels per layer by default: the first eight."""

_BIG = torch.finfo(torch.float32).max
_ACTIVATIONS: tuple[type, ...] = (
    torch.nn.ReLU,
    torch.nn.ReLU6,
    torch.nn.LeakyReLU,
    torch.nn.PReLU,
    torch.nn.ELU,
    torch.nn.SELU,
    torch.nn.CELU,
    torch.nn.GELU,
    torch.nn.SiLU,
    torch.nn.Mish,
    torch.nn.Tanh,
    torch.nn.Sigmoid,
    torch.nn.Hardtanh,
    torch.nn.Hardswish,
    torch.nn.Hardsigmoid,
    torch.nn.Softplus,
)
_SKIPPABLE: tuple[type, ...] = (
    torch.nn.BatchNorm2d,
    torch.nn.GroupNorm,
    torch.nn.InstanceNorm2d,
    torch.nn.LayerNorm,
    torch.nn.Dropout,
    torch.nn.Dropout2d,
    torch.nn.Identity,
)


def default_layers(model: Any) -> list[str]:
    """The layers a probe captures when ``probe_layers`` is not given.

    For each ``Conv2d`` (in ``named_modules()`` order), the activation module that follows it (norm, dropout and
    identity modules in between are skipped), or the convolution itself when something else comes first (a pool,
    another convolution, a functional activation). With more than :data:`DEFAULT_LAYERS` convolutions, that many
    are kept, spread evenly from the first to the last.

    Args:
        model: The (unwrapped) module.

    Returns:
        Module names, in model order; empty when the model has no ``Conv2d``.
    """
    leaves = [(n, m) for n, m in model.named_modules() if n and not any(True for _ in m.children())]
    picked: list[str] = []
    for i, (name, m) in enumerate(leaves):
        if not isinstance(m, torch.nn.Conv2d):
            continue
        choice = name
        for nxt_name, nxt in leaves[i + 1 :]:
            if isinstance(nxt, _ACTIVATIONS):
                choice = nxt_name
                break
            if not isinstance(nxt, _SKIPPABLE):
                break
        picked.append(choice)
    if len(picked) > DEFAULT_LAYERS:
        n = len(picked)
        keep = sorted({round(k * (n - 1) / (DEFAULT_LAYERS - 1)) for k in range(DEFAULT_LAYERS)})
        picked = [picked[k] for k in keep]
    return picked


def map_size(h: int, w: int, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """The size a ``h × w`` map is sent at: itself when both sides fit in ``max_side``, else scaled down (keeping the
    aspect) so that the longer side is ``max_side``; never below one pixel.

    Args:
        h: Height in pixels.
        w: Width in pixels.
        max_side: The largest side allowed.

    Returns:
        ``(height, width)``.
    """
    if h <= max_side and w <= max_side:
        return h, w
    s = max_side / max(h, w)
    return max(1, min(max_side, round(h * s))), max(1, min(max_side, round(w * s)))


def _first_tensor(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)):
        for v in x:
            if isinstance(v, torch.Tensor):
                return v
    return None


def _as_maps(t: Any) -> Any:
    """The first sample of a layer output as ``[C, H, W]`` (``[C, 1, L]`` for sequence outputs), else ``None``."""
    if t is None or not t.is_floating_point() or t.dim() < 2 or t.dim() > 4 or not t.numel():
        return None
    x = t.detach()[0]
    return x[:, None, :] if x.dim() == 2 else (x[:, None, None] if x.dim() == 1 else x)


@torch.no_grad()
def downsample(x: Any, *, joint: bool = False) -> tuple[Any, Any, Any]:
    """Pool ``[C, H, W]`` maps to :func:`map_size`, then scale each channel to ``uint8`` pixels, on the device.

    A pixel ``v`` stands for ``lo + v / 255 · (hi − lo)``, where ``lo``/``hi`` are the finite minimum and maximum of
    the pooled channel (of all channels together when ``joint``: an RGB image keeps its colours). NaN pixels are 0,
    ``+Inf`` 255 and ``-Inf`` 0; a constant channel is all 0; a channel with no finite pixel has NaN ``lo``/``hi``.

    Args:
        x: Floating-point maps ``[C, H, W]``.
        joint: One range for every channel.

    Returns:
        ``(pixels uint8[C, h, w], ranges float32[2, C], nonfinite float32[C])``: ``nonfinite`` is 1 where the
        channel had a NaN or Inf before pooling.
    """
    x = x.float()
    c, h, w = x.shape
    nonfinite = (~torch.isfinite(x)).flatten(1).any(1).float()
    size = map_size(h, w)
    if size != (h, w):
        x = F.adaptive_avg_pool2d(x[None], size)[0]
    flat = x.flatten(1) if not joint else x.reshape(1, -1)
    lo = torch.nan_to_num(flat, nan=_BIG, posinf=_BIG, neginf=_BIG).amin(1)
    hi = torch.nan_to_num(flat, nan=-_BIG, posinf=-_BIG, neginf=-_BIG).amax(1)
    ok = lo <= hi
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    scaled = (flat - lo[:, None]) / span[:, None]
    scaled = torch.where((hi > lo)[:, None], scaled, torch.zeros_like(scaled))
    pixels = scaled.clamp_(0, 1).nan_to_num_(0.0).mul_(255).round_().to(torch.uint8).reshape(x.shape)
    nan = torch.full_like(lo, math.nan)
    ranges = torch.stack([torch.where(ok, lo, nan), torch.where(ok, hi, nan)])
    if joint:
        ranges = ranges.expand(2, c)
    return pixels, ranges, nonfinite


def _prepare_probe(probe: Any, model: Any) -> Any:
    """The probe as a batch of one on the model's device and floating dtype."""
    if not isinstance(probe, torch.Tensor):
        raise ValueError(
            f"invalid probe={type(probe).__name__}: must be a torch.Tensor (one sample or a batch)"
        )
    if not probe.numel():
        raise ValueError(f"invalid probe of shape {tuple(probe.shape)}: it is empty")
    has_conv2d = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    x = probe.detach()
    if has_conv2d:
        if x.dim() == 2:
            x = x[None, None]
        elif x.dim() == 3:
            x = x[None]
        elif x.dim() == 4:
            x = x[:1]
        else:
            raise ValueError(
                f"invalid probe of shape {tuple(probe.shape)}: a Conv2d model takes (H, W), (C, H, W) "
                "or a batch (N, C, H, W)"
            )
    elif x.dim() >= 2:
        x = x[:1]
    else:
        x = x[None]
    p = next(iter(model.parameters()), None)
    if p is not None:
        dtype = p.dtype if (x.is_floating_point() and p.is_floating_point()) else x.dtype
        x = x.to(device=p.device, dtype=dtype)
    return x.clone()


def _channels(channels: Any) -> int | tuple[int, ...]:
    if isinstance(channels, bool):
        raise ValueError(
            f"invalid probe_channels={channels!r}: an int from 1 to {MAX_CHANNELS} or channel indices"
        )
    if isinstance(channels, int):
        if not 1 <= channels <= MAX_CHANNELS:
            raise ValueError(f"invalid probe_channels={channels!r}: must be an int from 1 to {MAX_CHANNELS}")
        return channels
    try:
        idx = tuple(channels)
    except TypeError:
        raise ValueError(
            f"invalid probe_channels={channels!r}: an int from 1 to {MAX_CHANNELS} or channel indices"
        ) from None
    if (
        not idx
        or len(idx) > MAX_CHANNELS
        or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in idx)
    ):
        raise ValueError(
            f"invalid probe_channels={channels!r}: 1 to {MAX_CHANNELS} channel indices, each >= 0"
        )
    return tuple(sorted(set(idx)))


class ProbeMaps:
    """Runs the model on a fixed probe input every ``every`` optimizer steps and queues its feature maps.

    The pass happens in this object's own optimizer step post hook, at the first ``optimizer.step()`` after
    :meth:`install` and then at steps ``every``, ``2 × every``, ... (counted like the other samplers). It leaves
    training as it was: every module's ``training`` flag is saved, the model is put in eval mode (so norm layers
    read their running statistics and write none, dropout is off) and each flag is restored exactly afterwards; the
    call runs under ``torch.no_grad()`` (no graph, gradients untouched) and inside ``torch.random.fork_rng`` on the
    probe's device (a model that draws random numbers in eval mode does not shift the training's RNG stream); the
    activation-statistics hooks ignore it (they only measure training-mode forwards). The capturing forward hooks
    are registered for that one call and removed in a ``finally``. Each captured output's first sample is pooled
    and normalised on the device (:func:`downsample`); everything is concatenated into one ``uint8`` and one
    ``float32`` tensor and copied to the host without waiting (pinned memory and an event on CUDA), like the other
    samplers do. Any exception turns the probe off (``on_error`` is told once); training goes on.

    Cost: one forward pass of a batch of one plus a few small kernels per layer, every ``every`` steps.

    Args:
        model: The module (``DataParallel``/DDP/``torch.compile`` wrappers are unwrapped: the probe runs the user's
            module eagerly).
        optimizer: The optimizer whose ``step()`` is hooked.
        probe: A fixed input: one sample (``(C, H, W)`` or ``(H, W)`` for a model with ``Conv2d`` layers) or a
            batch, whose first sample is used. Copied once to the model's device and floating dtype.
        every: Optimizer steps between two passes (``>= 1``).
        layers: Module names to capture (default: :func:`default_layers`).
        channels: How many leading channels per layer (default :data:`DEFAULT_CHANNELS`), or which channel indices.
        enqueue: ``enqueue(kind, step, payload)`` with ``kind`` ``"probe"`` (training thread, only queues).
        step_of: The step the record of the optimizer step just taken belongs to.
        on_error: Called once with the exception that turned the probe off.

    Raises:
        ValueError: A bad option (the message shows the value), an unknown layer name, or no layer to capture.
    """

    def __init__(
        self,
        model: Any,
        optimizer: Any,
        *,
        probe: Any,
        every: int,
        layers: Sequence[str] | str | None = None,
        channels: int | Sequence[int] = DEFAULT_CHANNELS,
        enqueue: Callable[[str, int | None, Any], None],
        step_of: Callable[[], int],
        on_error: Callable[[BaseException], None],
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"invalid probe_every={every!r}: must be an int >= 1")
        self.model = unwrap(model)
        self.optimizer = optimizer
        self.every = every
        self.channels = _channels(channels)
        by_name = dict(self.model.named_modules())
        if layers is None:
            names = default_layers(self.model)
            if not names:
                raise ValueError(
                    "probe= found no Conv2d layer in the model: name the layers with probe_layers="
                )
        else:
            names = [layers] if isinstance(layers, str) else list(layers)
            if not names or len(names) > MAX_LAYERS:
                raise ValueError(f"invalid probe_layers={layers!r}: 1 to {MAX_LAYERS} module names")
            for n in names:
                if not isinstance(n, str) or n not in by_name:
                    known = ", ".join(k for k in list(by_name)[1:12] if k)
                    raise ValueError(
                        f"invalid probe_layers entry {n!r}: no such module (modules: {known}, ...)"
                    )
        self.layers: tuple[str, ...] = tuple(dict.fromkeys(names))
        self._modules = [by_name[n] for n in self.layers]
        self._types = tuple(type(m).__name__ for m in self._modules)
        self.probe = _prepare_probe(probe, self.model)
        self._enqueue = enqueue
        self._step_of = step_of
        self._on_error = on_error
        self._calls = 0
        self._off = False
        self._handles: list[Any] = []
        self._temp: list[Any] = []

    def install(self) -> list[Any]:
        """Register the optimizer step post hook; returns its handle."""
        self._handles = [self.optimizer.register_step_post_hook(Hook(self._post))]
        return self._handles

    def remove(self) -> None:
        """Remove the step hook (and any capture hook still registered). Safe to call twice."""
        self._off = True
        for h in self._handles + self._temp:
            h.remove()
        self._handles = []
        self._temp = []

    def _post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        """Called after every ``optimizer.step()``: on a sampled step, probe."""
        if self._off:
            return
        self._calls += 1
        if self._calls != 1 and self._calls % self.every:
            return
        try:
            self.measure()
        except Exception as exc:
            self._off = True
            self._on_error(exc)

    def measure(self) -> None:
        """Run the probe and queue its maps (no host wait)."""
        model = self.model
        probe = self.probe
        p = next(iter(model.parameters()), None)
        if p is not None and p.device != probe.device:  # the model moved after watch()
            probe = self.probe = probe.to(p.device)
        if p is not None and p.is_floating_point() and probe.is_floating_point() and p.dtype != probe.dtype:
            probe = self.probe = probe.to(p.dtype)  # the model was cast (.half(), .double()) after watch()
        captured: list[Any] = [None] * len(self._modules)

        def capture(i: int) -> Any:
            def hook(module: Any, args: Any, output: Any) -> None:
                if captured[i] is None:  # a module called several times: its first call
                    x = _as_maps(_first_tensor(output))
                    captured[i] = False if x is None else self._pick(x)

            return hook

        flags = [(m, m.training) for m in model.modules()]
        dev = probe.device
        rng_devices = [] if dev.type == "cpu" else [dev.index if dev.index is not None else 0]
        try:
            self._temp = [m.register_forward_hook(Hook(capture(i))) for i, m in enumerate(self._modules)]
            with (
                torch.random.fork_rng(
                    devices=rng_devices, device_type=dev.type if dev.type != "cpu" else "cuda"
                ),
                torch.no_grad(),
            ):
                model.eval()
                model(probe)
        finally:
            for h in self._temp:
                h.remove()
            self._temp = []
            for m, training in flags:
                m.training = training
        self._queue(captured, probe)

    def _pick(self, x: Any) -> tuple[Any, list[int], list[int]]:
        """The chosen channels of ``[C, H, W]`` maps, downsampled; with their indices and the map's full shape."""
        c = x.shape[0]
        if isinstance(self.channels, int):
            idx = list(range(min(c, self.channels)))
            sel = x[: len(idx)]
        else:
            idx = [k for k in self.channels if k < c]
            sel = x[idx] if idx else x[:0]
        shape = [int(d) for d in x.shape]
        if not idx:
            return None, idx, shape
        return downsample(sel), idx, shape

    @torch.no_grad()
    def _queue(self, captured: list[Any], probe: Any) -> None:
        step = self._step_of()
        pixels: list[Any] = []
        floats: list[Any] = []
        meta: list[dict[str, Any]] = []
        for name, kind, got in zip(self.layers, self._types, captured, strict=True):
            if not got or got[0] is None:
                continue  # not called in this forward, or no map-shaped floating-point output
            (px, ranges, bad), idx, shape = got
            pixels.append(px.reshape(-1))
            floats.append(torch.cat([ranges, bad[None]]))
            meta.append({"name": name, "type": kind, "shape": shape, "channels": idx, "size": list(px.shape)})
        image = None
        x = _as_maps(probe) if probe.dim() >= 3 else None
        if x is not None and probe.is_floating_point():
            rgb = x.shape[0] == 3
            px, ranges, bad = downsample(x if rgb else x[:1], joint=rgb)
            pixels.append(px.reshape(-1))
            floats.append(torch.cat([ranges, bad[None]]))
            image = {"shape": [int(d) for d in probe.shape[1:]], "rgb": rgb, "size": list(px.shape)}
        if not pixels:
            self._enqueue("probe", step, ([], None, meta, image, self.every))
            return
        tensors = [torch.cat(pixels), torch.cat(floats, dim=1)]
        if tensors[0].device.type == "cuda":
            bufs = []
            for t in tensors:
                b = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                b.copy_(t, non_blocking=True)
                bufs.append(b)
            event: Any = torch.cuda.Event()
            event.record()
        else:
            bufs, event = tensors, None
        self._enqueue("probe", step, (bufs, event, meta, image, self.every))


def probe_payload(
    bufs: list[Any], event: Any, meta: list[dict[str, Any]], image: dict[str, Any] | None, every: int
) -> dict[str, Any]:
    """Turn the host buffers of one probe pass into the ``feature_maps`` payload (agent thread).

    Args:
        bufs: ``[uint8 pixels, float32[3, channels] ranges and non-finite flags]`` (empty when nothing was
            captured).
        event: The CUDA event to wait for, or ``None``.
        meta: Per captured layer: ``name``, ``type``, ``shape``, ``channels``, ``size`` (``[C, h, w]`` as sent).
        image: The probe image's ``shape``, ``rgb`` and ``size``, or ``None``.
        every: The probe interval.

    Returns:
        The record payload (see ``protocol.FEATURE_MAPS``).
    """
    if event is not None:
        event.synchronize()
    out: dict[str, Any] = {"every": int(every), "layers": []}
    if not bufs:
        out["input"] = None
        return out
    pixels = bufs[0].numpy()
    floats = bufs[1].numpy()
    p = c = 0

    def take(size: list[int]) -> dict[str, Any]:
        nonlocal p, c
        n_px, n_c = math.prod(size), size[0]
        part = {
            "maps": np.ascontiguousarray(pixels[p : p + n_px].reshape(size), dtype=np.uint8),
            "min": np.ascontiguousarray(floats[0, c : c + n_c], dtype=np.float32),
            "max": np.ascontiguousarray(floats[1, c : c + n_c], dtype=np.float32),
            "nonfinite": (floats[2, c : c + n_c] > 0).astype(np.uint8),
        }
        p += n_px
        c += n_c
        return part

    for m in meta:
        out["layers"].append(
            {
                "name": m["name"],
                "type": m["type"],
                "shape": m["shape"],
                "channels": m["channels"],
                **take(m["size"]),
            }
        )
    if image is not None:
        part = take(image["size"])
        out["input"] = {"shape": image["shape"], "rgb": image["rgb"], **part}
    else:
        out["input"] = None
    return out
