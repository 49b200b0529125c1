"""A real training process with the agent, real ZeroMQ clients, the real run file, signals and kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import follow, read_until, start_trainer, wait_live

from tuimon_agent import discovery, protocol
from tuimon_agent.runfile import RunFileReader

# Real trainers in subprocesses or long real runs: in the full suite, not in -m "not slow".
pytestmark = pytest.mark.slow


def _file_records(path: str | Path) -> list[protocol.Record]:
    with RunFileReader(path) as r:
        return list(r.records())


def _run_file(proc: subprocess.Popen[str]) -> str:
    return read_until(proc, "RUN ").split()[2]


async def test_live_client_gets_every_record_in_order_and_the_file_holds_them(tmp_path: Path) -> None:
    proc = start_trainer(tmp_path, "--steps", "300", "--pace", "0.005")
    run_file = _run_file(proc)
    info = wait_live(proc.pid)
    state, seqs, statuses = await follow(info)
    assert proc.wait(60) == 0
    recs = _file_records(run_file)
    assert [r.seq for r in recs] == list(range(1, len(recs) + 1))
    assert state.ended and state.last_seq == len(recs) and state.gaps == 0
    assert state.received == len(recs)  # every record once: duplicates at the seam were dropped, none missing
    assert sorted(set(seqs)) == list(range(1, len(recs) + 1))
    assert state.train["loss"].count == 300 and state.step == 300
    assert statuses[0] == "loading" and "live" in statuses and statuses[-1] == "ended"


async def test_a_late_joiner_gets_the_full_history_with_no_gap_or_duplicate(tmp_path: Path) -> None:
    proc = start_trainer(tmp_path, "--steps", "600", "--pace", "0.005")
    run_file = _run_file(proc)
    read_until(proc, "STEP 200")  # join well after the start, while records keep coming
    info = wait_live(proc.pid)
    state, seqs, _ = await follow(info)
    assert proc.wait(60) == 0
    n = len(_file_records(run_file))
    assert state.gaps == 0 and state.received == n and state.last_seq == n
    assert [s for s in dict.fromkeys(seqs)] == sorted(set(seqs)) == list(range(1, n + 1))
    assert state.train["loss"].count == 600 and state.eval["val_loss"].count == 30


async def test_snapshot_serves_the_history_when_the_file_cannot_be_read(tmp_path: Path) -> None:
    proc = start_trainer(tmp_path, "--steps", "400", "--pace", "0.005")
    _run_file(proc)
    read_until(proc, "STEP 150")
    info = wait_live(proc.pid)
    info.run_file = str(tmp_path / "not-readable-from-here.sqlite")
    state, _, _ = await follow(info)
    assert proc.wait(60) == 0
    assert state.gaps == 0 and state.train["loss"].count == 400 and state.hello["name"] == "e2e"


def test_kill_9_of_a_viewer_does_not_disturb_training(tmp_path: Path) -> None:
    proc = start_trainer(tmp_path, "--steps", "400", "--pace", "0.005")
    run_file = _run_file(proc)
    info = wait_live(proc.pid)
    viewer = subprocess.Popen(
        [sys.executable, "-m", "tuimon", "tail", info.run_id, "--json"], stdout=subprocess.PIPE, text=True
    )
    assert viewer.stdout is not None and viewer.stdout.readline().startswith("{")
    viewer.send_signal(signal.SIGKILL)
    viewer.wait()
    assert proc.wait(60) == 0
    recs = _file_records(run_file)
    assert recs[-1].kind == protocol.END and recs[-1].data["dropped"] == 0
    assert len([r for r in recs if r.kind == protocol.METRICS]) == 400


def test_kill_9_of_the_trainer_keeps_everything_up_to_the_last_commit(tmp_path: Path) -> None:
    proc = start_trainer(tmp_path, "--steps", "100000", "--pace", "0.002", "--commit", "0.1")
    run_file = _run_file(proc)
    read_until(proc, "STEP 300")
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    recs = _file_records(run_file)
    steps = [r.step for r in recs if r.kind == protocol.METRICS]
    assert steps == list(range(1, len(steps) + 1))  # a prefix with no hole
    assert len(steps) >= 300
    assert recs[-1].kind != protocol.END
    # The viewer side: a dead run's connection file is cleaned up and the file replays.
    assert all(i.pid != proc.pid for i in discovery.live_runs())
    out = subprocess.run(
        [sys.executable, "-m", "tuimon", "tail", run_file, "-n", "1"], capture_output=True, text=True
    )
    assert out.returncode == 0 and f"step={steps[-1]}" in out.stdout


@pytest.mark.parametrize(("sig", "reason"), [(signal.SIGTERM, "signal"), (signal.SIGINT, "interrupted")])
def test_sigterm_and_sigint_flush_the_run_file(tmp_path: Path, sig: signal.Signals, reason: str) -> None:
    proc = start_trainer(tmp_path, "--steps", "100000", "--pace", "0.002", "--commit", "5")
    run_file = _run_file(proc)
    read_until(proc, "STEP 100")
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    last_step = max([100] + [int(line.split()[1]) for line in out.splitlines() if line.startswith("STEP")])
    recs = _file_records(run_file)
    assert recs[-1].kind == protocol.END and recs[-1].data["reason"] == reason
    steps = [r.step for r in recs if r.kind == protocol.METRICS]
    assert steps == list(range(1, last_step + 1))  # everything logged, even with a 5 s commit interval
    if sig == signal.SIGTERM:
        assert proc.returncode == -signal.SIGTERM  # the default disposition still happens after the flush


def test_normal_exit_without_close_flushes_at_exit(tmp_path: Path) -> None:
    proc = start_trainer(tmp_path, "--steps", "50", "--no-close", "--commit", "30")
    run_file = _run_file(proc)
    assert proc.wait(60) == 0
    recs = _file_records(run_file)
    assert recs[-1].kind == protocol.END and recs[-1].data["reason"] == "closed"
    assert len([r for r in recs if r.kind == protocol.METRICS]) == 50


async def test_the_viewer_follows_a_restarted_trainer(tmp_path: Path) -> None:
    import asyncio

    from tuimon.source import LiveSource, SourceUpdate

    first = start_trainer(tmp_path, "--steps", "100000", "--pace", "0.01", name="restart")
    _run_file(first)
    info = wait_live(first.pid)
    updates: list[SourceUpdate] = []
    task = asyncio.ensure_future(LiveSource(info).run(updates.append))
    await asyncio.sleep(2.0)
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = start_trainer(tmp_path, "--steps", "100000", "--pace", "0.01", name="restart")
    second_id = _run_file(second) and wait_live(second.pid).run_id
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(u.reset for u in updates):
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    task.cancel()
    second.send_signal(signal.SIGKILL)
    second.wait()
    statuses = [u.status for u in updates if u.status]
    assert "ended" in statuses and "reconnecting" in statuses
    after = updates[[i for i, u in enumerate(updates) if u.reset][0] :]
    hello = [r for u in after for r in u.records if r.kind == protocol.HELLO]
    assert hello and hello[0].data["run_id"] == second_id
    assert os.path.exists(tmp_path)
