"""The probe input's feature maps: each channel drawn with half blocks, a grid of channels per layer, layer under
layer, the probe image on top.

Each character cell is one ``▀``: its foreground is the upper pixel, its background the lower one, so a map of
``h × w`` pixels takes ``w`` columns and ``h / 2`` lines and its pixels stay square. Maps are resampled to fit the
width (averaged when shrunk, repeated when enlarged). Pixels are greyscale by default (Rich maps grey to the
256-colour palette's 24-step ramp), or viridis (``m``); an RGB probe is drawn in its colours.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from ..probe import MapSet, ProbeState
from ._style_cache import CachedComponentStyles
from .grad_heatmap import PALETTE

COLORMAPS: tuple[str, ...] = ("grey", "viridis")
"""The colour maps ``m`` cycles through."""
LEVELS = 64
"""Grey or colour levels a pixel is quantised to (bounds the number of styles)."""
MIN_MAP_WIDTH = 8
"""Maps are not shrunk below this many columns (unless they are narrower); they wrap to more rows instead."""
MAX_MAP_WIDTH = 32
"""Maps are not enlarged beyond this many columns."""
MAX_MAP_LINES = 12
"""Lines one map takes at most (24 pixels high)."""
GAP = 1
"""Columns between two maps."""


def resample(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize ``[K, h, w]`` maps to ``[K, height, width]``: each output pixel is the mean of the input pixels its
    area covers (rows ``⌊i·h/H⌋ .. ⌈(i+1)·h/H⌉``, like ``adaptive_avg_pool2d``), which repeats pixels when
    enlarging.

    Args:
        maps: The maps (any numeric dtype).
        height: Output height (>= 1).
        width: Output width (>= 1).

    Returns:
        ``float64[K, height, width]``.
    """
    k, h, w = maps.shape
    if (h, w) == (height, width):
        return maps.astype(np.float64)
    integral = np.zeros((k, h + 1, w + 1))
    integral[:, 1:, 1:] = maps.astype(np.float64).cumsum(1).cumsum(2)
    i = np.arange(height)
    r0, r1 = (i * h) // height, -((-(i + 1) * h) // height)
    j = np.arange(width)
    c0, c1 = (j * w) // width, -((-(j + 1) * w) // width)
    total = (
        integral[:, r1[:, None], c1[None, :]]
        - integral[:, r0[:, None], c1[None, :]]
        - integral[:, r1[:, None], c0[None, :]]
        + integral[:, r0[:, None], c0[None, :]]
    )
    return total / ((r1 - r0)[:, None] * (c1 - c0)[None, :])


def layout(count: int, h: int, w: int, width: int, max_lines: int = MAX_MAP_LINES) -> tuple[int, int, int]:
    """How a layer's ``count`` maps of ``h × w`` pixels are drawn in ``width`` columns.

    All maps in one row when they fit at :data:`MIN_MAP_WIDTH` columns or more (enlarged by a whole factor, so
    every pixel is as wide as the next, up to 4× and :data:`MAX_MAP_WIDTH`), else rows of as many as fit; the
    aspect is kept and a map is at most ``max_lines`` lines high.

    Returns:
        ``(map height in pixels, map width in columns, maps per row)``.
    """
    floor = min(w, MIN_MAP_WIDTH)
    tw = (width + GAP) // max(1, count) - GAP
    cap = max(w, min(MAX_MAP_WIDTH, 4 * w))  # enlarge at most 4×, never beyond the cap unless already wider
    tw = min(max(floor, min(tw, cap)), max(1, width))
    if tw > w:  # enlarged: by a whole factor, within the height too
        f = max(1, min(tw // w, (2 * max_lines) // h))
        return h * f, w * f, max(1, (width + GAP) // (w * f + GAP))
    th = max(1, round(h * tw / w))
    if th > 2 * max_lines:
        th = 2 * max_lines
        tw = max(1, min(tw, round(w * th / h)))
    per_row = max(1, (width + GAP) // (tw + GAP))
    return th, tw, per_row


def _hex(v: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*v)


_GREY = [_hex((round(i * 255 / (LEVELS - 1)),) * 3) for i in range(LEVELS)]


class FeatureMaps(CachedComponentStyles, ScrollView, can_focus=True):
    """The latest probe sample: the probe image, then for each captured layer a header and a grid of its channels.

    Data comes in through :meth:`update`; lines are rebuilt only when the sample, the width, the colour map or
    the selected layer changed. Keys: ``↑``/``↓``/``PgUp``/``PgDn`` scroll, ``[``/``]`` jump to
    the previous/next layer, ``m`` switches the colour map.

    Args:
        name: The widget's name.
        id: The widget's id.
        classes: The widget's CSS classes.
    """

    DEFAULT_CSS = """
    FeatureMaps {
        height: 1fr;
        width: 1fr;
    }
    FeatureMaps > .feature-maps--header { color: $text; text-style: bold; }
    FeatureMaps > .feature-maps--selected { color: $text-accent; text-style: bold reverse; }
    FeatureMaps > .feature-maps--label { color: $text-muted; }
    FeatureMaps > .feature-maps--nonfinite { color: #ff00ff; text-style: bold; }
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "feature-maps--header",
        "feature-maps--selected",
        "feature-maps--label",
        "feature-maps--nonfinite",
    }
    """
    | Class | Description |
    | :- | :- |
    | `feature-maps--header` | A layer's (or the probe's) header line. |
    | `feature-maps--selected` | The header of the layer ``[``/``]`` selected. |
    | `feature-maps--label` | Channel labels and ranges. |
    | `feature-maps--nonfinite` | The label of a channel that had a NaN or Inf. |
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("left_square_bracket", "layer(-1)", "Prev layer", key_display="["),
        Binding("right_square_bracket", "layer(1)", "Next layer", key_display="]"),
        Binding("m", "colormap", "Colours"),
    ]

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._probe: ProbeState | None = None
        self._key: tuple[object, ...] | None = None
        self._lines: list[Strip] = []
        self.colormap = COLORMAPS[0]
        """The colour map of the feature maps (one of :data:`COLORMAPS`; the probe image ignores it when RGB)."""
        self.selected = 0
        """The layer ``[``/``]`` moved to (its header is highlighted)."""
        self.layer_rows: list[int] = []
        """The first line of each layer's block, in the order of :attr:`ProbeState.layers`."""
        self.map_size: list[tuple[int, int, int]] = []
        """Per layer: the drawn map height in pixels, width in columns and maps per row."""
        self._cells: dict[tuple[str, str | None], Segment] = {}
        self._cells_base: Style | None = None

    # -- data in ------------------------------------------------------------------------------------------------

    def update(self, probe: ProbeState) -> None:
        """Show ``probe``'s latest sample; cheap when nothing changed.

        Args:
            probe: The run's probe state.
        """
        self._probe = probe
        if self._state_key() != self._key:
            self._rebuild()

    def _state_key(self) -> tuple[object, ...]:
        p = self._probe
        region = self.scrollable_content_region
        return (id(p), p.version if p else -1, region.width, region.height, self.colormap, self.selected)

    def on_resize(self) -> None:
        self._rebuild()

    def _rebuild(self) -> None:
        self._build()
        self._key = self._state_key()
        self.virtual_size = Size(self.scrollable_content_region.width, len(self._lines))
        self.refresh()

    # -- actions ------------------------------------------------------------------------------------------------

    def action_layer(self, delta: int) -> None:
        """Select the previous or next layer and scroll its block to the top."""
        n = len(self._probe.layers) if self._probe else 0
        if not n:
            return
        self.selected = (self.selected + delta) % n
        self._rebuild()
        if self.selected < len(self.layer_rows):
            self.scroll_to(y=self.layer_rows[self.selected], animate=False)

    def action_colormap(self) -> None:
        """Switch to the next colour map."""
        self.colormap = COLORMAPS[(COLORMAPS.index(self.colormap) + 1) % len(COLORMAPS)]
        self._rebuild()

    # -- building -----------------------------------------------------------------------------------------------

    def _build(self) -> None:
        self._lines = []
        self.layer_rows = []
        self.map_size = []
        p = self._probe
        width = max(1, self.scrollable_content_region.width)
        if p is None:
            return
        if p.layers:
            self.selected = min(self.selected, len(p.layers) - 1)
        header = self.component_style("feature-maps--header")
        label = self.component_style("feature-maps--label")
        if p.image is not None:
            img = p.image
            dims = "×".join(str(d) for d in img.shape)
            text = f"probe input · {dims}" + (" · RGB" if img.rgb else "") + f" · {img.range_text()}"
            self._lines.append(Strip([Segment(text[:width], header)]))
            # The probe image takes at most a quarter of the height, so the layers show at 80×24 too.
            self._grid(
                img, width, show_labels=False, max_lines=max(4, self.scrollable_content_region.height // 4)
            )
            self._lines.append(Strip([]))
        for i, layer in enumerate(p.layers):
            self.layer_rows.append(len(self._lines))
            style = self.component_style(
                "feature-maps--selected" if i == self.selected else "feature-maps--header"
            )
            dims = "×".join(str(d) for d in layer.shape)
            ch = layer.channels
            shown = f"ch {ch[0]}–{ch[-1]}" if list(ch) == list(range(ch[0], ch[-1] + 1)) else f"ch {len(ch)}"
            total = f" of {layer.shape[0]}" if layer.shape else ""
            title = f"{i + 1}/{len(p.layers)} {layer.name}"
            rest = f" · {layer.type} · {dims} · {shown}{total} · {layer.range_text()}"
            segs = [Segment(title[:width], style)]
            if len(title) < width:
                segs.append(Segment(rest[: width - len(title)], label))
            self._lines.append(Strip(segs))
            self._grid(layer, width, show_labels=True)
            self._lines.append(Strip([]))

    def _grid(self, ms: MapSet, width: int, *, show_labels: bool, max_lines: int = MAX_MAP_LINES) -> None:
        """Append the lines of one layer's (or the probe's) grid of maps."""
        k, h, w = ms.maps.shape
        if ms.rgb:
            k = 1
        th, tw, per_row = layout(k, h, w, width, max_lines)
        self.map_size.append((th, tw, per_row))
        colors = self._colors(ms, resample(ms.maps, th, tw)).tolist()  # [k][th][tw] colour strings
        base = self.rich_style
        label = self.component_style("feature-maps--label")
        bad = self.component_style("feature-maps--nonfinite")
        if base != self._cells_base or len(self._cells) > 20_000:  # one half-block segment per colour pair
            self._cells, self._cells_base = {}, base
        cells = self._cells
        for first in range(0, k, per_row):
            idx = list(range(first, min(k, first + per_row)))
            for y in range(0, th, 2):
                segs: list[Segment] = []
                for n, c in enumerate(idx):
                    if n:
                        segs.append(Segment(" " * GAP, base))
                    upper = colors[c][y]
                    lower = colors[c][y + 1] if y + 1 < th else [None] * tw
                    for pair in zip(upper, lower, strict=True):
                        seg = cells.get(pair)
                        if seg is None:
                            seg = cells[pair] = Segment("▀", base + Style(color=pair[0], bgcolor=pair[1]))
                        segs.append(seg)
                self._lines.append(Strip(segs))
            if show_labels:
                segs = []
                for n, c in enumerate(idx):
                    text = f"c{ms.channels[c]}"
                    if ms.nonfinite[c]:
                        text += " NaN"
                    elif ms.lo[c] == ms.hi[c]:  # a constant channel (all pixels 0): say its value
                        text += f" ={ms.lo[c]:.2g}"
                    text = text[:tw].ljust(tw) + (" " * GAP if n < len(idx) - 1 else "")
                    segs.append(Segment(text, bad if ms.nonfinite[c] else label))
                self._lines.append(Strip(segs))

    def _colors(self, ms: MapSet, pixels: np.ndarray) -> np.ndarray:
        """Each pixel's colour as a ``#rrggbb`` string (``object[k, h, w]``; one map for an RGB image)."""
        if ms.rgb:
            step = 256 // LEVELS
            q = (np.clip(np.rint(pixels), 0, 255).astype(np.int64) // step) * step
            packed = (q[0] << 16) | (q[1] << 8) | q[2]
            codes, inverse = np.unique(packed, return_inverse=True)
            names = np.array([f"#{int(v):06x}" for v in codes], dtype=object)
            return names[inverse.reshape(packed.shape)][None]
        level = np.minimum(LEVELS - 1, (pixels * LEVELS / 256).astype(np.int64))
        if self.colormap == "viridis":
            palette = np.array(PALETTE, dtype=object)
            return palette[np.minimum(len(PALETTE) - 1, level * len(PALETTE) // LEVELS)]
        return np.array(_GREY, dtype=object)[level]

    # -- paint --------------------------------------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        if self._key is None or self._key != self._state_key():
            self._build()
            self._key = self._state_key()
        scroll_x, scroll_y = self.scroll_offset
        i = scroll_y + y
        width = self.scrollable_content_region.width
        strip = self._lines[i] if 0 <= i < len(self._lines) else Strip([])
        return strip.crop_extend(scroll_x, scroll_x + width, self.rich_style)
