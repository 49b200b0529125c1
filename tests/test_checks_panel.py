"""The sanity checks panel: the overview's tally, the checks screen (Pilot) and its look (snapshots).

The run files are recorded by the real agent (``Monitor.log_check`` with hand-made results, so their content is
fixed) and replayed by the real :class:`~tuimon.source.FileSource`; nothing in the viewer is patched.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from test_app import plain, wait_loaded
from textual.pilot import Pilot
from textual.widgets import DataTable, Static

import tuimon_agent
from tuimon.app import REPAINT_INTERVAL, TuimonApp, make_app
from tuimon.messages import SourceUpdated
from tuimon.screens import ChecksScreen, HelpScreen, OverviewScreen
from tuimon.screens.checks import EMPTY_NOTE
from tuimon.source import FileSource, SourceUpdate
from tuimon.widgets import CheckDetails, ChecksTable, NoticeBar
from tuimon_agent import protocol
from tuimon_agent.checks import CheckResult

SHAPE_ROWS = 64
"""Rows in the shape trace's table: more than the details show (50)."""


def _results() -> list[CheckResult]:
    """One result per verdict (and then some), with the kind of numbers and tables the real checks report."""
    return [
        CheckResult(
            "gradient_check",
            "pass",
            "analytic and numeric gradients agree: worst |err| 3.1e-09 over 96 entries of 4 tensors",
            "Autograd's gradients match central finite differences (eps=1e-06) within atol=1e-05 + "
            "rtol=0.001*|numeric|, checked in float64. Entries whose one-sided differences disagree (ReLU or "
            "max-pool kinks) are skipped, not failed.",
            numbers={"entries_checked": 96, "tensors": 4, "worst_abs_err": 3.1e-09, "kinks": 0},
            table=[
                {"name": "0.weight", "shape": "32x2", "checked": 24, "max_abs_err": 3.1e-09, "status": "ok"},
                {"name": "0.bias", "shape": "32", "checked": 24, "max_abs_err": 1.2e-09, "status": "ok"},
                {"name": "2.weight", "shape": "2x32", "checked": 24, "max_abs_err": 8.8e-10, "status": "ok"},
                {"name": "2.bias", "shape": "2", "checked": 2, "max_abs_err": 4.4e-10, "status": "ok"},
            ],
            seconds=0.84,
        ),
        CheckResult(
            "overfit_one_batch",
            "fail",
            "loss still 2.301 after 200 steps on 16 samples (needs < 0.05): the model cannot memorize one batch",
            "A model that cannot drive the loss to near zero on 16 samples has a bug between the loss and the "
            "weights: outputs detached from the graph, an optimizer built over the wrong parameters, a learning "
            "rate of zero, or targets that do not match the outputs.",
            numbers={"steps": 200, "samples": 16, "first_loss": 2.3026, "last_loss": 2.301, "target": 0.05},
            table=[
                {"step": s, "loss": round(2.3026 - s * 8e-6, 5), "accuracy": 0.125} for s in range(0, 201, 40)
            ],
            seconds=3.52,
        ),
        CheckResult(
            "initial_loss",
            "warn",
            "initial loss 4.61 is 2.0x the 2.303 expected for 10 classes (-ln(1/10))",
            "At initialization a classifier should be unsure of every class. A higher loss means confident wrong "
            "guesses: initial weights too large, or a final layer whose bias favours some classes.",
            numbers={"initial_loss": 4.61, "expected": 2.3026, "ratio": 2.0, "classes": 10},
            seconds=0.02,
        ),
        CheckResult(
            "shape_trace",
            "pass",
            f"{SHAPE_ROWS} modules traced; no silent broadcast",
            "Every module's input and output shapes, in call order.",
            numbers={"modules": SHAPE_ROWS},
            table=[
                {
                    "module": f"blocks.{i}",
                    "type": "Linear",
                    "input": "64x32",
                    "output": "64x32",
                    "params": 1056,
                }
                for i in range(SHAPE_ROWS)
            ],
            seconds=0.11,
        ),
        CheckResult(
            "data_check",
            "error",
            "could not run: TypeError: batch is not (inputs, targets)",
            "The check itself failed, so it says nothing about the data. Pass the batch as (inputs, targets).",
            numbers={},
            seconds=0.0,
        ),
        CheckResult(
            "loss_decreases",
            "pass",
            "loss fell from 2.31 to 0.41 over 50 steps",
            "Training on real batches lowers the loss.",
            numbers={"first": 2.31, "last": 0.41, "steps": 50},
            seconds=1.75,
        ),
    ]


RESULTS = _results()
NAMES = [r.name for r in RESULTS]


def _record_run(run_dir: Path, results: list[CheckResult]) -> Path:
    """Record a small run with the real agent: the checks first (as ``mon.sanity_check`` sends them), then losses."""
    mon = tuimon_agent.watch(run="checks", dir=run_dir, publish=False)
    try:
        for result in results:
            mon.log_check(result)
        for step in range(1, 21):
            mon.log(loss=2.0 / step, step=step)
    finally:
        mon.close()
    assert mon.run_file is not None
    return mon.run_file


@pytest.fixture(scope="module")
def checks_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run file with the six hand-made check results (pass, fail, warn, pass, error, pass) and 20 losses.

    The checks' content is fixed; what differs between recordings (timestamps, run id) is never shown on the checks
    screen, so its snapshots are stable without rewriting the file.
    """
    return _record_run(tmp_path_factory.mktemp("checks"), RESULTS)


@pytest.fixture(scope="module")
def no_checks_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run file with losses and no check record."""
    return _record_run(tmp_path_factory.mktemp("nochecks"), [])


async def _open_checks(pilot: Pilot) -> ChecksScreen:
    await wait_loaded(pilot)
    await pilot.press("C")
    await pilot.pause()
    screen = pilot.app.screen
    assert isinstance(screen, ChecksScreen)
    return screen


def _details_text(details: CheckDetails) -> str:
    return "\n".join(str(s.render()) for s in details.query(Static) if s.display)


def _table_cells(table: DataTable[Any]) -> list[list[str]]:
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_overview_tallies_the_checks(checks_run: Path, size: tuple[int, int]) -> None:
    app = make_app(FileSource(checks_run))
    async with app.run_test(size=size) as pilot:
        await wait_loaded(pilot)
        badge = app.overview.query_one("#checks-badge", Static)
        assert app.overview.has_class("-checks") and badge.display
        assert str(badge.render()) == "checks ✓3 !1 ✗1 ?1 (C)"
        # On the notice line's right end, which still says what it said.
        notice = app.overview.query_one(NoticeBar)
        assert badge.region.y == notice.region.y and badge.region.right == size[0]
        assert plain(notice).startswith("no events")
        assert "C Checks" in _footer(app)


def _footer(app: TuimonApp) -> str:
    return " ".join(
        f"{b.binding.key} {b.binding.description}"
        for b in app.screen.active_bindings.values()
        if b.binding.show
    )


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_checks_screen_lists_every_check_and_details_the_selected_one(
    checks_run: Path, size: tuple[int, int]
) -> None:
    app = make_app(FileSource(checks_run))
    async with app.run_test(size=size) as pilot:
        screen = await _open_checks(pilot)
        table = screen.query_one(ChecksTable)
        details = screen.query_one(CheckDetails)
        assert screen.checks == NAMES and table.names == NAMES
        rows = _table_cells(table)
        assert [r[0] for r in rows] == ["✓ pass", "✗ fail", "! warn", "✓ pass", "? error", "✓ pass"]
        assert [r[1] for r in rows] == NAMES
        assert rows[0][3] == "0.84 s" and rows[1][3] == "3.52 s"
        assert rows[0][2].startswith("analytic and numeric gradients agree")
        assert table.region.bottom <= details.region.y
        assert (
            table.region.right <= size[0]
            and table.virtual_size.width <= table.scrollable_content_region.width
        )
        # The title says the run and the tally; no timestamps anywhere.
        assert (
            str(screen.query_one("#checks-title", Static).render()) == "sanity checks · checks  ✓3 !1 ✗1 ?1"
        )

        # The first failed check is selected (not the first passing one); ↑ selects the check above.
        assert table.has_focus and table.selected == "overfit_one_batch"
        assert details.check is not None and details.check["name"] == "overfit_one_batch"
        await pilot.press("up")
        await pilot.pause()
        assert table.selected == "gradient_check"
        assert details.check is not None and details.check["name"] == "gradient_check"
        text = _details_text(details)
        assert "Autograd's gradients match central finite differences" in text
        assert "entries_checked  96" in text and "worst_abs_err    3.1e-09" in text
        cells = _table_cells(details.query_one(DataTable))
        assert cells[0] == ["0.weight", "32x2", "24", "3.1e-09", "ok"] and len(cells) == 4
        assert "✓ pass" in str(details.border_title) and "gradient_check" in str(details.border_title)
        assert details.border_subtitle == "step 0 · 0.84 s"

        # ↓ selects the next check.
        await pilot.press("down")
        await pilot.pause()
        assert table.selected == "overfit_one_batch" and details.check is not None
        assert details.check["name"] == "overfit_one_batch"
        text = _details_text(details)
        assert "cannot drive the loss to near zero on 16 samples" in text
        assert (
            "loss still 2.301 after 200 steps" in text
        )  # the whole summary, which the table cuts at 80 columns
        cells = _table_cells(details.query_one(DataTable))
        assert cells[0] == ["0", "2.303", "0.125"] and cells[-1][0] == "200"

        # j/k too; a table longer than 50 rows shows its first 50 and says so.
        await pilot.press("j", "j")
        await pilot.pause()
        assert table.selected == "shape_trace"
        assert details.query_one(DataTable).row_count == 50
        assert f"… {SHAPE_ROWS - 50} more rows (the first 50 shown)" in _details_text(details)

        # A check without a table or numbers shows neither.
        await pilot.press("down")
        await pilot.pause()
        assert table.selected == "data_check"
        assert not details.query_one(DataTable).display and not details.query_one("#check-numbers").display
        assert "? error" in str(details.border_title)

        # escape goes back; c opens it again, and c closes it too.
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is app.overview
        await pilot.press("C")
        await pilot.pause()
        assert isinstance(app.screen, ChecksScreen)
        await pilot.press("C")
        await pilot.pause()
        assert isinstance(app.screen, OverviewScreen)


async def test_the_details_scroll_at_80x24(checks_run: Path) -> None:
    app = make_app(FileSource(checks_run))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open_checks(pilot)
        details = screen.query_one(CheckDetails)
        await pilot.press("down", "down")  # from the failed overfit_one_batch to shape_trace: 50 table rows
        await pilot.pause()
        assert details.max_scroll_y > 0 and details.scroll_y == 0
        await pilot.press("tab")
        await pilot.pause()
        assert details.has_focus
        await pilot.press("pagedown")
        await pilot.pause()
        assert details.scroll_y > 0
        await pilot.press("shift+tab", "up")  # back to the table: ↑ picks the previous check, from the top
        await pilot.pause()
        assert screen.query_one(ChecksTable).selected == "initial_loss" and details.scroll_y == 0


async def test_a_run_without_checks(no_checks_run: Path) -> None:
    app = make_app(FileSource(no_checks_run))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_loaded(pilot)
        assert not app.overview.has_class("-checks")
        assert not app.overview.query_one("#checks-badge").display
        screen = await _open_checks(pilot)
        note = screen.query_one("#checks-empty", Static)
        assert screen.has_class("-empty") and note.display and note.region.height > 0
        assert str(note.render()) == EMPTY_NOTE
        assert "mon.sanity_check(batch, loss_fn)" in EMPTY_NOTE and "tuimon check" in EMPTY_NOTE
        assert screen.query_one(ChecksTable).region.area == 0


def _check_record(seq: int, result: CheckResult) -> protocol.Record:
    return protocol.Record(protocol.CHECK, seq, 0, time.time(), result.to_data())


async def test_the_checks_screen_follows_new_results_live() -> None:
    app = make_app()
    hello = protocol.Record(protocol.HELLO, 1, None, time.time(), {"run_id": "r1", "name": "live"})
    async with app.run_test(size=(80, 24)) as pilot:
        app.post_message(SourceUpdated(SourceUpdate([hello, _check_record(2, RESULTS[0])], status="live")))
        await pilot.pause(3 * REPAINT_INTERVAL)
        assert str(app.overview.query_one("#checks-badge", Static).render()) == "checks ✓1 (C)"
        await pilot.press("C")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ChecksScreen) and screen.checks == ["gradient_check"]
        details = screen.query_one(CheckDetails)
        shown = details.check

        # Nothing new: the timer's updates leave the screen alone.
        app.post_message(SourceUpdated(SourceUpdate([], status="live")))
        await pilot.pause(3 * REPAINT_INTERVAL)
        assert details.check is shown

        # A new check arrives, then a newer result for the first one (it replaces it, in place).
        app.post_message(SourceUpdated(SourceUpdate([_check_record(3, RESULTS[1])])))
        await pilot.pause(3 * REPAINT_INTERVAL)
        assert screen.checks == ["gradient_check", "overfit_one_batch"]
        failing = CheckResult(
            "gradient_check", "fail", "0.weight: analytic 1 vs numeric 2", "Backward is wrong."
        )
        app.post_message(SourceUpdated(SourceUpdate([_check_record(4, failing)])))
        await pilot.pause(3 * REPAINT_INTERVAL)
        table = screen.query_one(ChecksTable)
        assert screen.checks == ["gradient_check", "overfit_one_batch"]
        assert _table_cells(table)[0][0] == "✗ fail" and table.selected == "gradient_check"
        assert details.check is not None and details.check["summary"] == failing.summary
        assert "Backward is wrong." in _details_text(details)

        # Help over the checks screen, and back: still current.
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        assert "show / close the sanity checks" in str(app.screen.query_one("#help-text", Static).render())
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is screen

        # A new run (the trainer restarted) has no checks yet.
        app.post_message(SourceUpdated(SourceUpdate([], reset=True)))
        await pilot.pause(3 * REPAINT_INTERVAL)
        assert screen.has_class("-empty") and screen.checks == []
        await pilot.press("escape")
        await pilot.pause()
        assert not app.overview.has_class("-checks")


async def _checks_then(pilot: Pilot, *keys: str) -> None:
    await _open_checks(pilot)
    if keys:
        await pilot.press(*keys)
    await pilot.pause()


def test_checks_screen_snapshot_80x24(snap_compare: Any, checks_run: Path) -> None:
    assert snap_compare(make_app(FileSource(checks_run)), terminal_size=(80, 24), run_before=_checks_then)


async def _second_check(pilot: Pilot) -> None:
    await _checks_then(pilot, "down")


def test_checks_screen_snapshot_120x40(snap_compare: Any, checks_run: Path) -> None:
    assert snap_compare(make_app(FileSource(checks_run)), terminal_size=(120, 40), run_before=_second_check)


def test_empty_checks_screen_snapshot(snap_compare: Any, no_checks_run: Path) -> None:
    assert snap_compare(make_app(FileSource(no_checks_run)), terminal_size=(80, 24), run_before=_checks_then)
