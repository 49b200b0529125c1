"""Helpers for the live-command tests (plain functions): start tests/command_trainer.py, read its lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from helpers import wait_live

from tuimon_agent import discovery, protocol
from tuimon_agent.runfile import RunFileReader

HERE = Path(__file__).resolve().parent
COMMAND_TRAINER = HERE / "command_trainer.py"


class Trainer:
    """A running tests/command_trainer.py: its process, run id, run file and connection info."""

    def __init__(self, run_dir: Path, *args: str, name: str = "cmd") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(COMMAND_TRAINER), "--dir", str(run_dir), "--run", name, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
        line = self.line("RUN ")
        _, self.run_id, self.run_file = line.split()
        self.info: discovery.ConnectionInfo = wait_live(self.proc.pid)
        self.name = name

    def line(self, prefix: str, timeout: float = 60.0) -> str:
        """Read stdout until a line starts with ``prefix``; return it."""
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise AssertionError(f"trainer exited before {prefix!r}: {err}")
            if line.startswith(prefix):
                return line.strip()
        raise AssertionError(f"no {prefix!r} line within {timeout}s")

    def final(self, timeout: float = 60.0) -> dict[str, Any]:
        """Wait for the ``FINAL`` line (the loop ended) and the process; returns the optimizer's final settings."""
        final = json.loads(self.line("FINAL ", timeout)[len("FINAL ") :])
        assert self.proc.wait(timeout) == 0
        return final

    def suspend(self) -> None:
        """SIGSTOP the trainer and wait until the kernel says it is stopped (a stuck run: alive, silent)."""
        self.proc.send_signal(signal.SIGSTOP)
        stat = Path(f"/proc/{self.proc.pid}/stat")
        while stat.read_text().rpartition(")")[2].split()[0] != "T":
            time.sleep(0.005)

    def resume(self) -> None:
        """SIGCONT a suspended trainer."""
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """End the process if it is still running."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


def file_records(path: str | Path) -> list[protocol.Record]:
    """Every record of a run file."""
    with RunFileReader(path) as r:
        return list(r.records())


def scalar_after(path: str | Path, name: str, step: int) -> list[tuple[int, float]]:
    """``(step, value)`` of a scalar from the run file, from ``step`` on."""
    out = []
    for rec in file_records(path):
        if rec.kind == protocol.METRICS and rec.step is not None and rec.step >= step:
            v = protocol.values_of(rec).get(name)
            if v is not None:
                out.append((rec.step, v))
    return out


def tuimon(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``python -m tuimon ARGS`` in a subprocess (the real CLI)."""
    return subprocess.run(
        [sys.executable, "-m", "tuimon", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
    )
