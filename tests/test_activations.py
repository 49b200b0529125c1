"""Activation and input statistics (``modules``, ``act_stats``, ``input_stats`` records) from the real agent."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import tuimon_agent
from tuimon_agent import protocol
from tuimon_agent.runfile import RunFileReader

nn = torch.nn
N_FEATURES, K_DEAD = 10, 3


def _records(mon: tuimon_agent.Monitor, kind: str) -> list[protocol.Record]:
    assert mon.run_file is not None
    with RunFileReader(mon.run_file) as r:
        return [rec for rec in r.records() if rec.kind == kind]


def _model() -> nn.Sequential:
    """Linear(4 → 10) whose bias makes exactly 3 features negative for every input in [0, 1): ReLU kills them;
    then a Tanh on a scaled copy whose saturated fraction is known."""
    torch.manual_seed(0)
    lin = nn.Linear(4, N_FEATURES)
    with torch.no_grad():
        lin.weight.uniform_(-0.1, 0.1)
        lin.bias.fill_(1.0)
        lin.bias[:K_DEAD] = -10.0
    return nn.Sequential(
        lin,
        nn.ReLU(),
        nn.Linear(N_FEATURES, 6),
        nn.Tanh(),
        nn.Linear(6, 1),
        nn.Sigmoid(),
    )


def _train(tmp_path: Path, steps: int, every: int, **options: Any) -> tuple[tuimon_agent.Monitor, list[Any]]:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the model stays as built
    mon = tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, stats_every=every, **options)
    inputs = []
    for step in range(1, steps + 1):
        x = torch.rand(16, 4)
        inputs.append(x)
        loss = model(x).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.log(step, loss=loss.detach())
    mon.close()
    return mon, [model, inputs]


def test_dead_and_saturated_fractions_and_moments_equal_references(tmp_path: Path) -> None:
    mon, (model, inputs) = _train(tmp_path, 3, 1)
    (index,) = _records(mon, protocol.MODULES)
    names = [m["name"] for m in index.data["modules"]]
    assert names == ["0", "1", "2", "3", "4", "5"]
    assert [m["type"] for m in index.data["modules"]] == [
        "Linear",
        "ReLU",
        "Linear",
        "Tanh",
        "Linear",
        "Sigmoid",
    ]
    recs = _records(mon, protocol.ACT_STATS)
    assert [r.step for r in recs] == [1, 2, 3]
    for rec, x in zip(recs, inputs, strict=True):
        d = rec.data
        outs = []
        h = x
        with torch.no_grad():
            for m in model:
                h = m(h)
                outs.append(h)
        np.testing.assert_allclose(d["mean"], [o.mean().item() for o in outs], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(d["std"], [o.std(correction=0).item() for o in outs], rtol=1e-5, atol=1e-6)
        assert d["dead"][1] == pytest.approx(K_DEAD / N_FEATURES)
        assert np.isnan(d["dead"][[0, 2, 3, 4, 5]]).all()
        ref_sat = (outs[3].abs() > 0.99).float().mean().item()
        assert d["saturated"][3] == pytest.approx(ref_sat)
        ref_sig = ((outs[5] < 0.01) | (outs[5] > 0.99)).float().mean().item()
        assert d["saturated"][5] == pytest.approx(ref_sig)
        assert np.isnan(d["saturated"][[0, 1, 2, 4]]).all()
        assert d["nonfinite"].tolist() == [0] * 6


def test_a_known_fraction_of_tanh_outputs_saturates(tmp_path: Path) -> None:
    """Inputs of ±10 (saturated) and 0 (not) in a known ratio."""
    model = nn.Sequential(nn.Identity(), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, stats_every=1)
    x = torch.zeros(5, 8)
    x[:, :3] = 10.0
    x[:, 3] = -10.0
    model(x).sum().backward()
    opt.step()
    mon.log(1)
    mon.close()
    (rec,) = _records(mon, protocol.ACT_STATS)
    assert rec.data["saturated"][0] == pytest.approx(4 / 8)


def test_input_statistics_per_channel(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 2))
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    mon = tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, stats_every=1)
    x = torch.randint(0, 256, (4, 3, 8, 8)).float()
    x[0, :, 0, 0] = 255.0
    model(x).sum().backward()
    opt.step()
    mon.log(1)
    mon.close()
    (rec,) = _records(mon, protocol.INPUT_STATS)
    d = rec.data
    assert d["shape"] == [4, 3, 8, 8]
    per = x.transpose(0, 1).reshape(3, -1)
    np.testing.assert_allclose(d["mean"], per.mean(1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(d["std"], per.std(1, correction=0).numpy(), rtol=1e-5)
    np.testing.assert_array_equal(d["min"], per.amin(1).numpy())
    np.testing.assert_array_equal(d["max"], [255.0, 255.0, 255.0])


def test_two_dimensional_inputs_are_per_feature_capped(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(300, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, stats_every=1)
    x = torch.arange(2 * 300, dtype=torch.float32).reshape(2, 300)
    model(x).sum().backward()
    opt.step()
    mon.log(1)
    mon.close()
    (rec,) = _records(mon, protocol.INPUT_STATS)
    assert rec.data["shape"] == [2, 300]
    assert len(rec.data["mean"]) == 256
    np.testing.assert_array_equal(rec.data["min"], np.arange(256))
    np.testing.assert_array_equal(rec.data["max"], np.arange(300, 556))


def test_only_sampled_steps_and_training_forwards_are_measured(tmp_path: Path) -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    mon = tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, stats_every=3)
    for step in range(1, 10):
        model.eval()
        with torch.no_grad():
            model(torch.rand(2, 4))  # evaluation forwards never consume the sample
        model.train()
        model(torch.rand(16, 4)).sum().backward()
        opt.step()
        mon.log(step)
    mon.close()
    assert [r.step for r in _records(mon, protocol.ACT_STATS)] == [3, 6, 9]
    assert [r.step for r in _records(mon, protocol.INPUT_STATS)] == [3, 6, 9]
    assert [r.step for r in _records(mon, protocol.PARAM_STATS)] == [3, 6, 9]


def test_a_nan_output_is_flagged(tmp_path: Path) -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    mon = tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, stats_every=1)
    x = torch.rand(4, 4)
    x[0, 0] = math.nan
    model(x).sum().backward()
    opt.step()
    mon.log(1)
    mon.close()
    (rec,) = _records(mon, protocol.ACT_STATS)
    assert rec.data["nonfinite"].tolist() == [1] * 6


def test_hooks_are_gone_after_close_and_off_when_asked(tmp_path: Path) -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
    mon = tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, stats_every=1)
    assert sum(len(m._forward_hooks) for m in model.modules()) == 7
    mon.close()
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()] == before
    assert not opt._optimizer_step_post_hooks
    mon = tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, stats_every=1, activations=False)
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()] == before
    mon.close()
    assert not _records(mon, protocol.MODULES)


def test_a_deep_copy_of_the_watched_model_is_not_measured(tmp_path: Path) -> None:
    import copy

    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    mon = tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, stats_every=1)
    copy.deepcopy(model)(torch.rand(2, 4))  # a sanity check's copy: must not consume the armed sample
    model(torch.rand(16, 4)).sum().backward()
    opt.step()
    mon.log(1)
    mon.close()
    (rec,) = _records(mon, protocol.ACT_STATS)
    assert rec.data["dead"][1] == pytest.approx(K_DEAD / N_FEATURES)


def test_outputs_and_gradients_are_bit_identical_with_and_without(tmp_path: Path) -> None:
    def run(watched: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        torch.manual_seed(3)
        model = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(inplace=True),
            nn.Flatten(),
            nn.Linear(4 * 8 * 8, 8),
            nn.Tanh(),
            nn.Linear(8, 3),
        )
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        mon = tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, stats_every=1) if watched else None
        outs = []
        for step in range(1, 6):
            x = torch.randn(8, 1, 8, 8)
            out = model(x)
            outs.append(out.detach().clone())
            opt.zero_grad()
            out.square().mean().backward()
            opt.step()
            if mon is not None:
                mon.log(step)
        if mon is not None:
            mon.close()
        return outs, [p.grad.clone() for p in model.parameters()]  # type: ignore[union-attr]

    a, b = run(False), run(True)
    for x, y in zip([*a[0], *a[1]], [*b[0], *b[1]], strict=True):
        assert torch.equal(x, y)


def test_modules_not_called_are_nan_and_a_model_without_watched_modules_still_reports_its_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(3, 2)
            self.unused = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    for model, modules in ((Odd(), 2), (nn.Bilinear(3, 3, 1), 0)):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        mon = tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, stats_every=1)
        x = torch.ones(4, 3)
        out = model(x) if modules else model(x, x)
        out.sum().backward()
        opt.step()
        mon.log(1)
        mon.close()
        assert mon.enabled is False and len(_records(mon, protocol.INPUT_STATS)) == 1
        acts = _records(mon, protocol.ACT_STATS)
        if modules:
            (rec,) = acts
            assert not np.isnan(rec.data["mean"][0]) and np.isnan(rec.data["mean"][1])
        else:
            assert not acts and _records(mon, protocol.MODULES)[0].data == {"modules": []}
        assert "monitoring disabled" not in capsys.readouterr().err
