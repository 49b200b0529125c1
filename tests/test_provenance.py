"""NaN provenance: the run's one ``nonfinite`` event names the first step and the first layer that went non-finite,
between sampled steps, with real training loops, the real agent thread and the real run file."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import tuimon_agent
from tuimon_agent import protocol
from tuimon_agent.runfile import RunFileReader

BAD_STEP = 23
"""The step the tests corrupt: not a sampled one (``stats_every=50``)."""


class Boom(nn.Linear):
    """A Linear layer whose output gets one ``value`` entry while ``armed`` (a transient forward fault)."""

    armed: Any = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if self.armed is not None:
            y = y.clone()
            y[0, 0] = self.armed
        return y


class Net(nn.Module):
    """``head`` is defined first but called last: model order and call order differ."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(16, 3)
        self.stem = nn.Linear(6, 16)
        self.act = nn.ReLU()
        self.mid = Boom(16, 16)
        self.act2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.mid(self.act(self.stem(x)))))


Hook = Callable[[int, str, Net, Any], Any]


def _events(mon: tuimon_agent.Monitor) -> list[dict[str, Any]]:
    assert mon.run_file is not None
    with RunFileReader(mon.run_file) as r:
        return [
            rec.data
            for rec in r.records()
            if rec.kind == protocol.EVENT and rec.data.get("what") == "nonfinite"
        ]


def _run(
    tmp_path: Path, steps: int = 30, hook: Hook | None = None, *, until_event: bool = False, **opts: Any
) -> list[dict[str, Any]]:
    """Train ``Net`` with SGD for ``steps`` steps; ``hook(step, stage, model, value)`` may act at the stages
    ``"forward"`` (before it), ``"loss"`` (returns the loss to use) and ``"step"`` (before ``optimizer.step()``).
    ``until_event``: after ``BAD_STEP``, go on (up to 5000 steps) until the event is in the run file, as a training
    run would while the agent thread catches up. Returns the ``nonfinite`` events of the run file."""
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    options: dict[str, Any] = {"stats_every": 50, "hist_every": 0, **opts}
    mon = tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, **options)
    hook = hook or (lambda step, stage, model, value: value)
    try:
        for step in range(1, steps + 1):
            x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
            hook(step, "forward", model, None)
            loss = hook(step, "loss", model, nn.functional.cross_entropy(model(x), y))
            model.mid.armed = None
            opt.zero_grad()
            loss.backward()
            hook(step, "step", model, None)
            opt.step()
            mon.log(loss=loss)
        while until_event and step < 5000 and not _events(mon):
            step += 1
            x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.log(loss=loss)
    finally:
        mon.close()
    return _events(mon)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_layer_that_overflows_between_samples_is_named_at_its_step(tmp_path: Path, bad: float) -> None:
    def hook(step: int, stage: str, model: Net, value: Any) -> Any:
        if stage == "forward" and step == BAD_STEP:
            model.mid.armed = bad
        return value

    (event,) = _run(tmp_path, hook=hook)
    assert event["first_step"] == event["step"] == BAD_STEP
    # ``head`` comes first in model order and is non-finite too: call order decides.
    assert (event["of"], event["layer"], event["how"], event["exact"]) == (
        "activation",
        "mid",
        "replay",
        True,
    )
    assert event["weights"] == []
    assert event["message"].startswith(f"first non-finite activation at step {BAD_STEP} in mid")


def test_a_non_finite_weight_is_named_with_its_module(tmp_path: Path) -> None:
    def hook(step: int, stage: str, model: Net, value: Any) -> Any:
        if stage == "forward" and step == BAD_STEP:
            with torch.no_grad():
                model.mid.weight[3, 4] = math.nan
        return value

    (event,) = _run(tmp_path, hook=hook)
    assert (event["first_step"], event["of"], event["layer"], event["how"]) == (
        BAD_STEP,
        "weight",
        "mid",
        "replay",
    )
    assert event["weights"] == ["mid"]
    assert f"update of step {BAD_STEP - 1}" in event["message"]


def test_a_non_finite_gradient_shows_in_the_next_forward(tmp_path: Path) -> None:
    """The loss stays finite; one gradient entry goes NaN at step 23 and the update writes it into the weight:
    the forward of step 24 is the first to go non-finite, from that layer on."""

    def hook(step: int, stage: str, model: Net, value: Any) -> Any:
        if stage == "step" and step == BAD_STEP:
            model.stem.weight.grad[0, 0] = math.nan
        return value

    (event,) = _run(tmp_path, hook=hook)
    assert (event["first_step"], event["of"], event["layer"]) == (BAD_STEP + 1, "weight", "stem")
    assert event["weights"] == ["stem"]
    assert f"update of step {BAD_STEP}" in event["message"]


def test_a_non_finite_input_is_told_apart(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, stats_every=50, hist_every=0)
    for step in range(1, 8):
        x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
        if step == 5:
            x[2, 1] = math.inf
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.log(loss=loss)
    mon.close()
    with RunFileReader(mon.run_file) as r:  # type: ignore[arg-type]
        (event,) = [rec.data for rec in r.records() if rec.data.get("what") == "nonfinite"]
    assert (event["first_step"], event["of"], event["layer"]) == (5, "input", "stem")


@pytest.mark.parametrize("activations", [True, False], ids=["forward-checked", "forced-sample"])
def test_a_non_finite_loss_alone(tmp_path: Path, activations: bool) -> None:
    """The loss function goes NaN (its gradients stay finite): no layer is to blame."""

    def hook(step: int, stage: str, model: Net, value: Any) -> Any:
        if stage == "loss" and step == BAD_STEP:
            return value + torch.log(torch.tensor(-1.0))
        return value

    (event,) = _run(tmp_path, hook=hook, activations=activations, until_event=True)
    assert (event["first_step"], event["of"], event["layer"], event["exact"]) == (
        BAD_STEP,
        "loss",
        None,
        True,
    )
    if activations:
        assert event["how"] == "loss" and event["seen_at"] == BAD_STEP
    else:  # the agent thread forced a full measurement of a later step, which found every weight finite
        assert event["how"] == "forced" and event["seen_at"] > BAD_STEP


def test_without_forward_checks_a_forced_sample_finds_the_weights(tmp_path: Path) -> None:
    """``activations=False``: no forward is checked; the non-finite loss forces a full sample a step or a few later,
    by which time the update has spread the NaN: the step is the loss's, the layer cannot be proven."""

    def hook(step: int, stage: str, model: Net, value: Any) -> Any:
        if stage == "forward" and step == BAD_STEP:
            with torch.no_grad():
                model.mid.weight[3, 4] = math.nan
        return value

    (event,) = _run(tmp_path, hook=hook, activations=False, until_event=True)
    assert (event["first_step"], event["of"], event["how"], event["exact"]) == (
        BAD_STEP,
        "weight",
        "forced",
        False,
    )
    assert event["seen_at"] > BAD_STEP and "mid" in event["weights"]


def test_a_sampled_gradient_waits_for_its_loss(tmp_path: Path) -> None:
    """A NaN gradient on a sampled step with a finite loss is reported as a gradient, inexactly (it may have started
    before the sample): the last flagged tensor in model order, the first in backward order."""

    def hook(step: int, stage: str, model: Net, value: Any) -> Any:
        if stage == "step" and step == 10:
            model.stem.bias.grad[0] = math.nan
            model.mid.bias.grad[1] = math.inf
        return value

    (event,) = _run(tmp_path, steps=12, hook=hook, stats_every=5)
    assert (event["first_step"], event["of"], event["param"], event["how"], event["exact"]) == (
        10,
        "gradient",
        "mid.bias",
        "sampled",
        False,
    )


def test_a_healthy_run_reports_nothing(tmp_path: Path) -> None:
    assert _run(tmp_path, steps=60) == []


def test_the_replay_leaves_buffers_and_random_state_as_they_were(tmp_path: Path) -> None:
    """Dropout and BatchNorm: after the replayed step, training goes on exactly as without the monitor."""

    def run(watched: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.Dropout(0.5), Boom(16, 3))
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        mon = tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, stats_every=50) if watched else None
        outs = []
        for step in range(1, 5):
            x = torch.randn(8, 6)
            model[3].armed = math.nan if step == 3 else None
            out = model(x)
            model[3].armed = None
            outs.append(out.detach().clone())
            if step != 3:
                opt.zero_grad()
                out.square().mean().backward()
                opt.step()
        if mon is not None:
            mon.close()
        return outs + [model[1].running_mean.clone(), model[1].running_var.clone()], torch.rand(3)

    watched, bare = run(True), run(False)
    for a, b in zip(watched[0], bare[0], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(watched[1], bare[1], rtol=0, atol=0)


def test_a_forward_that_cannot_run_twice_is_reported_and_monitoring_goes_on(tmp_path: Path) -> None:
    class Once(nn.Module):
        """Raises when called again within the same step (a forward with a side effect)."""

        def __init__(self) -> None:
            super().__init__()
            self.fc = Boom(6, 3)
            self.step = -1
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls > 1:
                raise RuntimeError(f"called {self.calls} times in step {self.step}")
            return self.fc(x)

    torch.manual_seed(0)
    model = Once()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, stats_every=4, hist_every=0)
    for step in range(1, 10):
        model.step, model.calls = step, 0
        model.fc.armed = math.nan if step == 3 else None
        loss = nn.functional.cross_entropy(model(torch.randn(8, 6)), torch.randint(0, 3, (8,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.log(loss=loss)
    mon.close()
    (event,) = _events(mon)
    assert (event["first_step"], event["how"], event["layer"]) == (3, "replay", None)
    assert "the replay failed (RuntimeError: called 2 times in step 3)" in event["message"]
    assert mon.run_file is not None
    with RunFileReader(mon.run_file) as r:
        assert [rec.step for rec in r.records() if rec.kind == protocol.PARAM_STATS] == [4, 8]


def test_an_output_that_cannot_be_checked_leaves_it_to_the_loss(tmp_path: Path) -> None:
    """A model returning a dict: its outputs are not checked, so a NaN weight is found by a forced sample."""

    class DictNet(Net):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
            return {"logits": super().forward(x)}

    torch.manual_seed(0)
    model = DictNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, stats_every=50, hist_every=0)
    step = 0
    while step < BAD_STEP or (step < 5000 and not _events(mon)):
        step += 1
        if step == BAD_STEP:
            with torch.no_grad():
                model.mid.weight[0, 0] = math.nan
        loss = nn.functional.cross_entropy(model(torch.randn(8, 6))["logits"], torch.randint(0, 3, (8,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.log(loss=loss)
    mon.close()
    (event,) = _events(mon)
    assert (event["first_step"], event["of"], event["how"]) == (BAD_STEP, "weight", "forced")
