"""Live-command latency: from the viewer's send to the applied ack, on a real training process paced to 10 and to
1,000 steps a second.

    python tests/benchmarks/bench_viewer_commands.py [--commands 20]

For each rate it starts ``tests/command_trainer.py`` in a subprocess, sends ``--commands`` ``set_lr`` commands one
after the other through the real :class:`~tuimon.control.CommandClient` (signed, over the DEALER/ROUTER pair) and
times each from ``submit`` to the ``queued`` ack (the agent thread checked it) and to the ``applied`` ack (the
training thread applied it at its next optimizer step and the agent thread answered). Then, on a fresh run, the
real app under Pilot: from the ``enter`` that sends the dialog's value to the applied ack in the app's command log. A command waits for the next
step boundary, so the step period of the same run is printed beside the figures as their baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: cmdtools

from cmdtools import Trainer  # noqa: E402

from tuimon.control import CommandClient, CommandRequest  # noqa: E402


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


async def _measure(trainer: Trainer, n: int) -> tuple[list[float], list[float]]:
    client = CommandClient(trainer.info, timeout=10.0)
    queued: list[float] = []
    applied: list[float] = []
    try:
        for i in range(n):
            t0 = time.perf_counter()
            cmd = client.submit(CommandRequest("set_lr", {"value": 0.01 if i % 2 else 0.011}))
            await client.wait(cmd, until=("queued",), timeout=30)
            queued.append(time.perf_counter() - t0)
            await client.wait(cmd, until=("applied",), timeout=30)
            if cmd.status != "applied":
                raise RuntimeError(f"command {i} ended {cmd.status}: {cmd.reason}")
            applied.append(time.perf_counter() - t0)
            await asyncio.sleep(0.05 + (i % 5) * 0.013)  # land at different points of the step period
        stop = client.submit(CommandRequest("stop", {}))
        await client.wait(stop, until=("applied",), timeout=30)
    finally:
        client.close()
    return queued, applied


async def _measure_keys(trainer: Trainer, n: int) -> list[float]:
    """Key press to applied in the real app (Pilot): ``l`` and the value typed, then from ``enter`` until the app's
    command log says applied."""
    from tuimon.app import make_app
    from tuimon.source import LiveSource

    app = make_app(LiveSource(trainer.info, follow_restarts=False))
    out: list[float] = []
    async with app.run_test(size=(100, 30)) as pilot:
        while app.state.lr() is None:
            await pilot.pause(0.05)
        for i in range(n):
            await pilot.press("l", *("0.01" if i % 2 else "0.011"))
            t0 = time.perf_counter()  # the key that sends it
            await pilot.press("enter")
            while len(app.state.commands.applied) <= i:
                await asyncio.sleep(0.001)
            out.append(time.perf_counter() - t0)
            await pilot.pause(0.05 + (i % 5) * 0.013)
        await pilot.press("S", "enter")
        while not app.state.ended:
            await pilot.pause(0.05)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--commands", type=int, default=20)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rt = Path(tmp) / "rt"
        rt.mkdir(mode=0o700)
        os.environ["TUIMON_RUNTIME_DIR"] = str(rt)
        rows = []
        for rate in (10.0, 1000.0):
            trainer = Trainer(
                Path(tmp), "--rate", str(rate), "--print-every", "1000000", name=f"bench-{rate:g}"
            )
            try:
                time.sleep(1.0)  # warm: the agent's first drains and the hello are out of the way
                queued, applied = asyncio.run(_measure(trainer, a.commands))
                trainer.final()
            finally:
                trainer.stop()
            trainer = Trainer(
                Path(tmp), "--rate", str(rate), "--print-every", "1000000", name=f"keys-{rate:g}"
            )
            try:
                time.sleep(1.0)
                keys = asyncio.run(_measure_keys(trainer, max(5, a.commands // 2)))
                trainer.final()
            finally:
                trainer.stop()
            rows.append((rate, queued, applied, keys))
    print(f"set_lr, send → ack (ms, {a.commands} commands per rate) and key press → applied in the app (ms)")
    print(
        f"{'steps/s':>8} {'step ms':>8} {'queued med':>11} {'queued p95':>11} {'applied med':>12}"
        f" {'applied p95':>12} {'keys med':>9} {'keys p95':>9}"
    )
    for rate, queued, applied, keys in rows:
        print(
            f"{rate:>8g} {1000 / rate:>8.1f} {statistics.median(queued) * 1e3:>11.2f} {_pct(queued, 0.95) * 1e3:>11.2f}"
            f" {statistics.median(applied) * 1e3:>12.2f} {_pct(applied, 0.95) * 1e3:>12.2f}"
            f" {statistics.median(keys) * 1e3:>9.1f} {_pct(keys, 0.95) * 1e3:>9.1f}"
        )


if __name__ == "__main__":
    main()
