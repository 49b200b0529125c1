"""What live commands cost the training loop, and how long a command takes from the socket to the optimizer.

    python tests/benchmarks/bench_commands.py            # all three
    python tests/benchmarks/bench_commands.py ddp        # only the torchrun part

1. The step pre-hook with nothing queued, one process: a tiny MLP's SGD step with and without the controller's
   hook, as a ratio of the same run's plain step (the worst case: the smaller the step, the larger the share).
2. Two gloo ranks under torchrun: the same DDP step with and without the per-step broadcast of the (empty)
   command batch, as a ratio.
3. Latency, DEALER send → ``applied`` ack received, for a loop paced at 10 and at 1,000 steps/s (median and max
   of 20 commands each). The command waits for the next optimizer step, so at 10 steps/s about half a step
   (50 ms) is expected on top of the agent's tick.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from pathlib import Path

import torch

HERE = Path(__file__).resolve()


def _mlp() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def _steps_per_second(model: torch.nn.Module, opt: torch.optim.Optimizer, n: int) -> float:
    x, y = torch.randn(16, 32), torch.randn(16, 1)
    t0 = time.perf_counter()
    for _ in range(n):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return (time.perf_counter() - t0) / n


def bench_hook() -> None:
    """Part 1: the pre-hook with an empty queue, as a share of a tiny step."""
    from tuimon_agent.control import Controller

    torch.set_num_threads(1)
    plain, hooked = [], []
    for _ in range(5):  # interleaved, so drift hits both alike
        model, opt = _mlp()
        plain.append(_steps_per_second(model, opt, 2000))
        model, opt = _mlp()
        ctl = Controller(opt, step_of=lambda: 0)
        opt.register_step_pre_hook(ctl.pre_step)
        hooked.append(_steps_per_second(model, opt, 2000))
    p, h = statistics.median(plain), statistics.median(hooked)
    model, opt = _mlp()
    ctl = Controller(opt, step_of=lambda: 0)
    n = 200_000
    call = timeit.timeit(lambda: ctl.pre_step(opt, (), {}), number=n) / n
    empty = timeit.timeit(lambda: None, number=n) / n
    print(
        f"1. pre-hook, nothing queued: one call {(call - empty) * 1e6:.2f} µs; a tiny MLP step {p * 1e6:.1f} µs, "
        f"with the hook {h * 1e6:.1f} µs, ratio {h / p:.3f}"
    )


def _ddp_worker() -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from tuimon_agent.control import Controller
    from tuimon_agent.control_ddp import DistSync

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    plain: list[float] = []
    synced: list[float] = []
    for _ in range(4):  # alternated, so drift and other load hit both alike
        for label in ("plain", "sync"):
            model, opt = _mlp()
            ddp = DDP(model)
            if label == "sync":
                ctl = Controller(opt, step_of=lambda: 0, sync=DistSync(), rank=dist.get_rank())
                opt.register_step_pre_hook(ctl.pre_step)
            _steps_per_second(ddp, opt, 50)  # warm up (and the handshake)
            (synced if label == "sync" else plain).append(_steps_per_second(ddp, opt, 500))
    if dist.get_rank() == 0:
        p, s = statistics.median(plain), statistics.median(synced)
        print(
            f"2. torchrun 2 gloo ranks: DDP step {p * 1e6:.0f} µs, with the command broadcast {s * 1e6:.0f} µs, "
            f"ratio {s / p:.3f} (medians of 4 alternated runs of 500 steps)",
            flush=True,
        )
    dist.destroy_process_group()


def bench_ddp() -> None:
    """Part 2: torchrun this file as two ranks."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={port}",
            str(HERE),
        ]
        + ["_ddp"],
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def bench_latency() -> None:
    """Part 3: DEALER send → applied ack, at 10 and 1,000 steps/s."""
    sys.path.insert(0, str(HERE.parents[1]))
    from helpers import CommandClient

    import tuimon_agent
    from tuimon_agent import discovery

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        os.environ["TUIMON_RUNTIME_DIR"] = str(Path(d) / "rt")
        Path(d, "rt").mkdir(mode=0o700)
        for rate in (10, 1000):
            model, opt = _mlp()
            mon = tuimon_agent.watch(model, opt, run="lat", dir=d, stats_every=0, hist_every=0, alerts=False)
            (info,) = [i for i in discovery.live_runs(clean=False) if i.run_id == mon.run_id]
            stop = threading.Event()

            def train() -> None:
                x, y = torch.randn(16, 32), torch.randn(16, 1)
                period = 1.0 / rate  # noqa: B023
                nxt = time.perf_counter()
                while not stop.is_set():  # noqa: B023
                    opt.zero_grad()  # noqa: B023
                    loss = torch.nn.functional.mse_loss(model(x), y)  # noqa: B023
                    loss.backward()
                    opt.step()  # noqa: B023
                    mon.log(loss=loss)  # noqa: B023
                    nxt += period
                    time.sleep(max(0.0, nxt - time.perf_counter()))

            t = threading.Thread(target=train)
            t.start()
            client = CommandClient(info, sender="bench")
            lat = []
            for i in range(20):
                t0 = time.perf_counter()
                c = client.send("set_lr", {"value": 0.01 + i * 1e-4})
                client.wait(c["id"], "applied")
                lat.append(time.perf_counter() - t0)
            stop.set()
            t.join()
            client.close()
            mon.close()
            print(
                f"3. latency at {rate} steps/s: median {statistics.median(lat) * 1e3:.1f} ms, "
                f"max {max(lat) * 1e3:.1f} ms (send → applied ack, 20 commands)"
            )


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    if which == "_ddp":
        _ddp_worker()
    else:
        if which in ("all", "hook"):
            bench_hook()
        if which in ("all", "ddp"):
            bench_ddp()
        if which in ("all", "latency"):
            bench_latency()
