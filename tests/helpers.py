"""Shared helpers for the tests that cross a process boundary (not fixtures: plain functions)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from tuimon.source import LiveSource, SourceUpdate
from tuimon.state import RunState
from tuimon_agent import discovery

HERE = Path(__file__).resolve().parent
TRAINER = HERE / "trainer.py"


def start_trainer(run_dir: Path, *args: str, name: str = "e2e") -> subprocess.Popen[str]:
    """Start tests/trainer.py with the current environment (TUIMON_RUNTIME_DIR included)."""
    return subprocess.Popen(
        [sys.executable, str(TRAINER), "--dir", str(run_dir), "--run", name, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )


def read_until(proc: subprocess.Popen[str], prefix: str, timeout: float = 60.0) -> str:
    """Read the trainer's stdout until a line starts with ``prefix``; return that line."""
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(
                f"trainer exited before {prefix!r}: {proc.stderr.read() if proc.stderr else ''}"
            )
        if line.startswith(prefix):
            return line.strip()
    raise AssertionError(f"no {prefix!r} line within {timeout}s")


def wait_live(pid: int, timeout: float = 30.0) -> discovery.ConnectionInfo:
    """The connection info of the live run of process ``pid``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for info in discovery.live_runs(clean=False):
            if info.pid == pid:
                return info
        time.sleep(0.05)
    raise AssertionError(f"process {pid} published no connection file within {timeout}s")


async def follow(
    info: discovery.ConnectionInfo, *, until_end: bool = True, seconds: float = 60.0
) -> tuple[RunState, list[int], list[str]]:
    """Run a real LiveSource into a RunState; returns the state, every seq emitted (in order) and the statuses."""
    state = RunState()
    seqs: list[int] = []
    statuses: list[str] = []

    def emit(update: SourceUpdate) -> None:
        if update.reset:
            state.reset()
        if update.status:
            statuses.append(update.status)
        seqs.extend(r.seq for r in update.records if r.seq)
        state.note_malformed(update.malformed)
        state.apply_many(update.records)

    task = asyncio.ensure_future(LiveSource(info, follow_restarts=False).run(emit))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not task.done():
        if until_end and state.ended:
            break
        await asyncio.sleep(0.05)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    return state, seqs, statuses
