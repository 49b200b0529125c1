"""What chart markers (alert onsets, applied commands) add to a rebuild of the learning-curve chart.

Not a pytest test: a script that prints a table. It mounts the real :class:`~tuimon.widgets.MetricChart` in a
headless app at the given size, charts a 100,000-step metric with its eval series, and times full rebuilds
(plotext's build and Textual's conversion to strips, as the 1 Hz streaming rebuild does) with no markers, then with
``RunState.markers`` full (256 markers, of which the latest 16 in view are drawn); the two are measured alternately
in the same run, and the ratio is what counts.

    python tests/benchmarks/bench_chart_markers.py [--rounds 30] [--size 100x30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import numpy as np
from textual.app import App, ComposeResult

from tuimon.series import Series
from tuimon.state import MARKERS_KEPT, Marker
from tuimon.widgets import MetricChart

STEPS = 100_000


class ChartApp(App[None]):
    """One chart filling the screen."""

    def compose(self) -> ComposeResult:
        yield MetricChart(id="chart")


def _series() -> tuple[Series, Series]:
    rng = np.random.default_rng(0)
    steps = np.arange(1, STEPS + 1)
    loss = Series("loss")
    loss.extend(steps, 2.0 * np.exp(-steps / 20_000) + 0.05 * rng.standard_normal(STEPS))
    val = Series("val_loss")
    val.extend(steps[::500], 2.1 * np.exp(-steps[::500] / 20_000))
    return loss, val


async def measure(rounds: int, size: tuple[int, int]) -> dict[str, list[float]]:
    """Seconds per rebuild, with and without markers, interleaved."""
    loss, val = _series()
    kinds = ["alert:warning", "alert:critical", "alert:info", "command"]
    markers = [
        Marker(int(s), kinds[i % 4], f"m{i}") for i, s in enumerate(np.linspace(1, STEPS, MARKERS_KEPT))
    ]
    out: dict[str, list[float]] = {"none": [], "markers": []}
    async with ChartApp().run_test(size=size) as pilot:
        chart = pilot.app.query_one(MetricChart)
        await pilot.pause()
        for _ in range(rounds):
            for label, ms in (("none", []), ("markers", markers)):
                chart.update("loss", loss, val, markers=ms)
                t0 = time.perf_counter()
                chart.render_lines(chart.region.reset_offset)  # plotext's build and Textual's strips
                out[label].append(time.perf_counter() - t0)
        assert len(chart.markers_drawn) == 16
    return out


def main() -> None:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--size", default="100x30")
    a = p.parse_args()
    w, h = (int(v) for v in a.size.split("x"))
    out = asyncio.run(measure(a.rounds, (w, h)))
    base = statistics.median(out["none"])
    print(f"chart rebuild at {w}x{h}, {STEPS:,} steps, median of {a.rounds}")
    print(f"{'markers':>10} {'ms':>8} {'ratio':>7}")
    for label, values in out.items():
        m = statistics.median(values)
        print(f"{label:>10} {m * 1e3:8.2f} {m / base:7.2f}")


if __name__ == "__main__":
    main()
