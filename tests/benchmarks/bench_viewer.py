"""How much CPU the viewer costs while a run streams 1,000 metrics records a second.

Not a pytest test: a script that prints a table. It runs the real app (headless ``run_test``: layout and every widget's
render run as on a terminal; only the final write of escape codes to a terminal is skipped) fed by a source that
emits what a :class:`~tuimon.source.LiveSource` would (decoded record batches every 50 ms, a heartbeat a second),
and the same source feeding only a :class:`~tuimon.state.RunState` as the baseline. CPU is ``time.process_time()``
deltas over the measured window, shown as % of one core.

    python tests/benchmarks/bench_viewer.py [--seconds 10] [--rate 1000] [--size 100x30]

Target: under 15% of one core with the screen open.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from tuimon.app import make_app
from tuimon.source import Source, SourceUpdate
from tuimon.state import RunState
from tuimon.widgets import MetricChart
from tuimon_agent import protocol

BATCH_SECONDS = 0.05  # what LiveSource gathers per update


class SyntheticSource(Source):
    """A training run at ``rate`` steps a second: loss, acc and three optimizer values per step, an eval every
    500 steps, a heartbeat every second; record bodies are encoded and decoded as on the wire."""

    label = "bench"

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.sent = 0

    async def run(self, emit: Callable[[SourceUpdate], None]) -> None:
        seq = step = 0
        t0 = time.time()

        def record(kind: str, step: int | None, data: dict) -> protocol.Record:
            nonlocal seq
            seq += 1
            return protocol.decode(protocol.encode(protocol.Record(kind, seq, step, time.time(), data)))

        emit(
            SourceUpdate([record(protocol.HELLO, None, {"run_id": "bench", "name": "bench"})], status="live")
        )
        start = time.monotonic()
        next_beat = start + 1.0
        while True:
            await asyncio.sleep(BATCH_SECONDS)
            due = int((time.monotonic() - start) * self.rate) - step
            batch = []
            for _ in range(due):
                step += 1
                loss = 2.0 * math.exp(-step / 3000) + 0.05 * math.sin(step)
                values = {
                    "loss": loss,
                    "acc": 1 - loss / 2,
                    "opt/lr": 1e-3,
                    "opt/momentum": 0.9,
                    "opt/weight_decay": 0.0,
                }
                batch.append(record(protocol.METRICS, step, {"values": values}))
                if step % 500 == 0:
                    batch.append(
                        record(protocol.EVAL, step, {"values": {"val_loss": loss * 1.1, "val_acc": 0.9}})
                    )
            if time.monotonic() >= next_beat:
                next_beat += 1.0
                beat = protocol.Record(protocol.HEARTBEAT, seq, step, t0 + step, {"dropped": 0, "queued": 0})
                batch.append(protocol.decode(protocol.encode(beat)))
            self.sent += due
            emit(SourceUpdate(batch))


@dataclass
class Result:
    name: str
    records: int
    wall: float
    cpu: float
    note: str = ""

    @property
    def percent(self) -> float:
        return 100.0 * self.cpu / self.wall


async def bench_state_only(seconds: float, rate: int) -> Result:
    """The baseline: the source and a RunState, no app."""
    state = RunState()
    source = SyntheticSource(rate)
    task = asyncio.create_task(source.run(lambda u: state.apply_many(u.records)))
    await asyncio.sleep(1.0)  # warm up
    sent, w0, c0 = source.sent, time.monotonic(), time.process_time()
    await asyncio.sleep(seconds)
    result = Result(
        "RunState only (baseline)", source.sent - sent, time.monotonic() - w0, time.process_time() - c0
    )
    task.cancel()
    return result


async def bench_app(seconds: float, rate: int, size: tuple[int, int]) -> Result:
    """The real app with the overview open, headless."""
    source = SyntheticSource(rate)
    app = make_app(source)
    async with app.run_test(size=size) as pilot:
        await pilot.pause(1.0)  # warm up
        chart = app.overview.query_one(MetricChart)
        sent, repaints, renders = source.sent, app.repaints, chart.renders
        w0, c0 = time.monotonic(), time.process_time()
        await asyncio.sleep(seconds)
        wall, cpu = time.monotonic() - w0, time.process_time() - c0
        note = (
            f"{(app.repaints - repaints) / wall:.1f} repaints/s, {(chart.renders - renders) / wall:.1f} chart builds/s,"
            f" step {app.state.step:,}"
        )
        return Result(f"app, overview open ({size[0]}x{size[1]})", source.sent - sent, wall, cpu, note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=1000, help="metrics records per second")
    parser.add_argument("--size", default="100x30", help="terminal size, WxH")
    args = parser.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    base = asyncio.run(bench_state_only(args.seconds, args.rate))
    app = asyncio.run(bench_app(args.seconds, args.rate, (w, h)))
    print(f"{args.rate:,} metrics records/s for {args.seconds:g} s; CPU as % of one core (time.process_time)")
    print(f"{'':<32} {'records':>9} {'wall s':>7} {'cpu s':>7} {'% core':>7}")
    for r in (base, app):
        print(f"{r.name:<32} {r.records:>9,} {r.wall:>7.2f} {r.cpu:>7.2f} {r.percent:>6.1f}%  {r.note}")
    ratio = app.percent / base.percent if base.percent else float("inf")
    if args.rate == 1000:
        verdict = "OK" if app.percent < 15 else "OVER"
        print(f"app / baseline: {ratio:.1f}x; app {app.percent:.1f}% of a core vs target < 15%: {verdict}")
    else:
        kept_up = "kept up" if app.records >= 0.98 * base.records else "fell behind"
        print(
            f"app / baseline: {ratio:.1f}x; the app {kept_up} ({app.records:,} of {base.records:,} records)"
        )


if __name__ == "__main__":
    main()
