"""Behaviour of the viewer app (Pilot), on a real run file recorded by the real agent (``recorded_run``)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from helpers import until
from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from tuimon.app import REPAINT_INTERVAL, TuimonApp, make_app
from tuimon.messages import SourceUpdated
from tuimon.screens import HelpScreen, OverviewScreen, PickRun
from tuimon.source import FileSource, SourceUpdate
from tuimon.widgets import MetricChart, MetricList, MetricRow, NoticeBar, RunHeader
from tuimon_agent import protocol
from tuimon_agent.discovery import ConnectionInfo
from tuimon_agent.runfile import RunFileReader

METRICS = ["loss", "acc", "opt/lr", "opt/momentum", "opt/weight_decay"]


async def wait_loaded(pilot: Pilot, timeout: float = 60.0) -> None:
    """Wait until the file source has replayed everything and the timer has painted it."""
    app = pilot.app
    assert isinstance(app, TuimonApp)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await pilot.pause(REPAINT_INTERVAL)
        if app.status in ("replay", "ended") and not app._dirty and app.overview.query_one(MetricList).names:
            await pilot.pause()
            return
    raise AssertionError(f"run not loaded after {timeout}s (status {app.status})")


def plain(widget: RunHeader | NoticeBar | MetricRow) -> str:
    """What a one-line widget shows, as plain text."""
    return widget.render().plain  # type: ignore[union-attr]


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
async def test_overview_shows_the_recorded_run(recorded_run: Path, size: tuple[int, int]) -> None:
    app = make_app(FileSource(recorded_run))
    async with app.run_test(size=size) as pilot:
        await wait_loaded(pilot)
        screen = app.screen
        assert isinstance(screen, OverviewScreen)
        header = plain(screen.query_one(RunHeader))
        assert header.startswith("fixture")
        assert "step 300" in header
        assert "● replay" in header
        assert "20.0 it/s" in header and "0:00:15" in header  # the fixture's rewritten timestamps
        assert "lr 0.025" in header
        assert "drop 0 gap 0" in header and "bad" not in header
        assert len(header) <= size[0]

        rows = list(screen.query(MetricRow))
        assert [r.metric for r in rows] == METRICS
        loss = rows[0]
        assert loss.has_class("-selected")
        assert loss.value == pytest.approx(app.state.train["loss"].last_value)
        assert loss.eval_value == pytest.approx(app.state.eval["val_loss"].last_value)
        text = plain(loss)
        assert (
            text.startswith("loss") and f"{loss.value:.4g}" in text and f"val {loss.eval_value:.4g}" in text
        )
        assert any(arrow in text for arrow in "↗↘→")
        # The sparkline spans the whole run: the fixture's StepLR halvings (0.1, 0.05, 0.025) read as three levels.
        name, spark = plain(rows[2]).split()[:2]
        levels = ["▁▂▃▄▅▆▇█".index(c) for c in spark]
        assert name == "opt/lr" and levels[0] == 7 and levels[-1] == 0 and len(set(levels)) >= 3
        assert levels == sorted(levels, reverse=True)

        chart = screen.query_one(MetricChart)
        assert chart.metric == "loss"
        assert chart.title == "loss"
        assert "val_loss" in str(chart.border_subtitle)
        assert chart.renders >= 1
        assert chart.region.width > 0 and chart.region.height >= 8
        assert plain(screen.query_one(NoticeBar)) == "no events · run file /fixture/run.sqlite"
        if size[0] >= 120:  # wide: rows beside the chart; narrow: rows above it
            assert screen.query_one(MetricList).region.right <= chart.region.x
        else:
            assert screen.query_one(MetricList).region.bottom <= chart.region.y


async def test_arrow_keys_select_the_charted_metric(recorded_run: Path) -> None:
    app = make_app(FileSource(recorded_run))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_loaded(pilot)
        chart = app.overview.query_one(MetricChart)
        metrics = app.overview.query_one(MetricList)
        await pilot.press("down")
        await pilot.pause()
        assert metrics.selected == "acc" and chart.metric == "acc" and chart.title == "acc"
        assert metrics.row("acc").has_class("-selected") and not metrics.row("loss").has_class("-selected")
        assert "val_acc" in str(chart.border_subtitle)
        await pilot.press("j", "j")
        await pilot.pause()
        assert chart.metric == "opt/momentum"
        assert "val_" not in str(chart.border_subtitle)  # no eval counterpart
        await pilot.press("k", "up", "up", "up")  # stops at the top
        await pilot.pause()
        assert chart.metric == "loss"
        await pilot.click(MetricRow, offset=(2, 3))  # the fourth row
        await pilot.pause()
        assert chart.metric == "opt/momentum"


async def test_m_and_y_toggle_smoothing_and_log_y(recorded_run: Path) -> None:
    app = make_app(FileSource(recorded_run))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_loaded(pilot)
        chart = app.overview.query_one(MetricChart)
        renders = chart.renders
        await pilot.press("m")
        await until(pilot, lambda: chart.renders > renders, what="a repaint after m")
        assert chart.smoothing and "EMA smoothing" in chart.title
        assert chart.renders > renders
        await pilot.press("y")
        await pilot.pause()
        assert chart.log_y and chart.title == "loss · EMA smoothing 0.85 · log y"
        await pilot.press("m", "y")
        await pilot.pause()
        assert chart.title == "loss"


async def test_help_opens_and_closes(recorded_run: Path) -> None:
    app = make_app(FileSource(recorded_run))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_loaded(pilot)
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        text = str(app.screen.query_one("#help-text", Static).render())
        for words in (
            "toggle EMA smoothing",
            "toggle a log y axis",
            "stale",
            "replay",
            "reconnecting",
            "quit",
            "gap",
        ):
            assert words in text
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, OverviewScreen)
        await pilot.press("question_mark", "question_mark")
        await pilot.pause()
        assert isinstance(app.screen, OverviewScreen)


async def test_too_small_terminal_shows_a_note_and_recovers(recorded_run: Path) -> None:
    app = make_app(FileSource(recorded_run))
    async with app.run_test(size=(40, 10)) as pilot:
        await until(pilot, lambda: app.overview.has_class("-too-small"), what="the too-small note")
        screen = app.overview
        note = screen.query_one("#too-small", Static)
        assert screen.has_class("-too-small")
        assert note.display and note.region.width > 0
        assert str(note.render()) == "terminal too small: need at least 60×15, have 40×10"
        assert screen.query_one(RunHeader).region.area == 0
        assert screen.query_one(MetricChart).region.area == 0

        await pilot.resize_terminal(80, 24)
        await wait_loaded(pilot)
        assert not screen.has_class("-too-small")
        assert note.region.area == 0
        assert screen.query_one(RunHeader).region.width == 80
        assert screen.query_one(MetricChart).region.height >= 8

        await pilot.resize_terminal(70, 12)  # too short, wide enough
        await pilot.pause()
        assert screen.has_class("-too-small") and str(note.render()).endswith("have 70×12")


def _synthetic_metrics(first_seq: int, first_step: int, n: int) -> list[protocol.Record]:
    return [
        protocol.Record(
            protocol.METRICS, first_seq + i, first_step + i, 0.0, {"values": {"loss": 1.0 / (1 + i)}}
        )
        for i in range(n)
    ]


async def test_repaints_are_capped_by_the_timer_not_the_data_rate(recorded_run: Path) -> None:
    with RunFileReader(recorded_run) as reader:
        history = [r for r in reader.records() if r.kind != protocol.END]
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.overview.has_class("-empty"), what="the empty overview")
        waiting = app.overview.query_one("#waiting", Static)
        assert app.overview.has_class("-empty") and str(waiting.render()) == "waiting for a run…"

        app.post_message(SourceUpdated(SourceUpdate(history, status="live")))
        await until(pilot, lambda: app.overview.query_one(MetricList).names and not app._dirty, what="history")
        chart = app.overview.query_one(MetricChart)
        updates, repaints = chart.updates, app.repaints
        seq, step = history[-1].seq + 1, 301
        start = time.monotonic()
        posted = 0
        while time.monotonic() - start < 1.5:  # as fast as the loop allows: one update per record
            for rec in _synthetic_metrics(seq, step, 5):
                app.post_message(SourceUpdated(SourceUpdate([rec])))
                posted += 1
            seq, step = seq + 5, step + 5
            await asyncio.sleep(0)
        await until(pilot, lambda: app.state.step == step - 1 and not app._dirty, what="every update applied")
        seconds = time.monotonic() - start
        assert posted > 500, posted
        print(
            f"{posted} updates in {seconds:.2f}s: {chart.updates - updates} chart updates, {app.repaints - repaints} repaints"
        )
        assert app.state.step == step - 1 and app.state.gaps == 0  # no update was lost or replaced
        assert chart.updates - updates <= seconds / REPAINT_INTERVAL + 2
        assert app.repaints - repaints <= seconds / REPAINT_INTERVAL + 2
        assert app.overview.query_one(MetricList).row("loss").value == pytest.approx(1.0 / 5)


async def test_source_messages_and_agent_events_show_in_the_notice_bar(recorded_run: Path) -> None:
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        with RunFileReader(recorded_run) as reader:
            records = list(reader.records())
        event = protocol.Record(
            protocol.EVENT, records[-1].seq + 1, 300, 0.0, {"what": "persistence_off", "message": "disk full"}
        )
        app.post_message(
            SourceUpdated(SourceUpdate([*records, event], status="live", malformed=2, message="hello there"))
        )
        await until(pilot, lambda: "bad 2" in plain(app.overview.query_one(RunHeader)), what="the batch painted")
        notice = plain(app.overview.query_one(NoticeBar))
        assert notice == "ℹ hello there  │  ⚑ persistence off: disk full (step 300)"
        header = plain(app.overview.query_one(RunHeader))
        assert "● ended" in header and "bad 2" in header  # an end record turns "live" into "ended"

        app.post_message(SourceUpdated(SourceUpdate([], reset=True, status="reconnecting")))
        await until(pilot, lambda: "● reconnecting" in plain(app.overview.query_one(RunHeader)), what="reset")
        assert app.overview.has_class("-empty")
        assert app.overview.query_one(MetricList).names == []
        assert "● reconnecting" in plain(app.overview.query_one(RunHeader))

        # A new run whose records come in the same batch as the reset: only its metrics are listed.
        new_run = [
            protocol.Record(protocol.HELLO, 1, None, 0.0, {"run_id": "second", "name": "second"}),
            protocol.Record(protocol.METRICS, 2, 1, 0.0, {"values": {"mse": 0.5}}),
        ]
        app.post_message(SourceUpdated(SourceUpdate([], reset=True)))
        app.post_message(SourceUpdated(SourceUpdate(new_run, reset=True, status="live")))
        await until(pilot, lambda: app.overview.query_one(MetricList).names == ["mse"], what="the new run")
        assert app.overview.query_one(MetricList).names == ["mse"]
        assert app.overview.query_one(MetricChart).metric == "mse"
        assert plain(app.overview.query_one(RunHeader)).startswith("second")


async def test_picker_chooses_among_live_runs(recorded_run: Path) -> None:
    def info(run_id: str, name: str) -> ConnectionInfo:
        return ConnectionInfo(
            run_id, name, "ipc:///nowhere.pub", "ipc:///nowhere.req", "", 1, "", 1.7e9, str(recorded_run)
        )

    choices = [info("20240101-000000-aaaaaa", "first"), info("20240101-000001-bbbbbb", "second")]
    picked: list[ConnectionInfo] = []

    def make_source(choice: ConnectionInfo) -> FileSource:
        picked.append(choice)
        return FileSource(choice.run_file or "")

    app = make_app(choices=choices, make_source=make_source)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, PickRun)
        assert app.screen.query_one(DataTable).row_count == 2
        await pilot.press("down", "enter")
        await wait_loaded(pilot)
        assert picked == [choices[1]]
        assert isinstance(app.screen, OverviewScreen)
        assert plain(app.overview.query_one(RunHeader)).startswith("fixture")


async def test_picker_escape_quits() -> None:
    info = ConnectionInfo("r1", "one", "", "", "", 1, "", 0.0, None)
    app = make_app(choices=[info, info], make_source=lambda i: FileSource("/nonexistent"))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("escape")
        await pilot.pause()
        assert app.return_code == 0 and app.source is None  # quit without watching anything


async def test_nan_and_inf_values_do_not_break_rows_or_chart() -> None:
    records = [protocol.Record(protocol.HELLO, 1, None, 0.0, {"run_id": "nan", "name": "nan-run"})]
    values = [0.5, 0.4, float("nan"), 0.3, float("inf"), 0.2, -0.1, float("nan")]
    for i, v in enumerate(values):
        records.append(protocol.Record(protocol.METRICS, i + 2, i + 1, 0.0, {"values": {"loss": v}}))
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        app.post_message(SourceUpdated(SourceUpdate(records, status="live")))
        await until(
            pilot,
            lambda: all(mark in plain(app.overview.query_one(MetricList).row("loss")) for mark in ("nan", "×")),
            what="the row with its value and its sparkline's NaN mark",
        )
        row = app.overview.query_one(MetricList).row("loss")
        assert row is not None and "nan" in plain(row) and "×" in plain(row)
        chart = app.overview.query_one(MetricChart)
        renders = chart.renders
        await pilot.press("y")  # log y: the -0.1 is hidden, and says so
        await until(pilot, lambda: chart.renders > renders, what="a repaint after y")  # the 10 Hz timer paints
        assert chart.title == "loss · log y (≤0 hidden)" and chart.renders > renders
        await pilot.press("m")
        await until(pilot, lambda: chart.renders > renders + 1, what="a repaint after m")
        assert chart.renders > renders + 1


async def test_a_missing_run_file_is_reported_not_raised(tmp_path: Path) -> None:
    app = make_app(FileSource(tmp_path / "missing" / "run.sqlite"))
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.status == "ended" and not app._dirty, what="the source's end")
        assert app.status == "ended"
        assert plain(app.overview.query_one(NoticeBar)).startswith("ℹ cannot open run file")
        waiting = app.overview.query_one("#waiting", Static)
        assert app.overview.has_class("-empty") and str(waiting.render()).endswith("ended with no metrics")


def test_a_constant_sparkline_is_flat_despite_rounding() -> None:
    import numpy as np

    from tuimon.widgets.metric_row import sparkline

    values = np.full(1000, 0.05) + np.arange(1000) * 1e-19  # column means differ only in the last bits
    assert set(sparkline(values, 30)) == {"▁"}
    assert sparkline(np.array([1.0, 2.0, float("nan"), 3.0]), 4) == "▁▅×█"  # min..max over 8 levels
