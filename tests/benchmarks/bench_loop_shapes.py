"""What ``watch()`` at its defaults costs each loop shape, bare and watched side by side in one process.

    python tests/benchmarks/bench_loop_shapes.py [--blocks N] [--steps N] [--threads N]

For each shape (plain loop, ``step(closure)``, a GAN with two optimizers, no optimizer (manual SGD), gradient
accumulation, a float64 model, a fused Adam under ``GradScaler``, ``log()`` every 10th step) two identical set-ups
are built from one seed: one bare, one under ``tuimon_agent.watch(...)`` with default options (live publishing
and the run file on, statistics every 50 steps, histograms every 500, activations, alerts). Blocks of ``--steps``
iterations alternate between the two (A/B/A/B..., after one warm-up block each), so drifts of a shared machine hit
both alike; the table gives the median bare step, the median watched step and the median of the per-pair ratios.
Small models, so the whole run takes a minute or two on one CPU thread. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import tuimon_agent

Step = Callable[[], None]


def _mlp(dtype: torch.dtype = torch.float32) -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    ).to(dtype)


def _data(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(128, 64, generator=g, dtype=dtype), torch.randint(0, 10, (128,), generator=g)


def plain(watch: Callable[..., Any]) -> Step:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    mon = watch(model, opt)
    x, y = _data()

    def step() -> None:
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.log(loss=loss)

    return step


def closure(watch: Callable[..., Any]) -> Step:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    mon = watch(model, opt)
    x, y = _data()

    def fn() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    def step() -> None:
        mon.log(loss=opt.step(fn))

    return step


def gan(watch: Callable[..., Any]) -> Step:
    g = nn.Sequential(nn.Linear(16, 256), nn.ReLU(), nn.Linear(256, 64))
    d = nn.Sequential(nn.Linear(64, 256), nn.LeakyReLU(0.2), nn.Linear(256, 1))
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    mon = watch([g, d], [opt_g, opt_d])
    bce = nn.BCEWithLogitsLoss()
    real, z = torch.randn(128, 64), torch.randn(128, 16)
    ones, zeros = torch.ones(128, 1), torch.zeros(128, 1)

    def step() -> None:
        fake = g(z)
        opt_d.zero_grad()
        loss_d = bce(d(real), ones) + bce(d(fake.detach()), zeros)
        loss_d.backward()
        opt_d.step()
        opt_g.zero_grad()
        loss_g = bce(d(fake), ones)
        loss_g.backward()
        opt_g.step()
        mon.log(loss_d=loss_d, loss_g=loss_g)

    return step


def no_optimizer(watch: Callable[..., Any]) -> Step:
    model = _mlp()
    mon = watch(model)
    x, y = _data()

    def step() -> None:
        loss = nn.functional.cross_entropy(model(x), y)
        model.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.01 * p.grad
        mon.log(loss=loss)

    return step


def grad_accumulation(watch: Callable[..., Any]) -> Step:
    model = _mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mon = watch(model, opt)
    x, y = _data()
    chunks = list(zip(x.chunk(4), y.chunk(4), strict=True))

    def step() -> None:
        opt.zero_grad()
        for xc, yc in chunks:
            loss = nn.functional.cross_entropy(model(xc), yc) / 4
            loss.backward()
        opt.step()
        mon.log(loss=loss)

    return step


def float64(watch: Callable[..., Any]) -> Step:
    model = _mlp(torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    mon = watch(model, opt)
    x, y = _data(torch.float64)

    def step() -> None:
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.log(loss=loss)

    return step


def gradscaler_fused(watch: Callable[..., Any]) -> Step:
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    scaler = torch.amp.GradScaler("cpu")
    mon = watch(model, opt)
    x, y = _data()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        mon.log(loss=loss)

    return step


def log_every_10(watch: Callable[..., Any]) -> Step:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 / (1 + 1e-3 * k))
    mon = watch(model, opt)
    x, y = _data()
    n = [0]

    def step() -> None:
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        n[0] += 1
        if n[0] % 10 == 0:
            mon.log(loss=loss)

    return step


SHAPES: dict[str, Callable[[Callable[..., Any]], Step]] = {
    "plain loop": plain,
    "step(closure)": closure,
    "GAN, two optimizers": gan,
    "no optimizer (manual SGD)": no_optimizer,
    "gradient accumulation (4)": grad_accumulation,
    "float64 model": float64,
    "fused Adam + GradScaler": gradscaler_fused,
    "log() every 10th step": log_every_10,
}


class _Bare:
    """What a script without tuimon has: ``log()`` does nothing."""

    def log(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _block(step: Step, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def bench(
    name: str, make: Callable[[Callable[..., Any]], Step], blocks: int, steps: int, root: str
) -> list[Any]:
    monitors: list[Any] = []

    def watched(*args: Any) -> Any:
        mon = tuimon_agent.watch(*args, dir=root, run=name.split()[0])
        monitors.append(mon)
        return mon

    torch.manual_seed(0)
    bare = make(lambda *a: _Bare())
    torch.manual_seed(0)
    live = make(watched)
    _block(bare, steps)
    _block(live, steps)
    a, b, ratios = [], [], []
    for _ in range(blocks):
        ta, tb = _block(bare, steps), _block(live, steps)
        a.append(ta)
        b.append(tb)
        ratios.append(tb / ta)
    enabled = all(m.enabled for m in monitors)
    for m in monitors:
        m.close()
    return [name, statistics.median(a) * 1e3, statistics.median(b) * 1e3, statistics.median(ratios), enabled]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blocks", type=int, default=6, help="A/B pairs per shape")
    p.add_argument("--steps", type=int, default=60, help="iterations per block")
    p.add_argument("--only", default="", help="run the shapes whose name contains this text")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        for name, make in SHAPES.items():
            if a.only.lower() not in name.lower():
                continue
            rows.append(bench(name, make, a.blocks, a.steps, root))
    print(
        f"torch {torch.__version__}, {a.threads} thread(s), {a.blocks} A/B pairs of {a.steps} steps per shape"
    )
    print(
        f"{'loop shape':<28} {'bare ms/step':>12} {'watched ms/step':>16} {'ratio (median)':>15}  monitor on"
    )
    for name, bare, watched, ratio, enabled in rows:
        print(f"{name:<28} {bare:>12.3f} {watched:>16.3f} {ratio:>14.3f}x  {'yes' if enabled else 'NO'}")
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
