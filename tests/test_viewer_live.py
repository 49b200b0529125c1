"""The real viewer against real trainer processes: live attach, replay of a killed run, and `tuimon demo` in tmux."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import read_until, start_trainer, wait_live
from test_app import plain, wait_loaded

from tuimon.app import REPAINT_INTERVAL, make_app
from tuimon.source import FileSource, LiveSource
from tuimon.widgets import MetricList, RunHeader
from tuimon_agent import protocol
from tuimon_agent.runfile import RunFileReader

# Real trainers in subprocesses or long real runs: in the full suite, not in -m "not slow".
pytestmark = pytest.mark.slow


async def test_attach_to_a_live_trainer_and_see_it_end(tmp_path: Path) -> None:
    proc = start_trainer(tmp_path, "--steps", "400", "--pace", "0.005", name="live-app")
    read_until(proc, "STEP 100")
    app = make_app(LiveSource(wait_live(proc.pid), follow_restarts=False))
    async with app.run_test(size=(80, 24)) as pilot:
        deadline = time.monotonic() + 60
        seen_live = False
        while time.monotonic() < deadline and app.status != "ended":
            seen_live = seen_live or app.status == "live"
            await pilot.pause(REPAINT_INTERVAL)
        await pilot.pause(2 * REPAINT_INTERVAL)
        header = plain(app.overview.query_one(RunHeader))
        assert seen_live and app.status == "ended"
        assert header.startswith("live-app") and "step 400" in header and "gap 0" in header
        assert app.overview.query_one(MetricList).names[:2] == ["loss", "sq"]
        assert app.state.train["loss"].count == 400 and app.state.gaps == 0
    assert proc.wait(30) == 0


async def test_replay_opens_the_file_of_a_trainer_killed_with_sigkill(tmp_path: Path) -> None:
    proc = start_trainer(tmp_path, "--steps", "100000", "--pace", "0.002", "--commit", "0.1", name="killed")
    run_file = read_until(proc, "RUN ").split()[2]
    read_until(proc, "STEP 200")
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    app = make_app(FileSource(run_file))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_loaded(pilot)
        header = plain(app.overview.query_one(RunHeader))
        assert header.startswith("killed") and "replay" in header
        assert app.state.step >= 200 and not app.state.ended and app.state.gaps == 0


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_tuimon_demo_in_tmux_as_a_user_runs_it(tmp_path: Path) -> None:
    session = f"tuimon-test-{tmp_path.name}"
    cmd = f"cd {tmp_path} && {sys.executable} -m tuimon demo --steps 400 --pace 0.01"
    env = [
        f"{k}={os.environ[k]}" for k in ("TUIMON_RUNTIME_DIR", "TUIMON_DIR")
    ]  # a running tmux server has its own
    env_args = [arg for kv in env for arg in ("-e", kv)]
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", session, "-x", "80", "-y", "24", *env_args, cmd], check=True
    )
    try:
        screen = ""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            screen = subprocess.run(
                ["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True
            ).stdout
            if "demo-none" in screen and "val_loss" in screen and "live" in screen:
                break
            time.sleep(0.5)
        assert "demo-none" in screen and "● live" in screen, screen
        assert "loss" in screen and "opt/lr" in screen and "Help" in screen, screen
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode != 0:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("tuimon did not exit on q")
        # Quitting the viewer stops the demo it started (SIGTERM, so its run file is flushed).
        deadline = time.monotonic() + 20
        while (
            time.monotonic() < deadline
            and subprocess.run(["pgrep", "-f", "tuimon.demo.digits --bug none --steps 400"]).returncode == 0
        ):
            time.sleep(0.2)
        assert subprocess.run(["pgrep", "-f", "tuimon.demo.digits --bug none --steps 400"]).returncode != 0
        run_files = list(Path(os.environ["TUIMON_DIR"]).glob("*/run.sqlite"))
        assert len(run_files) == 1
        with RunFileReader(run_files[0]) as reader:
            last = list(reader.records(reader.last_seq() - 1))[-1]
        assert last.kind == protocol.END and last.data["reason"] in ("signal", "closed")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
