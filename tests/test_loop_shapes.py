"""Every loop shape people train with, run for real under ``watch()``: float64/float16/bfloat16 models, optimizer
wrappers (accelerate, Lightning), ``optimizer.step(closure)`` (SGD, LBFGS, a live clip), several optimizers (a GAN),
no optimizer (manual SGD), gradient accumulation, ``log()`` less often than ``step()``, ``GradScaler`` overflow
steps, ``pickle``/``torch.save``/``copy.deepcopy`` of a watched model, and configurations that must never turn the
monitor off. Each reads back the real run file."""

from __future__ import annotations

import copy
import io
import math
import os
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import CommandClient
from torch import nn

import tuimon_agent
from tuimon_agent import discovery, protocol
from tuimon_agent.runfile import RunFileReader


def _records(mon: tuimon_agent.Monitor, kind: str | None = None) -> list[protocol.Record]:
    assert mon.run_file is not None
    with RunFileReader(mon.run_file) as r:
        return [rec for rec in r.records() if kind is None or rec.kind == kind]


def _metrics(mon: tuimon_agent.Monitor) -> dict[int, dict[str, float]]:
    """Every ``metrics`` record's values, merged per step."""
    out: dict[int, dict[str, float]] = {}
    for rec in _records(mon, protocol.METRICS):
        assert rec.step is not None
        out.setdefault(rec.step, {}).update(protocol.values_of(rec))
    return out


def _stats(mon: tuimon_agent.Monitor) -> dict[int, dict[str, Any]]:
    return {rec.step: rec.data for rec in _records(mon, protocol.PARAM_STATS)}


def _hello(mon: tuimon_agent.Monitor) -> dict[str, Any]:
    (hello,) = _records(mon, protocol.HELLO)
    return hello.data


def _grad_norms(model: nn.Module) -> np.ndarray:
    return np.array(
        [
            p.grad.detach().double().norm().item() if p.grad is not None else math.nan
            for p in model.parameters()
        ]
    )


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))


def _batch(seed: int, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return x, x[:, :1] * 2 - x[:, 1:2]


# -- dtypes ---------------------------------------------------------------------------------------------------------


class Mixed(nn.Module):
    """A float64 layer feeding a float32 one (a model that mixes dtypes)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 16).double()
        self.act = nn.ReLU()
        self.b = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.act(self.a(x.double())).float())


@pytest.mark.parametrize("dtype", ["float64", "float16", "bfloat16", "mixed"])
def test_every_instrument_works_on_float64_half_bfloat16_and_mixed_models(tmp_path: Path, dtype: str) -> None:
    if dtype == "mixed":
        torch.manual_seed(0)
        model: nn.Module = Mixed()
        in_dtype = torch.float32
    else:
        in_dtype = getattr(torch, dtype)
        model = _mlp().to(in_dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    probe = torch.randn(1, 6, dtype=in_dtype)
    mon = tuimon_agent.watch(
        model,
        opt,
        dir=tmp_path,
        publish=False,
        stats_every=1,
        norms_every=1,
        hist_every=1,
        probe=probe,
        probe_every=1,
        probe_layers=["act" if dtype == "mixed" else "1"],
    )
    refs = {}
    for step in range(1, 5):
        x, y = _batch(step)
        x = x.to(in_dtype)
        if step == 4:
            x[0, 0] = math.nan  # NaN provenance on this dtype: the input is named
        loss = nn.functional.mse_loss(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        refs[step] = _grad_norms(model)
        opt.step()
        mon.log(loss=loss)
    assert mon.enabled
    mon.close()
    stats = _stats(mon)
    assert sorted(stats) == [1, 2, 3, 4]
    for step in (1, 2, 3):
        np.testing.assert_allclose(stats[step]["grad_norm"], refs[step], rtol=1e-2)
        assert np.isfinite(stats[step]["weight_norm"]).all()
        assert np.isfinite(stats[step]["update_ratio"]).all()
    assert {r.step for r in _records(mon, protocol.HISTOGRAMS)} == {1, 2, 3, 4}
    assert len(_records(mon, protocol.ACT_STATS)) >= 3
    assert len(_records(mon, protocol.FEATURE_MAPS)) == 4
    assert all("opt/lr" in _metrics(mon)[s] for s in (1, 2, 3, 4))
    (nonfinite,) = [e for e in _records(mon, protocol.EVENT) if e.data.get("what") == "nonfinite"]
    assert nonfinite.data["of"] == "input" and nonfinite.data["first_step"] == 4


# -- pickling ---------------------------------------------------------------------------------------------------------


class Conv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_a_watched_model_and_optimizer_pickle_save_and_deepcopy_and_copies_stay_silent(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    model = Conv()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    mon = tuimon_agent.watch(
        model,
        opt,
        dir=tmp_path,
        publish=False,
        stats_every=1,
        norms_every=1,
        hist_every=1,
        probe=torch.randn(1, 8, 8),
        probe_every=1,
    )

    def step(m: nn.Module, o: torch.optim.Optimizer, log: bool) -> None:
        x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 3, (4,))
        loss = nn.functional.cross_entropy(m(x), y)
        o.zero_grad()
        loss.backward()
        o.step()
        if log:
            mon.log(loss=loss)

    for _ in range(2):
        step(model, opt, True)
    copies = [
        pickle.loads(pickle.dumps(model)),
        copy.deepcopy(model),
        torch.load(_saved(model), weights_only=False),
    ]
    opt_copies = [
        pickle.loads(pickle.dumps(opt)),
        torch.load(_saved(opt), weights_only=False),
        copy.deepcopy(opt),
    ]
    assert all(isinstance(o, torch.optim.Adam) for o in opt_copies)
    for c in copies:  # the copies train without reporting into the run
        c_opt = torch.optim.SGD(c.parameters(), lr=0.01)
        for _ in range(3):
            step(c, c_opt, False)
        for a, b in zip(c.parameters(), model.parameters(), strict=True):
            assert a.shape == b.shape
    step(model, opt, True)  # the original still reports
    assert mon.enabled
    mon.close()
    assert sorted(r.step for r in _records(mon, protocol.PARAM_STATS)) == [1, 2, 3]
    assert sorted(r.step for r in _records(mon, protocol.ACT_STATS)) == [1, 2, 3]


def _saved(obj: Any) -> io.BytesIO:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


# -- optimizer wrappers -------------------------------------------------------------------------------------------


def test_accelerate_prepared_optimizer_is_unwrapped_and_measured(tmp_path: Path) -> None:
    from accelerate import Accelerator

    model = _mlp()
    accelerator = Accelerator(cpu=True)
    model, opt = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.05))
    assert type(opt).__name__ == "AcceleratedOptimizer"
    mon = tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, stats_every=2)
    refs = {}
    for step in range(1, 5):
        x, y = _batch(step)
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        accelerator.backward(loss)
        refs[step] = _grad_norms(model)
        opt.step()
        mon.log(loss=loss)
    assert mon.enabled
    mon.close()
    assert _hello(mon)["optimizer"]["wrapper"] == "AcceleratedOptimizer"
    assert _hello(mon)["optimizer"]["type"] == "SGD"
    stats = _stats(mon)
    assert sorted(stats) == [2, 4]
    np.testing.assert_allclose(stats[4]["grad_norm"], refs[4], rtol=1e-5)
    assert all(_metrics(mon)[s]["opt/lr"] == pytest.approx(0.05) for s in range(1, 5))


def test_lightning_optimizer_is_unwrapped(tmp_path: Path) -> None:
    from lightning.pytorch.core.optimizer import LightningOptimizer

    model = _mlp()
    inner = torch.optim.Adam(model.parameters(), lr=1e-3)
    wrapped = LightningOptimizer(inner)
    mon = tuimon_agent.watch(model, wrapped, dir=tmp_path, publish=False, stats_every=1)
    for step in range(1, 4):
        x, y = _batch(step)
        loss = nn.functional.mse_loss(model(x), y)
        inner.zero_grad()
        loss.backward()
        inner.step()  # what Lightning's strategy calls inside LightningOptimizer.step
        mon.log(loss=loss)
    assert mon.enabled
    mon.close()
    assert _hello(mon)["optimizer"] == {
        **_hello(mon)["optimizer"],
        "type": "Adam",
        "wrapper": "LightningOptimizer",
    }
    assert sorted(_stats(mon)) == [1, 2, 3]
    assert "commands" in _hello(mon)


class ZeroStyle:
    """A ZeRO-style wrapper (not a torch optimizer): keeps the real one as ``.optimizer`` and steps it."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()

    def step(self) -> None:
        self.optimizer.step()


def test_a_zero_style_wrapper_is_unwrapped(tmp_path: Path) -> None:
    model = _mlp()
    opt = ZeroStyle(torch.optim.SGD(model.parameters(), lr=0.02))
    mon = tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, stats_every=1)
    for step in range(1, 4):
        x, y = _batch(step)
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.log(loss=loss)
    assert mon.enabled
    mon.close()
    assert _hello(mon)["optimizer"]["wrapper"] == "ZeroStyle"
    assert sorted(_stats(mon)) == [1, 2, 3]
    assert [_metrics(mon)[s]["opt/lr"] for s in (1, 2, 3)] == pytest.approx([0.02] * 3)


# -- step(closure) ------------------------------------------------------------------------------------------------


def test_sgd_step_with_closure_measures_the_closures_gradients(tmp_path: Path) -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    mon = tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, stats_every=1, hist_every=0)
    refs: dict[int, np.ndarray] = {}
    for step in range(1, 5):
        x, y = _batch(step)

        def closure(step: int = step, x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            refs[step] = _grad_norms(model)
            return loss

        loss = opt.step(closure)
        mon.log(loss=loss)
    mon.close()
    stats = _stats(mon)
    assert sorted(stats) == [1, 2, 3, 4]
    for step in range(1, 5):
        np.testing.assert_allclose(stats[step]["grad_norm"], refs[step], rtol=1e-5)
        assert (stats[step]["has_grad"] == 1).all()


def test_lbfgs_run_is_measured_after_the_first_closure_call(tmp_path: Path) -> None:
    model = _mlp()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5)
    mon = tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, stats_every=1)
    x, y = _batch(0, 64)
    first: dict[int, np.ndarray] = {}
    calls: dict[int, int] = {}
    for step in range(1, 4):

        def closure(step: int = step) -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            calls[step] = calls.get(step, 0) + 1
            first.setdefault(step, _grad_norms(model))
            return loss

        loss = opt.step(closure)
        mon.log(loss=loss)
    mon.close()
    assert max(calls.values()) > 1  # LBFGS called the closure several times a step
    stats = _stats(mon)
    assert sorted(stats) == [1, 2, 3]
    for step in range(1, 4):
        np.testing.assert_allclose(stats[step]["grad_norm"], first[step], rtol=1e-5)
        assert np.isfinite(stats[step]["update_ratio"]).all() and (stats[step]["update_ratio"] > 0).all()
    losses = [v["loss"] for _, v in sorted(_metrics(mon).items())]
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_a_live_clip_applies_inside_the_closure(tmp_path: Path) -> None:
    twin = _mlp()
    model = copy.deepcopy(twin)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.05)
    mon = tuimon_agent.watch(model, opt, dir=tmp_path, run="clip", commit_interval=0.05, stats_every=1)
    info = next(i for i in discovery.live_runs(clean=False) if i.run_id == mon.run_id)
    client = CommandClient(info, sender="test")
    preclip: dict[int, float] = {}

    def train_step(m: nn.Module, o: torch.optim.Optimizer, step: int, record: bool) -> torch.Tensor:
        x, y = _batch(step)

        def closure() -> torch.Tensor:
            o.zero_grad()
            loss = nn.functional.mse_loss(m(x), y)
            loss.backward()
            if record:
                preclip[step] = float(
                    torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in m.parameters()]))
                )
            return loss

        return o.step(closure)

    try:
        cmd = client.send("set_clip", {"max_norm": 0.01})
        applied_at = None
        deadline = time.monotonic() + 60
        step = 0
        while time.monotonic() < deadline and (applied_at is None or step < applied_at + 5):
            step += 1
            mon.log(loss=train_step(model, opt, step, True))
            train_step(twin, twin_opt, step, False)
            if applied_at is None and client.sock.poll(0):
                ack = client.recv()
                if ack.get("id") == cmd["id"] and ack.get("status") == "applied":
                    applied_at = ack["step"]
            else:
                time.sleep(0.01)
        assert applied_at is not None
    finally:
        client.close()
        mon.close()
    diff = max((a - b).abs().max().item() for a, b in zip(model.parameters(), twin.parameters(), strict=True))
    assert diff > 1e-4  # clipping changed training
    metrics = _metrics(mon)
    clipped = [s for s in sorted(metrics) if "opt/grad_norm_preclip" in metrics[s]]
    assert clipped and clipped[0] >= applied_at
    for s in clipped:
        assert metrics[s]["opt/clip"] == pytest.approx(0.01)
        assert metrics[s]["opt/grad_norm_preclip"] == pytest.approx(preclip[s], rel=1e-5)
    # The recorded statistics are the clipped gradients of the closure: the global norm is at most max_norm.
    stats = _stats(mon)
    assert all(stats[s]["global_grad_norm"] <= 0.01 * 1.001 for s in clipped)


# -- several optimizers -------------------------------------------------------------------------------------------


class Generator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Discriminator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_a_gan_with_two_optimizers_is_one_run(tmp_path: Path) -> None:
    torch.manual_seed(0)
    g, d = Generator(), Discriminator()
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.SGD(d.parameters(), lr=1e-2)
    sched_d = torch.optim.lr_scheduler.StepLR(opt_d, step_size=2, gamma=0.5)
    mon = tuimon_agent.watch([g, d], [opt_g, opt_d], dir=tmp_path, publish=False, stats_every=1)
    bce = nn.BCEWithLogitsLoss()
    for _ in range(6):
        real = torch.randn(16, 2) + 3
        fake = g(torch.randn(16, 4))
        opt_d.zero_grad()
        loss_d = bce(d(real), torch.ones(16, 1)) + bce(d(fake.detach()), torch.zeros(16, 1))
        loss_d.backward()
        opt_d.step()
        sched_d.step()
        opt_g.zero_grad()
        loss_g = bce(d(fake), torch.ones(16, 1))
        loss_g.backward()
        opt_g.step()
        mon.log(loss_d=loss_d, loss_g=loss_g)
    assert mon.enabled and mon.step == 6
    mon.close()
    metrics = _metrics(mon)
    assert sorted(metrics) == [1, 2, 3, 4, 5, 6]
    for s in range(1, 7):
        assert metrics[s]["opt/lr"] == pytest.approx(2e-4)
        assert metrics[s]["opt/beta1"] == pytest.approx(0.5)
        assert metrics[s]["opt/o1/lr"] == pytest.approx(1e-2 * 0.5 ** ((s - 1) // 2))
        assert "loss_d" in metrics[s] and "loss_g" in metrics[s]
    hello = _hello(mon)
    assert [o["type"] for o in hello["optimizers"]] == ["Adam", "SGD"]
    assert [o["prefix"] for o in hello["optimizers"]] == ["opt/", "opt/o1/"]
    (layers,) = _records(mon, protocol.LAYERS)
    names = [e["name"] for e in layers.data["params"]]
    assert names == [f"Generator.{n}" for n, _ in g.named_parameters()] + [
        f"Discriminator.{n}" for n, _ in d.named_parameters()
    ]
    stats = _stats(mon)
    assert sorted(stats) == [1, 2, 3, 4, 5, 6]
    assert all((s["has_grad"] == 1).all() for s in stats.values())


# -- no optimizer ---------------------------------------------------------------------------------------------------


def test_manual_sgd_without_an_optimizer_is_measured_at_log(tmp_path: Path) -> None:
    model = _mlp()
    mon = tuimon_agent.watch(model, dir=tmp_path, publish=False, stats_every=2)
    refs = {}
    for step in range(1, 7):
        x, y = _batch(step)
        loss = nn.functional.mse_loss(model(x), y)
        model.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.05 * p.grad
        refs[step] = _grad_norms(model)
        weights = np.array([p.detach().double().norm().item() for p in model.parameters()])
        mon.log(loss=loss)
        refs[step] = (refs[step], weights)
    assert mon.enabled
    mon.close()
    stats = _stats(mon)
    assert sorted(stats) == [2, 4, 6]
    for s in (2, 4, 6):
        np.testing.assert_allclose(stats[s]["grad_norm"], refs[s][0], rtol=1e-5)
        np.testing.assert_allclose(stats[s]["weight_norm"], refs[s][1], rtol=1e-5)
        assert np.isnan(stats[s]["update_ratio"]).all()
    assert len(_records(mon, protocol.ACT_STATS)) >= 2
    reason = _hello(mon)["commands_unavailable"]
    assert "no optimizer" in reason


# -- gradient accumulation and sparse logging ------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["plain", "accelerate"])
def test_gradient_accumulation_measures_the_accumulated_gradients_at_the_step(
    tmp_path: Path, how: str
) -> None:
    model = _mlp()
    opt: Any = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 / (1 + k))
    accelerator = None
    if how == "accelerate":
        # HF Trainer's way: the wrapper's step() every micro-batch, the real one every 4th.
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=True, gradient_accumulation_steps=4)
        model, opt = accelerator.prepare(model, opt)
    mon = tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, stats_every=1)
    refs = {}
    for micro in range(1, 13):
        x, y = _batch(micro, 4)
        if accelerator is not None:
            with accelerator.accumulate(model):
                loss = nn.functional.mse_loss(model(x), y)
                accelerator.backward(loss)
                if micro % 4 == 0:
                    refs[micro // 4] = _grad_norms(model)
                opt.step()
                opt.zero_grad()
            if micro % 4 == 0:
                sched.step()
        else:
            loss = nn.functional.mse_loss(model(x), y) / 4
            loss.backward()
            if micro % 4 == 0:
                refs[micro // 4] = _grad_norms(model)
                opt.step()
                sched.step()
                opt.zero_grad()
        mon.log(loss=loss)  # one log per micro-batch
    assert mon.enabled
    mon.close()
    stats = _stats(mon)
    assert sorted(stats) == [4, 8, 12]  # stamped with the micro-batch step of each optimizer step
    for it, s in ((1, 4), (2, 8), (3, 12)):
        np.testing.assert_allclose(stats[s]["grad_norm"], refs[it], rtol=1e-5)
    metrics = _metrics(mon)
    assert sorted(metrics) == list(range(1, 13))
    assert [s for s in sorted(metrics) if "opt/lr" in metrics[s]] == [4, 8, 12]
    assert [metrics[s]["opt/lr"] for s in (4, 8, 12)] == pytest.approx([0.05, 0.025, 0.05 / 3])


def test_log_every_tenth_step_stamps_each_optimizer_value_with_its_own_step(tmp_path: Path) -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 / (1 + k))
    mon = tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, stats_every=5, hist_every=10)
    for step in range(1, 31):
        x, y = _batch(step)
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 10 == 0:
            mon.log(loss=loss)
    assert mon.step == 30
    mon.close()
    metrics = _metrics(mon)
    assert sorted(metrics) == list(range(1, 31))
    for s in range(1, 31):
        assert metrics[s]["opt/lr"] == pytest.approx(0.1 / s)  # the LR step s used
    assert [s for s in sorted(metrics) if "loss" in metrics[s]] == [10, 20, 30]
    assert sorted(_stats(mon)) == [5, 10, 15, 20, 25, 30]
    assert sorted(r.step for r in _records(mon, protocol.HISTOGRAMS)) == [10, 20, 30]


# -- mixed precision ------------------------------------------------------------------------------------------------


def _amp_loop(
    tmp_path: Path, *, fused: bool
) -> tuple[tuimon_agent.Monitor, list[float], dict[int, np.ndarray]]:
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)
    # A huge initial scale: the scaled loss overflows float32 for the first few steps (GradScaler halves it each).
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127, growth_interval=1000)
    mon = tuimon_agent.watch(
        model,
        opt,
        dir=tmp_path,
        publish=False,
        stats_every=1,
        norms_every=1,
        scaler=None if fused else scaler,
    )
    scales: list[float] = []
    refs: dict[int, np.ndarray] = {}
    for step in range(1, 13):
        x, y = _batch(step)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.mse_loss(model(x).float(), 100 * y)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scale = scaler.get_scale()
        scales.append(scale)
        refs[step] = _grad_norms(model) / scale
        scaler.step(opt)
        scaler.update()
        mon.log(loss=loss)
    assert mon.enabled
    mon.close()
    return mon, scales, refs


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "scaler-skips-step"])
def test_gradscaler_overflow_steps_are_counted_not_alerted(tmp_path: Path, fused: bool) -> None:
    mon, scales, refs = _amp_loop(tmp_path, fused=fused)
    skipped = sum(1 for a, b in zip(scales, scales[1:], strict=False) if b < a)
    assert skipped >= 2  # the huge initial scale overflowed a few steps
    events = [e.data for e in _records(mon, protocol.EVENT)]
    assert not [e for e in events if e.get("what") == "nonfinite"]
    assert not [a for a in _records(mon, protocol.ALERT) if a.data.get("rule") == "nonfinite"]
    metrics = _metrics(mon)
    assert max(v.get("amp/skipped_steps", 0) for v in metrics.values()) == skipped
    assert any("amp/scale" in v for v in metrics.values())
    stats = _stats(mon)
    assert len(stats) == 12 - skipped  # a skipped step has no statistics
    for s in stats:
        assert not stats[s]["grad_nonfinite"].any()
    # Unscaled: the statistics are the gradients divided by the scale the scaler used.
    last = max(stats)
    assert last == 12
    np.testing.assert_allclose(stats[last]["grad_norm"], refs[12], rtol=1e-4)


# -- watch() never turns off or raises --------------------------------------------------------------------------------


class NotAnOptimizer:
    """Something a script might hand over as its optimizer: steps a real one, but is neither one nor a wrapper."""

    def __init__(self, params: Any) -> None:
        self.inner_sgd = torch.optim.SGD(params, lr=0.01)

    def step(self) -> None:
        self.inner_sgd.step()


def test_watch_never_raises_and_stays_on_in_odd_configurations(tmp_path: Path, monkeypatch: Any) -> None:
    model = _mlp()
    sgd = torch.optim.SGD(model.parameters(), lr=0.01)
    configs: list[tuple[Any, Any]] = [
        ([model], [sgd]),
        (model, (sgd,)),
        ((model,), sgd),
        (model, NotAnOptimizer(model.parameters())),
        ([model, None], [sgd, None]),
    ]
    for m, o in configs:
        mon = tuimon_agent.watch(m, o, dir=tmp_path, publish=False, stats_every=1)
        for step in range(1, 3):
            x, y = _batch(step)
            loss = nn.functional.mse_loss(model(x), y)
            sgd.zero_grad()
            loss.backward()
            sgd.step()
            mon.log(loss=loss)
        assert mon.enabled, (m, o)
        mon.close()
        assert sorted(_stats(mon)) == [1, 2], (m, o)
    monkeypatch.setenv("TUIMON_DISABLE", "1")
    for m, o in configs:
        mon = tuimon_agent.watch(m, o, dir=tmp_path, publish=False)
        mon.log(loss=1.0)
        mon.close()
    assert os.environ["TUIMON_DISABLE"] == "1"
