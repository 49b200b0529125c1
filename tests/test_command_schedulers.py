"""A live set_lr persists under LR schedulers: after the change at step k, every later lr is the schedule's × factor.

Each test trains a real model with the real agent in this process, sends ``set_lr`` through a real DEALER signed
with the run's key, waits for it to be queued, and then keeps training; the reference is the same scheduler run
from a scaled start (initial lr, ``eta_min``, ``max_lr``, ``min_lr`` × factor) with no command at all.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import CommandClient

import tuimon_agent
from tuimon_agent import discovery, schedulers

S = torch.optim.lr_scheduler
STEPS = 30
K = 12  # the optimizer step at which the command applies (1-based)

# name -> (scheduler factory (optimizer, scale) -> scheduler, uses a metric)
MATRIX: dict[str, Callable[[Any, float], Any]] = {
    "StepLR": lambda o, f: S.StepLR(o, step_size=5, gamma=0.5),
    "ExponentialLR": lambda o, f: S.ExponentialLR(o, gamma=0.9),
    "CosineAnnealingLR": lambda o, f: S.CosineAnnealingLR(o, T_max=20, eta_min=0.01 * f),
    "OneCycleLR": lambda o, f: S.OneCycleLR(o, max_lr=0.5 * f, total_steps=STEPS + 1),
    "LambdaLR": lambda o, f: S.LambdaLR(o, lambda e: 1.0 / (1.0 + 0.3 * e)),
    "LinearLR": lambda o, f: S.LinearLR(o, start_factor=0.1, total_iters=20),
    "SequentialLR": lambda o, f: S.SequentialLR(
        o,
        [S.LinearLR(o, start_factor=0.1, total_iters=8), S.ExponentialLR(o, gamma=0.8)],
        milestones=[8],
    ),
    "SequentialLR-after-milestone": lambda o, f: S.SequentialLR(
        o,
        [
            S.LinearLR(o, start_factor=0.1, total_iters=16),
            S.CosineAnnealingLR(o, T_max=10, eta_min=0.002 * f),
        ],
        milestones=[16],
    ),
    "ReduceLROnPlateau": lambda o, f: S.ReduceLROnPlateau(o, factor=0.5, patience=1, min_lr=0.004 * f),
    "CosineAnnealingWarmRestarts": lambda o, f: S.CosineAnnealingWarmRestarts(o, T_0=7, eta_min=0.001 * f),
}


def _client(mon: tuimon_agent.Monitor) -> CommandClient:
    """A command client on this in-process run (found by its run id among the live connection files)."""
    (info,) = [i for i in discovery.live_runs(clean=False) if i.run_id == mon.run_id]
    return CommandClient(info)


def _model_opt(lr: float) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    return model, torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)


def _train(
    name: str, lr0: float, factor: float, *, command: dict[str, Any] | None, tmp_path: Path
) -> tuple[list[float], dict[str, Any] | None]:
    """The lr used by each optimizer step 1..STEPS (read in a pre-hook registered after the agent's)."""
    model, opt = _model_opt(lr0)
    sched = MATRIX[name](opt, factor if command is None else 1.0)
    used: list[float] = []
    mon = None
    client = None
    ack = None
    if command is not None:
        mon = tuimon_agent.watch(model, opt, run="sched", dir=tmp_path, stats_every=0, hist_every=0)
        client = _client(mon)
    opt.register_step_pre_hook(lambda o, a, k: used.append(o.param_groups[0]["lr"]))
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    cmd = None
    try:
        for step in range(1, STEPS + 1):
            if step == K and client is not None:
                assert command is not None
                cmd = client.send("set_lr", command)
                client.wait(cmd["id"], "queued")
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if mon is not None:
                mon.log(loss=loss)
            if isinstance(sched, S.ReduceLROnPlateau):
                sched.step(1.0)  # a flat metric: the plateau rule fires every patience + 1 steps
            else:
                sched.step()
        if client is not None and cmd is not None:
            ack = client.wait(cmd["id"], "applied")
    finally:
        if client is not None:
            client.close()
        if mon is not None:
            mon.close()
    return used, ack


def _reference(name: str, lr0: float, factor: float, tmp_path: Path) -> list[float]:
    return _train(name, lr0, factor, command=None, tmp_path=tmp_path)[0]


@pytest.mark.parametrize("name", list(MATRIX))
def test_set_lr_scale_persists_under_scheduler(name: str, tmp_path: Path) -> None:
    lr0, factor = 0.1, 0.3
    base = _reference(name, lr0, 1.0, tmp_path)
    scaled = _reference(name, lr0 * factor, factor, tmp_path)
    changed, ack = _train(name, lr0, factor, command={"scale": factor}, tmp_path=tmp_path)
    assert ack is not None and ack["step"] == K
    assert ack["old"] == pytest.approx(base[K - 1]) and ack["new"] == pytest.approx(base[K - 1] * factor)
    assert changed[: K - 1] == pytest.approx(base[: K - 1], rel=1e-12)
    assert changed[K - 1 :] == pytest.approx(scaled[K - 1 :], rel=1e-9)
    # and it did change: the schedule after k is not the unscaled one
    assert changed[-1] == pytest.approx(base[-1] * factor, rel=1e-9)
    assert changed[-1] != pytest.approx(base[-1], rel=1e-3)


@pytest.mark.parametrize("name", ["StepLR", "CosineAnnealingLR", "OneCycleLR", "ReduceLROnPlateau"])
def test_set_lr_value_persists_under_scheduler(name: str, tmp_path: Path) -> None:
    lr0 = 0.1
    base = _reference(name, lr0, 1.0, tmp_path)
    value = base[K - 1] * 2.5
    factor = value / base[K - 1]
    scaled = _reference(name, lr0 * factor, factor, tmp_path)
    changed, ack = _train(name, lr0, factor, command={"value": value}, tmp_path=tmp_path)
    assert ack is not None and ack["new"] == pytest.approx(value)
    assert changed[K - 1] == pytest.approx(value, rel=1e-12)
    assert changed[K - 1 :] == pytest.approx(scaled[K - 1 :], rel=1e-9)


def test_one_group_change_leaves_the_other_groups_schedule(tmp_path: Path) -> None:
    """set_lr with group=1 rescales only group 1's schedule state; eta_min (shared) stays."""
    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 3), torch.nn.Linear(3, 1)
    opt = torch.optim.SGD([{"params": a.parameters()}, {"params": b.parameters(), "lr": 0.05}], lr=0.1)
    sched = S.StepLR(opt, step_size=4, gamma=0.5)
    mon = tuimon_agent.watch(
        torch.nn.Sequential(a, b), opt, run="g", dir=tmp_path, stats_every=0, hist_every=0
    )
    client = _client(mon)
    try:
        for step in range(1, 11):
            if step == 3:
                cmd = client.send("set_lr", {"value": 0.5, "group": 1})
                client.wait(cmd["id"], "queued")
            b(a(torch.randn(2, 3))).sum().backward()
            opt.step()
            opt.zero_grad()
            sched.step()
        ack = client.wait(cmd["id"], "applied")
    finally:
        client.close()
        mon.close()
    assert ack["groups"] == [1] and ack["old"] == pytest.approx(0.05) and ack["new"] == 0.5
    # after 10 scheduler steps (two decays): group 0 untouched, group 1 from its new level
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.25)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.5 * 0.25)
    assert sched.base_lrs == pytest.approx([0.1, 0.5])


def test_discover_finds_schedulers_and_sequential_children_through_the_parent() -> None:
    model, opt = _model_opt(0.1)
    step = S.StepLR(opt, 3)
    seq = S.SequentialLR(
        opt, [S.LinearLR(opt, 0.5, total_iters=2), S.ExponentialLR(opt, 0.9)], milestones=[2]
    )
    found = schedulers.discover(opt)
    assert {id(s) for s in found} == {id(step), id(seq)}
    other_model, other_opt = _model_opt(0.1)
    assert schedulers.discover(other_opt) == []
