"""Shared helpers for the tests that cross a process boundary (not fixtures: plain functions)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


class CommandClient:
    """A real DEALER on a live run's ROUTER that signs live commands with the run's key (its connection file).

    Args:
        info: The run's connection info.
        sender: The sender id the commands carry.
        key: The signing key (default: the connection file's).
    """

    def __init__(self, info: discovery.ConnectionInfo, *, sender: str = "test", key: bytes | None = None) -> None:
        import zmq

        from tuimon_agent import commands

        self.key = key if key is not None else commands.decode_key(info.key)
        self.sender = sender
        self.seq = 0
        self._ctx = zmq.Context()
        self.sock = self._ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(info.router)
        self.acks: list[dict] = []

    def make(self, name: str, args: dict | None = None, **overrides: object) -> dict:
        """A signed command with the next seq; ``overrides`` replace fields after signing (to tamper)."""
        from tuimon_agent import commands

        self.seq += 1
        cmd = commands.make_command(self.key, name, args or {}, sender=self.sender, seq=self.seq)
        cmd.update(overrides)
        return cmd

    def send_cmd(self, cmd: dict) -> None:
        """Send a command's fields as a ``command`` request."""
        from tuimon_agent import protocol

        self.sock.send(protocol.encode_request("command", **cmd))

    def send(self, name: str, args: dict | None = None, **overrides: object) -> dict:
        """Sign and send a command; returns its fields."""
        cmd = self.make(name, args, **overrides)
        self.send_cmd(cmd)
        return cmd

    def recv(self, timeout: float = 20.0) -> dict:
        """The next ack's payload."""
        from tuimon_agent import protocol

        if not self.sock.poll(int(timeout * 1000)):
            raise AssertionError(f"no ack within {timeout}s")
        rec = protocol.decode(self.sock.recv())
        assert rec.kind == "ack", rec
        self.acks.append(rec.data)
        return rec.data

    def wait(self, cmd_id: str, status: str, timeout: float = 30.0) -> dict:
        """Read acks until the one for ``cmd_id`` with ``status`` (failing on a rejection of it)."""
        deadline = time.monotonic() + timeout
        for ack in self.acks:
            if ack.get("id") == cmd_id and ack.get("status") == status:
                return ack
        while time.monotonic() < deadline:
            ack = self.recv(max(0.1, deadline - time.monotonic()))
            if ack.get("id") == cmd_id and ack.get("status") == status:
                return ack
            if ack.get("id") == cmd_id and ack.get("status") == "rejected":
                raise AssertionError(f"command rejected: {ack}")
        raise AssertionError(f"no {status} ack for {cmd_id} within {timeout}s")

    def close(self) -> None:
        """Close the socket and its context."""
        self.sock.close(0)
        self._ctx.term()


async def until(pilot: Any, condition: Callable[[], Any], *, timeout: float = 60.0, what: str = "") -> None:
    """Let the app run until ``condition()`` is true (checked after each idle pause), or fail after ``timeout``
    seconds: a generous bound, so that a loaded machine is slow, never red."""
    deadline = time.monotonic() + timeout
    while True:
        await pilot.pause()
        try:
            if condition():
                return
        except Exception:  # a widget not mounted yet, a query that finds nothing yet
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached after {timeout}s: {what or condition}")
        await pilot.pause(0.02)
