"""Appearance: SVG snapshots of the viewer on the deterministic recorded run (see ``recorded_run``'s docstring).

Regenerate with ``pytest tests/test_snapshots.py --snapshot-update`` and look at the SVGs before committing them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from test_app import wait_loaded
from textual.pilot import Pilot

from tuimon.app import make_app
from tuimon.source import FileSource
from tuimon.widgets import MetricList


async def _loaded(pilot: Pilot) -> None:
    await wait_loaded(pilot)


async def _help(pilot: Pilot) -> None:
    await wait_loaded(pilot)
    await pilot.press("question_mark")
    await pilot.pause()


async def _acc_smoothed(pilot: Pilot) -> None:
    await wait_loaded(pilot)
    await pilot.press("down", "m")
    await pilot.pause()
    assert pilot.app.screen.query_one(MetricList).selected == "acc"


def test_overview_80x24(snap_compare: Any, recorded_run: Path) -> None:
    assert snap_compare(make_app(FileSource(recorded_run)), terminal_size=(80, 24), run_before=_loaded)


def test_overview_160x48(snap_compare: Any, recorded_run: Path) -> None:
    assert snap_compare(make_app(FileSource(recorded_run)), terminal_size=(160, 48), run_before=_loaded)


def test_overview_acc_smoothed_100x30(snap_compare: Any, recorded_run: Path) -> None:
    assert snap_compare(make_app(FileSource(recorded_run)), terminal_size=(100, 30), run_before=_acc_smoothed)


def test_help_screen(snap_compare: Any, recorded_run: Path) -> None:
    assert snap_compare(make_app(FileSource(recorded_run)), terminal_size=(80, 24), run_before=_help)


def test_too_small(snap_compare: Any, recorded_run: Path) -> None:
    assert snap_compare(make_app(FileSource(recorded_run)), terminal_size=(50, 12), run_before=_loaded)


# -- the alert panel (tests/test_alert_panel.py writes the run: fixed steps, values and timestamps) --


async def _alert_detail(pilot: Pilot) -> None:
    await wait_loaded(pilot)
    await pilot.press("A", "down", "down", "enter")
    await pilot.pause()


def test_alert_panel_100x30(snap_compare: Any, tmp_path: Path) -> None:
    from test_alert_panel import alert_records, write_run

    run = write_run(tmp_path / "run.sqlite", alert_records())
    assert snap_compare(make_app(FileSource(run)), terminal_size=(100, 30), run_before=_loaded)


def test_alert_badge_80x24(snap_compare: Any, tmp_path: Path) -> None:
    from test_alert_panel import alert_records, write_run

    run = write_run(tmp_path / "run.sqlite", alert_records())
    assert snap_compare(make_app(FileSource(run)), terminal_size=(80, 24), run_before=_loaded)


def test_alert_detail_100x30(snap_compare: Any, tmp_path: Path) -> None:
    from test_alert_panel import alert_records, write_run

    run = write_run(tmp_path / "run.sqlite", alert_records())
    assert snap_compare(make_app(FileSource(run)), terminal_size=(100, 30), run_before=_alert_detail)


# -- histograms and activations over time (tests/test_hist_view.py records the runs: seeded, one thread) --


async def _histograms(pilot: Pilot, *keys: str) -> None:
    await wait_loaded(pilot)
    await pilot.press("g", "h", *keys)
    await pilot.pause()


async def _histograms_of_the_nan(pilot: Pilot) -> None:
    await _histograms(pilot, *["down"] * 5)  # fc3.bias: a NaN gradient at step 36


async def _dead_units(pilot: Pilot) -> None:
    await wait_loaded(pilot)
    await pilot.press("g", "5")
    await pilot.pause()


def test_histograms_80x24(snap_compare: Any, tmp_path: Path) -> None:
    from test_hist_view import record_hist_run

    run, _ = record_hist_run(tmp_path)
    assert snap_compare(make_app(FileSource(run)), terminal_size=(80, 24), run_before=_histograms)


def test_histograms_nan_160x48(snap_compare: Any, tmp_path: Path) -> None:
    from test_hist_view import record_hist_run

    run, _ = record_hist_run(tmp_path)
    assert snap_compare(make_app(FileSource(run)), terminal_size=(160, 48), run_before=_histograms_of_the_nan)


def test_dead_units_over_time_80x24(snap_compare: Any, tmp_path: Path) -> None:
    from conftest import _make_deterministic
    from test_activations_view import record_dead_relu_run

    run = record_dead_relu_run(tmp_path)
    _make_deterministic(run)
    assert snap_compare(make_app(FileSource(run)), terminal_size=(80, 24), run_before=_dead_units)


# -- feature maps of the probe input (tests/test_feature_maps_view.py records the demo's run, deterministic) --


async def _feature_maps(pilot: Pilot) -> None:
    await wait_loaded(pilot)
    await pilot.press("g")
    await pilot.pause()
    await pilot.press("f")
    await pilot.pause(0.3)


def test_feature_maps_80x24(snap_compare: Any, tmp_path: Path) -> None:
    from test_feature_maps_view import record_probe_run

    run = record_probe_run(tmp_path)
    assert snap_compare(make_app(FileSource(run)), terminal_size=(80, 24), run_before=_feature_maps)


# -- live commands: the learning-rate dialog (pushed directly: a replay takes no commands) --


async def _lr_dialog(pilot: Pilot) -> None:
    from tuimon.screens.command_dialog import SetLRDialog

    await wait_loaded(pilot)
    pilot.app.push_screen(SetLRDialog(0.1))
    await pilot.pause()
    await pilot.press(*"x50", "enter")  # ×50: the dialog asks for a second enter
    await pilot.pause()


def test_lr_dialog_80x24(snap_compare: Any, recorded_run: Path) -> None:
    assert snap_compare(make_app(FileSource(recorded_run)), terminal_size=(80, 24), run_before=_lr_dialog)
