"""The viewer's dialogs and state lines against a real live run (Pilot): keys typed in one burst into a command
dialog are applied in order (never a value other than the one typed), a paused run says so in the header and the
notices in words, an app started for a run that is still starting says so until it attaches."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path

import pytest
from cmdtools import COMMAND_TRAINER, Trainer
from textual import events
from textual.keys import _character_to_key, _get_unicode_name_from_key
from textual.pilot import Pilot

from tuimon.app import TuimonApp, make_app
from tuimon.cli import find_started_run
from tuimon.screens.command_dialog import CommandDialog
from tuimon.source import LiveSource
from tuimon.widgets import NoticeBar, RunHeader

# Real trainers in subprocesses: in the full suite, not in -m "not slow".
pytestmark = pytest.mark.slow


async def _until(
    pilot: Pilot,
    cond: Callable[[], bool],
    what: str,
    seconds: float = 60.0,
    on_timeout: Callable[[], str] = lambda: "",
) -> None:
    """Let the app run until ``cond()`` holds (the deadline only stops a hung test; it measures nothing)."""
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what} {on_timeout()}")
        await pilot.pause(0.05)


def _burst(app: TuimonApp, keys: list[str]) -> None:
    """Queue every key at once, as a fast typist under load delivers them: no key waits for the one before."""
    driver = app._driver
    assert driver is not None
    for key in keys:  # the events Pilot.press makes, without its wait after each
        name = _character_to_key(key) if len(key) == 1 and not key.isalnum() else key
        try:
            char: str | None = unicodedata.lookup(_get_unicode_name_from_key(name))
        except KeyError:
            char = key if len(key) == 1 else None
        ev = events.Key(name, char)
        ev.set_sender(app)
        driver.send_message(ev)


@pytest.fixture
def trainer(tmp_path: Path) -> Trainer:
    t = Trainer(tmp_path, "--rate", "40")
    t.line("STEP 3")
    yield t
    t.stop()


def _notice(app: TuimonApp) -> str:
    return app.overview.query_one(NoticeBar).text


def _error(app: TuimonApp) -> str:
    screen = app.screen
    return f"{screen.error} {screen.warning}" if isinstance(screen, CommandDialog) else ""


async def _live(pilot: Pilot) -> TuimonApp:
    app = pilot.app
    assert isinstance(app, TuimonApp)
    await _until(pilot, lambda: app.status == "live" and app.state.lr() is not None, "the run is live")
    return app


@pytest.mark.slow
@pytest.mark.parametrize("typed", ["x0.5", "0.0123", "/10"])
async def test_keys_typed_in_one_burst_into_the_lr_dialog_send_exactly_what_was_typed(
    trainer: Trainer, typed: str
) -> None:
    app = make_app(LiveSource(trainer.info, follow_restarts=False))
    async with app.run_test(size=(100, 30)) as pilot:
        app = await _live(pilot)
        _burst(app, ["l", *typed, "enter"])  # `l` opens the dialog; the rest arrive before it has focus
        await _until(
            pilot,
            lambda: app.state.commands.latest() is not None and app.screen is app.overview,
            "a command sent",
            on_timeout=lambda: f"the screen is {app.screen!r}, showing {_error(app)!r}",
        )
        cmd = app.state.commands.latest()
        assert cmd is not None
        if typed.startswith("x"):
            assert cmd.args == {"scale": 0.5}, cmd.args
        elif typed.startswith("/"):
            assert cmd.args == {"scale": pytest.approx(0.1)}, cmd.args
        else:
            assert cmd.args == {"value": pytest.approx(0.0123)}, cmd.args


def _header(app: TuimonApp) -> str:
    return app.overview.query_one(RunHeader).render().plain  # type: ignore[union-attr]


@pytest.mark.slow
async def test_a_paused_run_says_so_in_the_header_and_the_notices_in_words(trainer: Trainer) -> None:
    app = make_app(LiveSource(trainer.info, follow_restarts=False))
    async with app.run_test(size=(120, 30)) as pilot:
        app = await _live(pilot)
        await _until(pilot, lambda: "● live" in _header(app), "the header live")  # its 10 Hz repaint
        await pilot.press("p")
        await _until(
            pilot, lambda: "paused at step" in _notice(app), "paused", on_timeout=lambda: _notice(app)
        )
        (pause,) = app.state.commands.applied
        assert f"paused at step {pause.step:,}" in _notice(app) and "False" not in _notice(app)
        await _until(
            pilot, lambda: f"‖ paused since step {pause.step:,}" in _header(app), "the header paused"
        )
        assert "● live" not in _header(app) and "it/s" in _header(app) and "– it/s" in _header(app)
        await pilot.press("s")
        await _until(
            pilot,
            lambda: "checkpoint saved at step" in _notice(app),
            "saved",
            on_timeout=lambda: _notice(app),
        )
        ckpt = app.state.commands.applied[-1]
        assert ckpt.name == "checkpoint" and isinstance(ckpt.new, str) and Path(ckpt.new).exists()
        assert f"checkpoint saved at step {ckpt.step:,}: {ckpt.new}" in _notice(app), _notice(app)
        assert "off →" not in _notice(app)
        await pilot.press("p")
        await _until(
            pilot, lambda: "resumed at step" in _notice(app), "resumed", on_timeout=lambda: _notice(app)
        )
        await _until(pilot, lambda: "● live" in _header(app), "the header live again")
        assert "paused" not in _header(app)


@pytest.mark.slow
async def test_the_app_says_the_run_is_starting_before_it_exists_then_attaches(tmp_path: Path) -> None:
    log = tmp_path / "trainer.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(COMMAND_TRAINER),
                "--dir",
                str(tmp_path),
                "--rate",
                "40",
                "--print-every",
                "1000000",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=os.environ.copy(),
        )
    proc.send_signal(signal.SIGSTOP)  # held before it can publish a run: the app must speak first
    try:
        app = make_app(wait_for=("starting the demo … importing torch", lambda: find_started_run(proc, log)))
        async with app.run_test(size=(120, 30)) as pilot:
            await _until(pilot, lambda: "starting the demo" in _notice(app), "the starting line")
            assert find_started_run(proc, log) is None and app.status == "waiting"
            assert "no records yet" in _header(app)
            proc.send_signal(signal.SIGCONT)
            await _until(
                pilot,
                lambda: app.status == "live" and app.state.step > 0,
                "attached to the run",
                on_timeout=lambda: f"{app.status} {_notice(app)} {log.read_text()[-500:]}",
            )
            assert app.state.name == "cmd"
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait(30)


async def test_the_app_says_why_a_started_run_never_appeared(tmp_path: Path) -> None:
    log = tmp_path / "demo.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; print('no module named sklearn'); sys.exit(3)"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    app = make_app(wait_for=("starting the demo …", lambda: find_started_run(proc, log)))
    async with app.run_test(size=(120, 30)) as pilot:
        await _until(pilot, lambda: "exited" in _notice(app), "the reason", on_timeout=lambda: _notice(app))
        assert "the demo exited (code 3)" in _notice(app) and "no module named sklearn" in _notice(app)
        assert app.status == "ended"
