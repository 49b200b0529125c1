"""What a new user saw in the viewer at 80×24 and 60×15 (issue 14): help that wraps, the run panel on a key, a
header that keeps the run name, round axis steps, a speed only once it means something, loading before the history,
markers that differ without colour, and a bounded metric list. Pilot on the real app and the real ``RunState``."""

from __future__ import annotations

import re
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.text import Text
from test_app import plain, wait_loaded
from textual.geometry import Region
from textual.pilot import Pilot
from textual.widget import Widget
from textual.widgets import Static

from tuimon.app import make_app
from tuimon.messages import SourceUpdated
from tuimon.screens import HelpScreen, RunInfoScreen
from tuimon.screens.help import COUNTERS, KEYS, STATES
from tuimon.source import FileSource, SourceUpdate
from tuimon.state import METRIC_NAMES_KEPT, RunState
from tuimon.widgets import MetricChart, MetricList, NoticeBar, RunHeader, RunInfo
from tuimon_agent import protocol
from tuimon_agent.runfile import RunFileReader


def _lines(widget: Widget) -> list[str]:
    """What a widget shows on screen, line by line, as plain text."""
    strips = widget.render_lines(Region(0, 0, widget.size.width, widget.size.height))
    return [s.text.rstrip() for s in strips]


async def test_help_wraps_inside_its_box_at_80x24(recorded_run: Path) -> None:
    app = make_app(FileSource(recorded_run))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_loaded(pilot)
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        text = app.screen.query_one("#help-text", Static)
        box = text.parent
        assert box is not None
        # The text fits beside the scrollbar: nothing scrolls sideways, nothing is drawn under the scrollbar.
        assert box.max_scroll_x == 0
        assert text.region.right <= box.scrollable_content_region.right
        # Every description is there in full, wrapped onto as many lines as it needs.
        box.styles.max_height = None
        text.styles.height = "auto"
        await pilot.pause()
        shown = " ".join(" ".join(_lines(text)).split())
        for _, what in (*KEYS, *STATES, *COUNTERS):
            assert " ".join(what.split()) in shown, what


# -- item 4: the run panel on a key; a header that keeps the run name; the run file path elided -------------------


async def test_i_shows_the_run_panel_at_80_columns(recorded_run: Path) -> None:
    app = make_app(FileSource(recorded_run))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_loaded(pilot)
        assert not app.overview.query_one(RunInfo).display or not app.overview.query_one(RunInfo).region.width
        await pilot.press("i")
        await pilot.pause()
        assert isinstance(app.screen, RunInfoScreen)
        info = app.screen.query_one(RunInfo)
        keys = [k for k, _ in info.lines]
        assert keys == ["run id", "model", "optimizer", "device", "process", "command", "run file"]
        assert dict(info.lines)["run file"] == app.state.hello["run_file"]
        box = info.parent
        assert box is not None and box.max_scroll_x == 0  # long values wrap, nothing scrolls sideways
        shown = "".join(_lines(info))
        assert str(recorded_run.name) in shown
        await pilot.press("i")
        await pilot.pause()
        assert app.screen is app.overview
        await pilot.press("i", "escape")
        await pilot.pause()
        assert app.screen is app.overview


@pytest.mark.parametrize("size", [(60, 15), (80, 24)])
async def test_the_header_keeps_the_run_name_when_narrow(recorded_run: Path, size: tuple[int, int]) -> None:
    app = make_app(FileSource(recorded_run))
    async with app.run_test(size=size) as pilot:
        await wait_loaded(pilot)
        header = plain(app.overview.query_one(RunHeader))
        assert header.startswith("fixture") and "step 300" in header and "● replay" in header
        assert len(header) <= size[0]


async def test_the_notice_line_elides_the_run_file_path_from_the_left() -> None:
    run_file = (
        "/home/someone/projects/a-rather-long-project-name/experiments/tuimon-runs/mnist-20260101/run.sqlite"
    )
    hello = protocol.Record(
        protocol.HELLO, 1, None, 0.0, {"run_id": "r", "name": "mnist", "run_file": run_file}
    )
    loss = protocol.Record(protocol.METRICS, 2, 1, 0.0, {"values": {"loss": 1.0}})
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        app.post_message(SourceUpdated(SourceUpdate([hello, loss], status="live")))
        await _until(pilot, lambda: "mnist" in plain(app.overview.query_one(RunHeader)))
        notice = app.overview.query_one(NoticeBar)
        text = plain(notice)
        assert len(text) <= notice.content_size.width
        assert text.startswith("no events · run file …/") and text.endswith("mnist-20260101/run.sqlite")


# -- item 9: step axis labels without repeats; a speed only once it means something ----------------------------------


async def test_early_frames_label_whole_steps_and_hold_back_the_speed() -> None:
    records = [protocol.Record(protocol.HELLO, 1, None, 1000.0, {"run_id": "r", "name": "paced"})]
    # Step 1 came quickly after start-up, then the run is paced at 20 it/s: at step 2 no speed is known yet.
    for seq, step, ts in ((2, 1, 1000.0), (3, 2, 1000.0049)):
        records.append(protocol.Record(protocol.METRICS, seq, step, ts, {"values": {"loss": 1.0 / step}}))
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        app.post_message(SourceUpdated(SourceUpdate(records, status="live")))
        chart = app.overview.query_one(MetricChart)
        await _until(pilot, lambda: chart.renders > 0 and chart.xtick_labels)
        assert chart.xtick_labels == ["1", "2"]
        header = plain(app.overview.query_one(RunHeader))
        assert "step 2  – it/s" in header, header
        more = [
            protocol.Record(
                protocol.METRICS, seq, seq - 1, 1000.0049 + 0.05 * (seq - 3), {"values": {"loss": 0.1}}
            )
            for seq in range(4, 30)
        ]
        app.post_message(SourceUpdated(SourceUpdate(more)))
        await _until(pilot, lambda: "step 28" in plain(app.overview.query_one(RunHeader)))
        speed = re.search(r"([\d.]+) it/s", plain(app.overview.query_one(RunHeader)))
        assert speed is not None and float(speed.group(1)) == pytest.approx(20.0, rel=0.05)


# -- item 22: "loading" until the history has arrived ----------------------------------------------------------------


async def test_a_late_join_says_loading_until_the_history_has_arrived(recorded_run: Path) -> None:
    with RunFileReader(recorded_run) as reader:
        history = list(reader.records())
    history = [r for r in history if r.kind != protocol.END]
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        app.post_message(SourceUpdated(SourceUpdate(history[:1], status="loading")))
        header = app.overview.query_one(RunHeader)
        await _until(pilot, lambda: "● loading" in plain(header))
        assert "step 0" not in plain(header) and "loading history…" in plain(header)
        waiting = app.overview.query_one("#waiting", Static)
        assert app.overview.has_class("-empty") and str(waiting.render()) == "loading fixture…"
        app.post_message(SourceUpdated(SourceUpdate(history[1:100])))  # part of it: still loading
        await _until(pilot, lambda: app.state.last_seq == history[99].seq and not app._dirty)
        await pilot.pause()
        assert "loading history…" in plain(header) and app.overview.has_class("-empty")
        app.post_message(SourceUpdated(SourceUpdate(history[100:], status="live")))
        await _until(pilot, lambda: "● live" in plain(header))
        assert "step 300" in plain(header) and not app.overview.has_class("-empty")


async def _until(pilot: Pilot, condition: Callable[[], object], timeout: float = 10.0) -> None:
    """Wait (pausing the app) until ``condition()`` is true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met after {timeout}s")
        await pilot.pause(0.05)


# -- item 17: a new metric name per step does not exhaust the viewer ---------------------------------------------------


def _one_name_per_step(n: int) -> list[protocol.Record]:
    """What ``log(**{f"loss_{step}": ...})`` sends: a new metric name on every step."""
    hello = protocol.Record(protocol.HELLO, 1, None, 1000.0, {"run_id": "names", "name": "names"})
    return [hello] + [
        protocol.Record(
            protocol.METRICS, i + 2, i, 1000.0 + i * 0.01, {"values": {f"loss_{i}": 1.0 / (i + 1)}}
        )
        for i in range(n)
    ]


def test_many_metric_names_keep_the_state_bounded() -> None:
    records = _one_name_per_step(10_000)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        state = RunState()
        state.apply_many(records)
        state.apply(protocol.Record(protocol.METRICS, 10_002, 10_000, 1100.0, {"values": {"loss_3": 0.5}}))
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(state.train) == METRIC_NAMES_KEPT and list(state.train)[:2] == ["loss_0", "loss_1"]
    assert state.names_dropped == 10_000 - METRIC_NAMES_KEPT
    assert state.train["loss_3"].last_value == 0.5  # a kept name still updates
    # ~106 KiB per kept series (256 of them: ~27 MiB), and a few bytes per dropped name: not 10,000 series (1 GiB).
    print(f"10,000 names: the state grew by {grown / 2**20:.1f} MiB")
    assert grown < 40 * 2**20, f"{grown / 2**20:.1f} MiB"


@pytest.mark.slow
async def test_many_metric_names_paint_quickly_and_say_what_is_not_shown() -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        start = time.monotonic()
        app.post_message(SourceUpdated(SourceUpdate(_one_name_per_step(10_000), status="live")))
        metrics = app.overview.query_one(MetricList)
        await _until(pilot, lambda: metrics.names and not app._dirty, timeout=60)
        await pilot.pause()
        seconds = time.monotonic() - start
        assert len(metrics.names) == METRIC_NAMES_KEPT
        assert (
            metrics.border_subtitle
            == f"{10_000 - METRIC_NAMES_KEPT:,} more metric names not shown (first 256 kept)"
        )
        assert seconds < 20, seconds
        repaints = app.repaints
        app.post_message(SourceUpdated(SourceUpdate(_one_name_per_step(10_000)[1:])))  # duplicates: a repaint
        await _until(pilot, lambda: app.repaints > repaints and not app._dirty, timeout=30)


# -- item 12: without colour, the markers still differ -------------------------------------------------------------


async def test_chart_markers_differ_without_colour(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    records = [protocol.Record(protocol.HELLO, 1, None, 0.0, {"run_id": "r", "name": "markers"})]
    records += [
        protocol.Record(protocol.METRICS, i + 2, i, 0.0, {"values": {"loss": 1.0 / (i + 1)}})
        for i in range(100)
    ]
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        assert app.no_color
        app.post_message(SourceUpdated(SourceUpdate(records, status="live")))
        chart = app.overview.query_one(MetricChart)
        await _until(pilot, lambda: chart.renders > 0)
        for step, kind in (
            (20, "alert:critical"),
            (40, "alert:warning"),
            (60, "alert:info"),
            (80, "command"),
        ):
            app.state.add_marker(step, kind, kind)
        app._dirty = True
        await _until(pilot, lambda: len(chart.markers_drawn) == 4)
        chart.min_interval = 0.0
        chart.mark_step(None, None)  # rebuild now
        await pilot.pause()
        legend = Text.from_markup(str(chart.border_subtitle)).plain
        assert "alerts ! critical ▲ warning i info  » command" in legend, legend
        inside = _lines(chart)[1:-1]  # not the border (its legend has the glyphs too)
        top = next((line for line in inside if "!" in line), "")
        assert all(g in top for g in "!▲i»"), inside  # each line's glyph on the plot's top line
