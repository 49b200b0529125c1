"""Live commands in the real app (Pilot): keys open typed dialogs, a command goes pending → applied against a real
training process, invalid input sends nothing, stop asks first, replays are read-only, alert actions prefill."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cmdtools import Trainer, file_records, scalar_after, tuimon
from textual.pilot import Pilot
from textual.widgets import Input

from tuimon.app import TuimonApp, make_app
from tuimon.control import describe
from tuimon.messages import AlertActionRequested
from tuimon.screens.command_dialog import (
    CommandDialog,
    ConfirmCommandDialog,
    InterruptDialog,
    SetClipDialog,
    SetLRDialog,
    StopDialog,
)
from tuimon.screens.command_history import CommandHistoryScreen
from tuimon.source import FileSource, LiveSource
from tuimon.widgets import NoticeBar

# Real trainers in subprocesses or long real runs: in the full suite, not in -m "not slow".
pytestmark = pytest.mark.slow


async def _until(pilot: Pilot, cond: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    """Let the app run until ``cond()`` holds (the deadline only stops a hung test; it measures nothing)."""
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what}")
        await pilot.pause(0.05)


def _notice(app: TuimonApp) -> str:
    return app.overview.query_one(NoticeBar).text


def _notes(app: TuimonApp) -> list[str]:
    return [n.message for n in app._notifications]


async def _type(pilot: Pilot, text: str) -> None:
    dialog = pilot.app.screen
    assert isinstance(dialog, CommandDialog)
    dialog.query_one(Input).value = ""
    await pilot.press(*text)


@pytest.fixture
def trainer(tmp_path: Path) -> Trainer:
    t = Trainer(tmp_path, "--rate", "40")
    t.line("STEP 3")
    yield t
    t.stop()


async def _live(pilot: Pilot) -> None:
    app = pilot.app
    assert isinstance(app, TuimonApp)
    await _until(pilot, lambda: app.status == "live" and app.state.lr() is not None, "the run is live")


async def test_l_sets_the_learning_rate_pending_then_applied(trainer: Trainer) -> None:
    app = make_app(LiveSource(trainer.info, follow_restarts=False))
    async with app.run_test(size=(100, 30)) as pilot:
        await _live(pilot)
        await pilot.press("l")
        dialog = app.screen
        assert isinstance(dialog, SetLRDialog) and dialog.query_one(Input).value == "0.01"  # prefilled
        await _type(pilot, "5e-3")
        trainer.suspend()  # hold the agent: the command must show as pending first
        try:
            await pilot.press("enter")
            assert app.screen is app.overview
            await _until(pilot, lambda: "set_lr 0.005 … pending" in _notice(app), "pending shown")
        finally:
            trainer.resume()
        await _until(pilot, lambda: "applied at step" in _notice(app), "applied shown")
        assert "lr 0.01 → 0.005" in _notice(app)
        (cmd,) = app.state.commands.applied
        step = cmd.step
        assert isinstance(step, int)
        assert any(m.kind == "command" and m.step == step for m in app.state.markers)  # marks the chart
        await pilot.press("S")
        assert isinstance(app.screen, StopDialog)
        await pilot.press("enter")
        final = await asyncio.to_thread(trainer.final)
    assert final["lr"] == [pytest.approx(5e-3)] and final["stopped"]
    lrs = scalar_after(trainer.run_file, "opt/lr", step)
    assert lrs and all(v == pytest.approx(5e-3) for _, v in lrs)


async def test_invalid_input_shows_the_error_and_sends_nothing(trainer: Trainer) -> None:
    app = make_app(LiveSource(trainer.info, follow_restarts=False))
    async with app.run_test(size=(100, 30)) as pilot:
        await _live(pilot)
        await pilot.press("l")
        dialog = app.screen
        assert isinstance(dialog, SetLRDialog)
        for text, error in (
            ("abc", "invalid learning rate 'abc': not a number"),
            ("nan", "must be finite"),
            ("0", "must be > 0"),
            ("-1e-3", "must be > 0"),
            ("x0", "invalid factor '0': must be > 0"),
        ):
            await _type(pilot, text)
            await pilot.press("enter")
            assert app.screen is dialog and error in dialog.error, (text, dialog.error)
        await _type(pilot, "5")  # ×500: asks for a second enter first
        await pilot.press("enter")
        assert app.screen is dialog and "×500" in dialog.warning and "enter again" in dialog.warning
        await pilot.press("escape")
        await pilot.press("c")
        assert isinstance(app.screen, SetClipDialog) and app.screen.query_one(Input).value == "1.0"
        await _type(pilot, "-1")
        await pilot.press("enter")
        assert "invalid max norm -1.0" in app.screen.error
        await pilot.press("escape")
        assert len(app.state.commands) == 0 and app.screen is app.overview
    assert not any(r.kind == "command" for r in file_records(trainer.run_file))


async def test_stop_asks_for_confirmation_and_escape_keeps_training(trainer: Trainer) -> None:
    app = make_app(LiveSource(trainer.info, follow_restarts=False))
    async with app.run_test(size=(100, 30)) as pilot:
        await _live(pilot)
        await pilot.press("S")
        assert isinstance(app.screen, StopDialog) and "stop the run?" in str(
            app.screen.query_one("#dialog").border_title
        )
        await pilot.press("escape")
        assert app.screen is app.overview and len(app.state.commands) == 0
        step = app.state.step
        await _until(pilot, lambda: app.state.step > step + 5, "training goes on")
        await pilot.press("S")
        await pilot.press(*"enough", "enter")
        await _until(pilot, lambda: app.state.ended, "the run ends")
    assert trainer.final()["stopped"]
    end = file_records(trainer.run_file)[-1]
    assert end.kind == "end" and "enough" in str(end.data)


async def test_a_stop_the_loop_ignores_is_shown_and_interrupt_is_offered(tmp_path: Path) -> None:
    trainer = Trainer(tmp_path, "--rate", "40", "--ignore-stop", name="ignores")
    try:
        trainer.line("STEP 3")
        app = make_app(LiveSource(trainer.info, follow_restarts=False))
        async with app.run_test(size=(100, 30)) as pilot:
            await _live(pilot)
            await pilot.press("S", *"done", "enter")
            # the loop goes on stepping: the follow-up says so and the confirmation for interrupt opens
            await _until(pilot, lambda: isinstance(app.screen, InterruptDialog), "interrupt offered")
            assert "does not read mon.should_stop" in str(app.screen.query_one("#note").render())
            (stop,) = [c for c in app.state.commands.entries() if c.name == "stop"]
            assert stop.status == "ignored" and "ignored" in describe(stop)
            await pilot.press("escape")  # keep training: nothing sent; S offers it again
            assert trainer.proc.poll() is None
            await pilot.press("S")
            assert isinstance(app.screen, InterruptDialog)
            await pilot.press("enter")
            await _until(pilot, lambda: app.state.ended, "the run ends")
        rc = await asyncio.to_thread(trainer.proc.wait, 60)
    finally:
        trainer.stop()
    assert rc != 0 and "KeyboardInterrupt" in trainer.proc.stderr.read()
    end = file_records(trainer.run_file)[-1]
    assert end.kind == "end" and end.data["reason"] == "interrupted" and end.data["stop_reason"] == "done"


async def test_a_run_without_commands_says_so_instead_of_a_dialog(tmp_path: Path) -> None:
    trainer = Trainer(tmp_path, "--rate", "40", "--no-optimizer", name="noopt")
    try:
        trainer.line("STEP 3")
        app = make_app(LiveSource(trainer.info, follow_restarts=False))
        async with app.run_test(size=(100, 30)) as pilot:
            await _until(pilot, lambda: app.status == "live" and bool(app.state.hello), "the run is live")
            for key in ("l", "S", "p"):
                await pilot.press(key)
                assert app.screen is app.overview, key
            await _until(pilot, lambda: len(_notes(app)) >= 3, "three notices")
            assert all("takes no commands" in n and "no optimizer" in n for n in _notes(app))
            assert len(app.state.commands) == 0
    finally:
        trainer.stop()


async def test_pause_toggles_and_checkpoint_sends_at_once(trainer: Trainer) -> None:
    app = make_app(LiveSource(trainer.info, follow_restarts=False))
    async with app.run_test(size=(100, 30)) as pilot:
        await _live(pilot)
        await pilot.press("p")
        await _until(pilot, lambda: "paused at step" in _notice(app), "paused")
        assert app.run_paused()
        await pilot.press("s")  # a checkpoint while paused: applied on the waiting training thread
        await _until(pilot, lambda: "checkpoint saved at step" in _notice(app), "checkpoint")
        await pilot.press("p")
        await _until(pilot, lambda: "resumed at step" in _notice(app), "resumed")
        assert not app.run_paused()
        names = [c.name for c in app.state.commands.applied]
        assert names == ["pause", "checkpoint", "resume"]
        await pilot.press("h")
        assert isinstance(app.screen, CommandHistoryScreen)
        assert "resumed at step" in app.screen.text and "paused at step" in app.screen.text


async def test_an_alert_action_opens_its_dialog_with_the_exact_value_first(trainer: Trainer) -> None:
    app = make_app(LiveSource(trainer.info, follow_restarts=False))
    async with app.run_test(size=(80, 24)) as pilot:
        await _live(pilot)
        action = {"command": "set_lr", "args": {"value": 3e-4}, "label": "lower the learning rate to 3e-4"}
        app.post_message(AlertActionRequested("exploding_gradients:global", action))
        await _until(pilot, lambda: isinstance(app.screen, SetLRDialog), "the dialog opens")
        dialog = app.screen
        assert dialog.query_one(Input).value == "0.0003"
        assert "suggested: lower the learning rate to 3e-4" in str(dialog.query_one("#note").render())
        box = dialog.query_one("#dialog").region
        assert (
            box.right <= 80 and box.bottom <= 24 and dialog.query_one(Input).region.height > 0
        )  # fits 80×24
        await pilot.press("enter")  # one enter sends the suggested value
        await _until(pilot, lambda: "lr 0.01 → 0.0003" in _notice(app), "applied")
        app.post_message(
            AlertActionRequested("x", {"command": "pause", "args": {}, "label": "pause to look"})
        )
        await _until(pilot, lambda: isinstance(app.screen, ConfirmCommandDialog), "pause is confirmed first")
        await pilot.press("escape")


async def test_every_command_is_in_the_palette(trainer: Trainer) -> None:
    app = make_app(LiveSource(trainer.info, follow_restarts=False))
    async with app.run_test(size=(100, 30)) as pilot:
        await _live(pilot)
        await pilot.press("ctrl+p")
        await pilot.press(*"weight decay")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await _until(pilot, lambda: isinstance(app.screen, CommandDialog), "the dialog opens")
        assert app.screen.query_one("#dialog").border_title == "set weight decay"
        await pilot.press("escape")
        await pilot.press("ctrl+p")
        await pilot.press(*"run bump")  # the run's @mon.command
        await pilot.pause(0.3)
        await pilot.press("enter")
        await _until(pilot, lambda: isinstance(app.screen, CommandDialog), "the custom dialog opens")
        dialog = app.screen
        assert dialog.query_one("#arg-amount", Input).value == "1.0"
        dialog.query_one("#arg-amount", Input).value = "4"
        await pilot.press("enter")
        await _until(pilot, lambda: "bump applied" in _notice(app), "bump applied")


async def test_a_replay_is_read_only_and_shows_the_command_history(tmp_path: Path) -> None:
    t = Trainer(tmp_path, "--rate", "40")
    try:
        t.line("STEP 3")
        assert tuimon("send", t.run_id, "set-lr", "0.02").returncode == 0
        assert tuimon("send", t.run_id, "set-lr", "nan-ish").returncode == 2  # never sent
        assert (
            tuimon("send", t.run_id, "set-lr", "1", "--group", "3").returncode == 1
        )  # rejected by the agent
        assert tuimon("send", t.run_id, "stop").returncode == 0
        t.final()
    finally:
        t.stop()
    app = make_app(FileSource(t.run_file))
    async with app.run_test(size=(100, 30)) as pilot:
        await _until(pilot, lambda: app.status == "replay", "replayed")
        for key in ("l", "c", "w", "p", "s", "S"):
            await pilot.press(key)
            assert app.screen is app.overview, key
        assert any("read-only" in n for n in _notes(app))
        await pilot.press("h")
        text = app.screen.text
        assert "set_lr applied at step" in text and "lr 0.01 → 0.02" in text
        assert "rejected" in text and "group" in text and "stop applied" in text
        assert [m.kind for m in app.state.markers if m.kind == "command"] == ["command", "command"]
