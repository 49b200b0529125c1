"""Weight and gradient histograms (``histograms``): equal to ``numpy.histogram`` per tensor, NaN and Inf counted
apart, sampled as asked, harmless to training."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import tuimon_agent
from tuimon_agent import histograms, protocol
from tuimon_agent.monitor import DEFAULT_HIST_BINS, DEFAULT_HIST_EVERY
from tuimon_agent.runfile import RunFileReader


class Net(nn.Module):
    """A small CNN + MLP with a constant bias that never changes (zero gradient: ``lo == hi``) and an unused layer
    (no gradient at all)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 3))
        self.dead = nn.Linear(16, 16)
        self.unused = nn.Linear(3, 3)  # never called: its gradients stay None
        with torch.no_grad():
            # every unit below zero: ReLU passes no gradient, the bias stays constant
            self.dead.bias.fill_(-1e3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head[:3](self.features(x))
        return self.head[3](h + torch.relu(self.dead(h)))


def _records(mon: tuimon_agent.Monitor, kind: str) -> list[protocol.Record]:
    assert mon.run_file is not None
    with RunFileReader(mon.run_file) as r:
        return [rec for rec in r.records() if rec.kind == kind]


def _train(model: nn.Module, opt: Any, steps: int, mon: Any = None) -> dict[int, list[tuple[Any, Any]]]:
    """Train; returns, per step, every parameter's ``(weight, grad or None)`` as numpy after ``optimizer.step()``."""
    seen = {}
    for step in range(1, steps + 1):
        x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen[step] = [
            (p.detach().numpy().copy(), None if p.grad is None else p.grad.numpy().copy())
            for p in model.parameters()
        ]
        if mon is not None:
            mon.log(loss=loss)
    return seen


def _check(h: dict[str, Any], values: np.ndarray | None, bins: int, j: int) -> None:
    """One tensor's histogram against ``numpy.histogram`` of its finite values."""
    if values is None:
        assert math.isnan(h["lo"][j]) and math.isnan(h["hi"][j])
        assert not h["counts"][j].any() and h["nan"][j] == 0 and h["inf"][j] == 0
        return
    v = values.ravel()
    finite = v[np.isfinite(v)]
    assert h["nan"][j] == np.isnan(v).sum()
    assert h["inf"][j] == np.isinf(v).sum()
    if not finite.size:
        assert math.isnan(h["lo"][j]) and math.isnan(h["hi"][j]) and not h["counts"][j].any()
        return
    lo, hi = h["lo"][j], h["hi"][j]
    assert lo == finite.min() and hi == finite.max()
    ref, _ = np.histogram(finite, bins=bins, range=(float(lo), float(hi)))
    np.testing.assert_array_equal(h["counts"][j], ref)
    assert h["counts"][j].sum() == finite.size


@pytest.mark.parametrize("bins", [DEFAULT_HIST_BINS, 7])
def test_counts_equal_numpy_histogram(tmp_path: Path, bins: int) -> None:
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    opts = {} if bins == DEFAULT_HIST_BINS else {"hist_bins": bins}
    mon = tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, hist_every=2, **opts)
    seen = _train(model, opt, 4, mon)
    mon.close()
    recs = _records(mon, protocol.HISTOGRAMS)
    assert [r.step for r in recs] == [2, 4]
    n_params = len(_records(mon, protocol.LAYERS)[-1].data["params"])
    for rec in recs:
        d = rec.data
        assert d["bins"] == bins
        for key, row in (("weight", 0), ("grad", 1)):
            h = d[key]
            assert h["counts"].shape == (n_params, bins) and h["counts"].dtype == np.int32
            assert h["lo"].dtype == np.float32 and h["nan"].dtype == np.int32 and h["inf"].dtype == np.int32
            for j, pair in enumerate(seen[rec.step]):
                _check(h, pair[row], bins, j)
    names = [e["name"] for e in _records(mon, protocol.LAYERS)[-1].data["params"]]
    g = recs[0].data["grad"]
    dead = names.index("dead.bias")
    # lo == hi: every value in the middle bin
    assert g["lo"][dead] == g["hi"][dead] == 0.0 and g["counts"][dead][bins // 2] == 16
    assert math.isnan(g["lo"][names.index("unused.weight")])  # no gradient


def test_nan_and_inf_are_counted_apart(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    target = model.head[1].weight

    def poison(g: torch.Tensor) -> torch.Tensor:
        g = g.clone()
        g[0, 0] = math.nan
        g[1, 1] = math.inf
        return g

    target.register_hook(poison)
    mon = tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, hist_every=1)
    seen = _train(model, opt, 1, mon)
    mon.close()
    (rec,) = _records(mon, protocol.HISTOGRAMS)
    j = [n for n, _ in model.named_parameters()].index("head.1.weight")
    # SGD turned the NaN and the Inf gradient into the weight too
    for key, row in (("grad", 1), ("weight", 0)):
        h = rec.data[key]
        assert h["nan"][j] == 1 and h["inf"][j] == 1
        assert h["counts"][j].sum() == target.numel() - 2
        assert np.isfinite(h["lo"][j]) and np.isfinite(h["hi"][j])
        for k, pair in enumerate(seen[1]):
            _check(h, pair[row], DEFAULT_HIST_BINS, k)


def test_all_non_finite_tensor_and_extremes() -> None:
    """A tensor with no finite entry (NaN lo/hi, zero counts), subnormal ranges and float64 parameters."""
    model = nn.Module()
    model.a = nn.Parameter(torch.tensor([math.nan, math.inf, -math.inf, math.nan]))
    model.b = nn.Parameter(torch.randn(1000) * 1e-40)  # subnormal: 1 / width overflows float32
    model.c = nn.Parameter(torch.randn(50, dtype=torch.float64))
    model.d = nn.Parameter(torch.tensor([3.0] * 5 + [4.0] * 3))  # values on the edges
    model.b.grad = torch.randn(1000) * 1e30
    got: list[Any] = []
    h = histograms.ParamHist(
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        every=1,
        bins=4,
        enqueue=lambda kind, step, payload: got.append((kind, payload)),
        step_of=lambda: 1,
        on_error=lambda exc: (_ for _ in ()).throw(exc),
    )
    h.install()
    h.measure()
    h.remove()
    assert [k for k, _ in got] == [
        "layers",
        "hist",
    ]  # without ParamStats: the table comes with the first pass
    d = histograms.hist_payload(*got[1][1])
    w, g = d["weight"], d["grad"]
    assert (w["nan"][0], w["inf"][0]) == (2, 2)
    assert math.isnan(w["lo"][0]) and math.isnan(w["hi"][0]) and not w["counts"][0].any()
    for j, p in enumerate(model.parameters()):
        _check(w, p.detach().float().numpy(), 4, j)
        _check(g, None if p.grad is None else p.grad.float().numpy(), 4, j)
    assert list(w["counts"][3]) == [5, 0, 0, 3]


@pytest.mark.parametrize("bins", [32, 1, 255])
def test_every_cpu_path_equals_numpy(bins: int) -> None:
    """Large finite tensors (int32 fast path), small ones past one concatenated chunk, a large one with a NaN and a
    huge range (the general path), edge values and a constant tensor, weights and gradients, in one pass."""
    torch.manual_seed(0)
    model = nn.Module()
    model.big = nn.Parameter(torch.randn(300, 300))
    model.big_bad = nn.Parameter(torch.randn(5000) * 1e37)
    with torch.no_grad():
        model.big_bad[7] = math.nan
        model.big_bad[8] = 3e38
    model.edges = nn.Parameter(torch.linspace(-1, 1, bins + 1).repeat(40))  # exactly numpy's edges, > 4096
    model.const = nn.Parameter(torch.full((6000,), 0.25))
    model.smalls = nn.ParameterList([nn.Parameter(torch.randn(4000) * (k + 1)) for k in range(300)])
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    got: list[Any] = []
    h = histograms.ParamHist(
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        every=1,
        bins=bins,
        enqueue=lambda kind, step, payload: got.append((kind, payload)),
        step_of=lambda: 1,
        on_error=lambda exc: (_ for _ in ()).throw(exc),
    )
    h.measure()
    d = histograms.hist_payload(*got[-1][1])
    for j, p in enumerate(model.parameters()):
        _check(d["weight"], p.detach().numpy(), bins, j)
        _check(d["grad"], p.grad.numpy(), bins, j)
    assert d["weight"]["nan"][1] == 1


def test_sampled_steps_off_and_bad_values(tmp_path: Path) -> None:
    for opts, expected, layers in (
        ({"hist_every": 3}, [3, 6, 9], 1),
        ({"hist_every": 0}, [], 1),
        ({"hist_every": 4, "stats_every": 0}, [4, 8], 1),  # the histograms queue the layers table themselves
        ({}, [], 1),  # the default interval is longer than this run
    ):
        torch.manual_seed(0)
        model = Net()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        run_dir = tmp_path / f"{len(expected)}-{len(opts)}"
        mon = tuimon_agent.watch(model, opt, dir=run_dir, publish=False, **opts)
        _train(model, opt, 10, mon)
        mon.close()
        assert [r.step for r in _records(mon, protocol.HISTOGRAMS)] == expected
        assert len(_records(mon, protocol.LAYERS)) == layers
    assert DEFAULT_HIST_EVERY > 10
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for bad in (-1, 1.5, True, "2", None):
        with pytest.raises(ValueError, match="hist_every"):
            tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, hist_every=bad)
    for bad in (0, 4097, 2.0, False):
        with pytest.raises(ValueError, match="hist_bins"):
            tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, hist_bins=bad)


def test_training_is_bit_identical_with_and_without_histograms(tmp_path: Path) -> None:
    def run(watched: bool) -> tuple[list[torch.Tensor], list[float]]:
        torch.manual_seed(1)
        model = Net()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        mon = None
        if watched:
            mon = tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, stats_every=0, hist_every=1)
        losses = []
        for _ in range(5):
            x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        if mon is not None:
            mon.close()
            assert len(_records(mon, protocol.HISTOGRAMS)) == 5
        return [p.detach().clone() for p in model.parameters()], losses

    (bare, bare_losses), (watched, watched_losses) = run(False), run(True)
    assert bare_losses == watched_losses
    for a, b in zip(bare, watched, strict=True):
        assert torch.equal(a, b)


def test_close_removes_the_hook(tmp_path: Path) -> None:
    for opts in ({"hist_every": 1}, {"hist_every": 1, "stats_every": 0}):
        model = Net()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        mon = tuimon_agent.watch(model, opt, dir=tmp_path / str(len(opts)), publish=False, **opts)
        # with ParamStats the histograms run inside its post hook: no hook of their own
        assert len(opt._optimizer_step_post_hooks) == 2
        _train(model, opt, 2, mon)
        mon.close()
        assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
        assert len(_records(mon, protocol.HISTOGRAMS)) == 2
