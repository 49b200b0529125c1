"""Viewer ingest benchmark: how fast encoded records become view state, and how much memory that state holds.

Run ``python tests/benchmarks/bench_ingest.py`` (optionally ``--records N``); it prints a table. Each measurement is a
function returning rows, so further measurements (e.g. the CPU cost of an open Textual screen) can be added next to
them and to :func:`main`.

* :func:`bench_decode_apply`: records/s for ``protocol.decode`` then ``RunState.apply_many`` on encoded ``metrics``
  records with 4 and 8 values, against a bare ``msgpack.unpackb`` loop over the same bodies (the floor no decoder
  beats). Best of 5 interleaved runs, one core.
* :func:`bench_memory`: tracemalloc current and peak while a ``RunState`` ingests 1M such records, with the current
  size after the first 10% to show that the state does not grow with the run. tracemalloc slows every allocation,
  so this part takes about a minute; ``--memory-records`` shortens it.
"""

from __future__ import annotations

import argparse
import gc
import random
import time
import tracemalloc
from collections.abc import Callable, Iterator

import msgpack

from tuimon.state import RunState
from tuimon_agent import protocol

NAMES = ["loss", "acc", "grad_norm", "opt/lr", "opt/momentum", "opt/weight_decay", "tokens_per_s", "ppl"]

Row = tuple[str, str, str]


def encoded_metrics(n: int, n_values: int, *, first_seq: int = 1) -> Iterator[bytes]:
    """``n`` encoded ``metrics`` records with ``n_values`` float values each, steps and seqs consecutive."""
    rng = random.Random(n_values)
    names = NAMES[:n_values]
    for i in range(first_seq, first_seq + n):
        values = {name: rng.random() for name in names}
        yield protocol.encode(protocol.Record(protocol.METRICS, i, i, 1.7e9 + i * 1e-3, {"values": values}))


def _best_rates(n: int, fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Best records/s of each function; the functions take turns, so a load change on the machine hits all alike."""
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            gc.collect()
            t = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t)
    return [n / b for b in best]


def bench_decode_apply(n: int = 200_000, *, repeats: int = 5) -> list[Row]:
    """Records/s for decode + apply of metrics records with 4 and 8 values, with ratios to bare ``msgpack.unpackb``.

    Args:
        n: Records per measurement.
        repeats: Best of this many runs.

    Returns:
        Table rows ``(case, records/s, vs msgpack.unpackb)``.
    """
    rows: list[Row] = []
    unpackb, decode = msgpack.unpackb, protocol.decode
    for n_values in (4, 8):
        bodies = list(encoded_metrics(n, n_values))
        decoded = [decode(b) for b in bodies]

        def bare(bodies: list[bytes] = bodies) -> None:
            for b in bodies:
                unpackb(b)

        def decode_only(bodies: list[bytes] = bodies) -> None:
            for b in bodies:
                decode(b)

        def apply_only(decoded: list[protocol.Record] = decoded) -> None:
            RunState().apply_many(decoded)

        def decode_apply(bodies: list[bytes] = bodies) -> None:
            RunState().apply_many(decode(b) for b in bodies)

        cases = [
            ("msgpack.unpackb (baseline)", bare),
            ("protocol.decode", decode_only),
            ("RunState.apply_many (decoded)", apply_only),
            ("decode + apply_many", decode_apply),
        ]
        rates = _best_rates(n, [fn for _, fn in cases], repeats)
        for (label, _), rate in zip(cases, rates, strict=True):
            rows.append((f"{n_values} values: {label}", f"{rate:,.0f}", f"{rate / rates[0]:.2f}x"))
    return rows


def bench_memory(n: int = 1_000_000, *, n_values: int = 8) -> list[Row]:
    """tracemalloc figures while a RunState decodes and ingests ``n`` encoded metrics records (the bodies are made
    beforehand and not counted).

    Args:
        n: Records ingested.
        n_values: Values per record.

    Returns:
        Table rows ``(case, value, note)``.
    """
    first = max(1, n // 10)
    bodies = list(encoded_metrics(n, n_values))  # made before tracing starts, so they are not counted
    decode = protocol.decode
    gc.collect()
    tracemalloc.start()
    try:
        state = RunState()
        t = time.perf_counter()
        state.apply_many(decode(bodies[i]) for i in range(first))
        early, _ = tracemalloc.get_traced_memory()
        state.apply_many(decode(bodies[i]) for i in range(first, n))
        elapsed = time.perf_counter() - t
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del bodies
    held = sum(s.nbytes() for s in state.train.values())
    mib = 1024 * 1024
    assert state.received == n and state.gaps == 0
    return [
        (f"memory after {first:,} records", f"{early / mib:.2f} MiB", "tracemalloc current"),
        (f"memory after {n:,} records", f"{current / mib:.2f} MiB", "tracemalloc current"),
        (
            f"peak over {n:,} records",
            f"{peak / mib:.2f} MiB",
            f"{n_values} series; {elapsed:.0f} s under tracemalloc",
        ),
        ("series buffers", f"{held / mib:.2f} MiB", f"{len(state.train)} x Series.nbytes()"),
    ]


def print_table(title: str, rows: list[Row], header: Row) -> None:
    """Print rows as an aligned plain-text table."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    line = "  ".join("-" * w for w in widths)
    print(f"\n{title}\n{line}")
    print(f"{header[0]:<{widths[0]}}  {header[1]:>{widths[1]}}  {header[2]:<{widths[2]}}")
    print(line)
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}")


_STREAMER = """
import sys, time, tuimon_agent
n = int(sys.argv[1])
mon = tuimon_agent.watch(run="bench-stream", dir=sys.argv[2], queue_size=10**7)
print(mon.run_id, flush=True)
sys.stdin.readline()  # the viewer is connected: go
t0 = time.perf_counter()
for i in range(n):
    mon.log(loss=1.0 / (i + 1), acc=0.5, lr=1e-3, gnorm=float(i % 7))
mon.close()
print(f"{n / (time.perf_counter() - t0):.0f} {mon.dropped}", flush=True)
"""


def bench_live(n: int = 200_000) -> list[Row]:
    """The whole wire: a real agent in another process logs ``n`` records as fast as it can; a real LiveSource
    (ZeroMQ SUB + history) feeds a RunState here. Reports records/s end to end and what was lost (gaps, drops)."""
    import asyncio
    import subprocess
    import sys
    import tempfile

    from tuimon.source import LiveSource, SourceUpdate
    from tuimon_agent import discovery

    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [sys.executable, "-c", _STREAMER, str(n), tmp],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdin is not None
        run_id = proc.stdout.readline().strip()
        info = next(i for i in discovery.live_runs() if i.run_id == run_id)
        state = RunState()
        times: list[float] = []

        def emit(update: SourceUpdate) -> None:
            state.note_malformed(update.malformed)
            state.apply_many(update.records)
            if update.status == "live" and not times:
                proc.stdin.write("go\n")
                proc.stdin.flush()
                times.append(time.perf_counter())

        async def follow() -> None:
            task = asyncio.ensure_future(LiveSource(info, follow_restarts=False).run(emit))
            while not state.ended and not task.done():
                await asyncio.sleep(0.01)
            times.append(time.perf_counter())
            task.cancel()

        asyncio.run(follow())
        agent_rate, dropped = proc.stdout.readline().split()
        proc.wait()
    got = state.train["loss"].count
    return [
        (
            f"agent: log() → records/s on its thread ({n:,} records)",
            f"{float(agent_rate):,.0f}",
            f"dropped {dropped}",
        ),
        (
            "agent → ZeroMQ → LiveSource → RunState",
            f"{got / (times[-1] - times[0]):,.0f}",
            f"{got:,} of {n:,} records",
        ),
        ("lost on the wire", f"{state.gaps}", f"gaps {state.gaps}, malformed {state.malformed}"),
    ]


def main(argv: list[str] | None = None) -> None:
    """Run every measurement and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000, help="records per throughput measurement")
    parser.add_argument(
        "--memory-records", type=int, default=1_000_000, help="records for the memory measurement"
    )
    args = parser.parse_args(argv)
    print_table(
        "decode + apply throughput (one core, best of 5)",
        bench_decode_apply(args.records),
        ("case", "records/s", "vs unpackb"),
    )
    print_table("view-state memory", bench_memory(args.memory_records), ("case", "value", "note"))
    print_table("live stream end to end (two processes)", bench_live(), ("case", "records/s", "note"))


if __name__ == "__main__":
    main()
