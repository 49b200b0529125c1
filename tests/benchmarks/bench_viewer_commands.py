"""Live-command latency: from the viewer's send to the applied ack, on a real training process paced to 10 and to
1,000 steps a second.

    python tests/benchmarks/bench_viewer_commands.py [--commands 20]

For each rate it starts ``tests/command_trainer.py`` in a subprocess, sends ``--commands`` ``set_lr`` commands one
after the other through the real :class:`~tuimon.control.CommandClient` (signed, over the DEALER/ROUTER pair) and
times each from ``submit`` to the ``queued`` ack (the agent thread checked it) and to the ``applied`` ack (the
training thread applied it at its next optimizer step and the agent thread answered). A command waits for the next
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
                final = trainer.final()
            finally:
                trainer.stop()
            rows.append((rate, queued, applied, final["step"]))
    print(
        f"set_lr, {a.commands} commands per rate, send → ack (ms); a command waits for the next optimizer step"
    )
    print(
        f"{'steps/s':>8} {'step ms':>8} {'queued med':>11} {'queued p95':>11} {'applied med':>12} {'applied p95':>12}"
    )
    for rate, queued, applied, _ in rows:
        print(
            f"{rate:>8g} {1000 / rate:>8.1f} {statistics.median(queued) * 1e3:>11.2f} {_pct(queued, 0.95) * 1e3:>11.2f}"
            f" {statistics.median(applied) * 1e3:>12.2f} {_pct(applied, 0.95) * 1e3:>12.2f}"
        )


if __name__ == "__main__":
    main()
