"""Feature maps of the probe input, as the viewer keeps them: the latest ``feature_maps`` record, checked.

Pure Python and numpy, no Textual; one thread applies records and reads. Only the latest sample is kept (a few tens
of kilobytes at most: the agent bounds layers, channels and map sizes), so memory does not grow with the run. A
record that does not fit the protocol is dropped whole or in part (a malformed layer), never raised on, and counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tuimon_agent import protocol

FEATURE_MAPS = getattr(protocol, "FEATURE_MAPS", "feature_maps")
"""The record kind of one probe pass."""
MAX_LAYERS = 64
"""Layers of one record kept at most (the agent sends 16 at most)."""
MAX_PIXELS = 1 << 22
"""Pixels of one layer accepted at most (a hostile record cannot make the widget draw without bound)."""
MAX_CHANNELS = 256
"""Maps of one layer accepted at most (the agent sends 64 at most)."""


@dataclass(frozen=True)
class MapSet:
    """One layer's maps (or the probe image) from a ``feature_maps`` record.

    Attributes:
        name: Module name (``"input"`` for the probe image).
        type: Module class name (``""`` for the probe image).
        shape: The sample's output shape before pooling (``[C, H, W]``), as sent.
        channels: The channel index of each map.
        maps: ``uint8[K, h, w]`` pixels.
        lo: ``float64[K]``: what pixel 0 stands for (NaN: the channel had no finite value).
        hi: ``float64[K]``: what pixel 255 stands for.
        nonfinite: ``bool[K]``: the channel had a NaN or Inf.
        rgb: The three maps are one colour image.
    """

    name: str
    type: str
    shape: tuple[int, ...]
    channels: tuple[int, ...]
    maps: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    nonfinite: np.ndarray
    rgb: bool = False

    @classmethod
    def from_data(cls, d: Any, *, name: str | None = None) -> MapSet | None:
        """Check and convert one layer (or ``input``) entry; ``None`` when it does not fit the protocol."""
        if not isinstance(d, Mapping):
            return None
        maps = d.get("maps")
        if not isinstance(maps, np.ndarray) or maps.dtype != np.uint8 or maps.ndim != 3 or not maps.size:
            return None
        if maps.size > MAX_PIXELS or maps.shape[0] > MAX_CHANNELS:
            return None
        k = maps.shape[0]
        try:
            lo = np.asarray(d.get("min"), dtype=np.float64).ravel()
            hi = np.asarray(d.get("max"), dtype=np.float64).ravel()
            bad = np.asarray(d.get("nonfinite", np.zeros(k)), dtype=np.float64).ravel() != 0
        except (TypeError, ValueError):
            return None
        if len(lo) != k or len(hi) != k or len(bad) != k:
            return None
        layer_name = name if name is not None else d.get("name")
        if not isinstance(layer_name, str):
            return None
        channels = d.get("channels", list(range(k)))
        if not isinstance(channels, list) or len(channels) != k:
            channels = list(range(k))
        shape = d.get("shape")
        return cls(
            name=layer_name,
            type=str(d.get("type", "")),
            shape=tuple(int(s) for s in shape if _is_int(s))
            if isinstance(shape, list)
            else tuple(maps.shape),
            channels=tuple(int(c) if _is_int(c) else i for i, c in enumerate(channels)),
            maps=maps,
            lo=lo,
            hi=hi,
            nonfinite=bad,
            rgb=d.get("rgb") is True and k == 3,
        )

    def range_text(self) -> str:
        """``lo…hi`` over every channel's finite range, for a header line."""
        ok = np.isfinite(self.lo) & np.isfinite(self.hi)
        if not ok.any():
            return "no finite value"
        return f"{_g(float(self.lo[ok].min()))}…{_g(float(self.hi[ok].max()))}"


class ProbeState:
    """The latest probe sample of a run (``feature_maps`` records), and why the probe stopped if it did.

    Attributes:
        step: The step of the latest sample (``None`` before one).
        every: The probe interval it was sent with.
        layers: Its layers, in the order sent.
        image: The probe image, or ``None``.
        samples: Records applied.
        malformed: Records or layers dropped because they did not fit the protocol.
        off: The agent's reason for turning the probe off (a ``probe_off`` event), or ``None``.
        version: Bumped on every change, so a widget knows when to repaint.
    """

    def __init__(self) -> None:
        self.step: int | None = None
        self.every: int | None = None
        self.layers: list[MapSet] = []
        self.image: MapSet | None = None
        self.samples = 0
        self.malformed = 0
        self.off: str | None = None
        self.version = 0

    def apply(self, step: int | None, data: Mapping[str, Any]) -> bool:
        """Keep one ``feature_maps`` record as the latest sample (an older step than the one kept is ignored).

        Args:
            step: The record's step.
            data: Its payload.

        Returns:
            Whether it was kept.
        """
        raw = data.get("layers") if isinstance(data, Mapping) else None
        if not isinstance(raw, list):
            self.malformed += 1
            self.version += 1
            return False
        if step is not None and self.step is not None and step < self.step:
            return False
        layers = []
        for d in raw[:MAX_LAYERS]:
            m = MapSet.from_data(d)
            if m is None:
                self.malformed += 1
            else:
                layers.append(m)
        self.layers = layers
        self.image = MapSet.from_data(data.get("input"), name="input")
        every = data.get("every")
        self.every = every if _is_int(every) and every > 0 else None
        self.step = step
        self.samples += 1
        self.version += 1
        return True

    def note_off(self, message: str) -> None:
        """The agent turned the probe off (a ``probe_off`` event)."""
        self.off = message
        self.version += 1


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _g(v: float) -> str:
    return f"{v:.3g}"
