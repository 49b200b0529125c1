"""Per-parameter gradient and weight statistics (``param_stats``): equal to per-tensor references, sampled as
asked, harmless to training, removable, with the user's parameter names."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import tuimon_agent
from tuimon_agent import instruments, protocol
from tuimon_agent.monitor import DEFAULT_STATS_EVERY
from tuimon_agent.runfile import RunFileReader


class Net(nn.Module):
    """A small CNN + MLP with a dead layer (ReLU fed only negatives: exact-zero gradients) and an unused one."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 3))
        self.dead = nn.Linear(16, 16)
        self.unused = nn.Linear(3, 3)  # never called: its gradients stay None
        with torch.no_grad():
            self.dead.bias.fill_(-1e3)  # every unit below zero: ReLU passes no gradient at all

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head[:3](self.features(x))
        return self.head[3](h + torch.relu(self.dead(h)))


def _data(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 1, 8, 8), torch.randint(0, 3, (n,))


def _records(mon: tuimon_agent.Monitor, kind: str | None = None) -> list[protocol.Record]:
    assert mon.run_file is not None
    with RunFileReader(mon.run_file) as r:
        return [rec for rec in r.records() if kind is None or rec.kind == kind]


def _reference(params: list[torch.Tensor], before: list[torch.Tensor]) -> dict[str, np.ndarray]:
    """The statistics with plain per-tensor ops (after ``optimizer.step()``; ``before`` cloned ahead of it)."""
    ref: dict[str, list[float]] = {
        k: [] for k in ("norm", "max", "zero", "nonfinite", "has", "weight", "ratio")
    }
    for p, b in zip(params, before, strict=True):
        g = p.grad
        ref["has"].append(float(g is not None))
        if g is None:
            for k in ("norm", "max", "zero", "ratio"):
                ref[k].append(math.nan)
            ref["nonfinite"].append(0.0)
        else:
            ref["norm"].append(g.norm().item())
            ref["max"].append(g.abs().max().item())
            ref["zero"].append((g == 0).float().mean().item())
            ref["nonfinite"].append(float(not torch.isfinite(g).all().item()))
            ref["ratio"].append(((p.detach() - b).norm() / b.norm()).item())
        ref["weight"].append(p.detach().norm().item())
    return {k: np.array(v) for k, v in ref.items()}


def _train(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    steps: int,
    mon: tuimon_agent.Monitor | None = None,
    *,
    before_step: Callable[[int], None] | None = None,
    params: list[torch.Tensor] | None = None,
) -> dict[int, dict[str, np.ndarray]]:
    """Train ``steps`` steps; returns the per-tensor reference statistics of every step (when ``params``)."""
    refs = {}
    for step in range(1, steps + 1):
        x, y = _data()
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        if before_step is not None:
            before_step(step)
        before = [p.detach().clone() for p in params] if params is not None else []
        opt.step()
        if params is not None:
            refs[step] = _reference(params, before)
        if mon is not None:
            mon.log(loss=loss)
    return refs


def _check(rec: protocol.Record, ref: dict[str, np.ndarray]) -> None:
    d = rec.data
    close = {"rtol": 2e-5, "atol": 1e-7, "equal_nan": True}
    np.testing.assert_array_equal(d["has_grad"], ref["has"].astype(np.uint8))
    np.testing.assert_allclose(d["grad_norm"], ref["norm"], **close)
    np.testing.assert_allclose(d["grad_max"], ref["max"], **close)
    np.testing.assert_allclose(d["grad_zero"], ref["zero"], **close)
    np.testing.assert_array_equal(d["grad_nonfinite"], ref["nonfinite"].astype(np.uint8))
    np.testing.assert_allclose(d["weight_norm"], ref["weight"], **close)
    np.testing.assert_allclose(d["update_ratio"], ref["ratio"], rtol=1e-4, atol=1e-7, equal_nan=True)
    has = ref["has"] == 1
    expected_global = math.sqrt(float(np.sum(ref["norm"][has] ** 2)))
    assert d["global_grad_norm"] == pytest.approx(expected_global, rel=1e-5, nan_ok=True)
    assert d["grad_norm"].dtype == np.float32 and d["grad_nonfinite"].dtype == np.uint8


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-4),
        lambda ps: torch.optim.Adam(ps, lr=1e-3),
    ],
    ids=["sgd-momentum", "adam"],
)
def test_statistics_equal_per_tensor_references(tmp_path: Path, make_opt: Callable[..., Any]) -> None:
    torch.manual_seed(0)
    model = Net()
    opt = make_opt(model.parameters())
    mon = tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, stats_every=1)
    params = list(model.parameters())
    refs = _train(model, opt, 4, mon, params=params)
    mon.close()

    (layers,) = _records(mon, protocol.LAYERS)
    assert layers.step is None
    table = layers.data["params"]
    assert [e["name"] for e in table] == [n for n, _ in model.named_parameters()]
    assert table[0] == {
        "name": "features.0.weight",
        "shape": [4, 1, 3, 3],
        "numel": 36,
        "module": "features.0",
        "module_type": "Conv2d",
    }
    stats = _records(mon, protocol.PARAM_STATS)
    assert [r.step for r in stats] == [1, 2, 3, 4]
    for rec in stats:
        _check(rec, refs[rec.step])
    names = [e["name"] for e in table]
    d = stats[-1].data
    assert (
        d["grad_zero"][names.index("dead.weight")] == 1.0 and d["grad_zero"][names.index("dead.bias")] == 1.0
    )
    assert d["has_grad"][names.index("unused.weight")] == 0
    assert math.isnan(d["update_ratio"][names.index("unused.weight")])
    assert not _records(mon, protocol.EVENT)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_one_non_finite_entry_is_flagged_and_its_first_appearance_reported(
    tmp_path: Path, bad: float
) -> None:
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    mon = tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, stats_every=1)
    params = list(model.parameters())

    def poison(step: int) -> None:
        if step == 3:
            model.head[1].weight.grad[5, 7] = bad  # one entry of one tensor
        if step == 4:
            model.features[0].bias.grad[0] = bad  # earlier in model order, but a later step

    refs = _train(model, opt, 4, mon, before_step=poison, params=params)
    mon.close()
    names = [n for n, _ in model.named_parameters()]
    stats = {r.step: r.data for r in _records(mon, protocol.PARAM_STATS)}
    flagged = stats[3]["grad_nonfinite"]
    assert flagged.tolist() == [int(n == "head.1.weight") for n in names]
    _check(_records(mon, protocol.PARAM_STATS)[2], refs[3])
    assert stats[4]["grad_nonfinite"][names.index("features.0.bias")] == 1
    assert not math.isfinite(stats[3]["global_grad_norm"])
    events = [r.data for r in _records(mon, protocol.EVENT) if r.data.get("what") == "nonfinite"]
    assert events == [
        {
            "what": "nonfinite",
            "message": "first non-finite gradient at step 3 in head.1.weight",
            "step": 3,
            "first_step": 3,
            "param": "head.1.weight",
            "layer": "head.1",
            "of": "gradient",
            "how": "sampled",
            "exact": True,  # stats_every=1: step 2 was measured and finite
            "seen_at": 3,
            "weights": [],
        }
    ]


def test_sampling_interval_default_and_off(tmp_path: Path) -> None:
    n = DEFAULT_STATS_EVERY
    for every, expected in ((3, [3, 6, 9]), (None, [n]), (0, [])):
        torch.manual_seed(0)
        model = Net()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        opts: dict[str, Any] = {} if every is None else {"stats_every": every}
        mon = tuimon_agent.watch(model, opt, dir=tmp_path / str(every), publish=False, **opts)
        _train(model, opt, 10 if every else n, mon)
        mon.close()
        assert [r.step for r in _records(mon, protocol.PARAM_STATS)] == expected
        assert len(_records(mon, protocol.LAYERS)) == (0 if every == 0 else 1)
    with pytest.raises(ValueError, match="stats_every=-1"):
        tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, stats_every=-1)


def test_two_hundred_parameter_tensors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(100):
        layers += [nn.Linear(16, 16), nn.Tanh()]
    model = nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    mon = tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, stats_every=2)
    params = list(model.parameters())
    refs: dict[int, Any] = {}
    for step in range(1, 5):
        loss = model(torch.randn(4, 16)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        before = [p.detach().clone() for p in params]
        opt.step()
        refs[step] = _reference(params, before)
        mon.log(loss=loss)
    mon.close()
    stats = _records(mon, protocol.PARAM_STATS)
    assert [r.step for r in stats] == [2, 4]
    assert len(stats[0].data["grad_norm"]) == 200
    for rec in stats:
        _check(rec, refs[rec.step])


def test_training_is_bit_identical_with_and_without_statistics(tmp_path: Path) -> None:
    def run(watched: bool) -> tuple[list[torch.Tensor], list[float]]:
        torch.manual_seed(1)
        model = Net()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        mon = tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, stats_every=1) if watched else None
        losses = []
        for _ in range(5):
            x, y = _data()
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        if mon is not None:
            mon.close()
        return [p.detach().clone() for p in model.parameters()], losses

    (bare, bare_losses), (watched, watched_losses) = run(False), run(True)
    assert bare_losses == watched_losses
    for a, b in zip(bare, watched, strict=True):
        assert torch.equal(a, b)


def test_close_removes_every_hook(tmp_path: Path) -> None:
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, stats_every=1)
    # pre: ParamStats and the live-commands controller; post: the monitor's and ParamStats'
    assert len(opt._optimizer_step_pre_hooks) == 2 and len(opt._optimizer_step_post_hooks) == 2
    _train(model, opt, 2, mon)
    mon.close()
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
    mon.close()


def test_wrapped_models_report_the_users_names(tmp_path: Path) -> None:
    torch.manual_seed(0)
    inner = Net()
    wrapped = torch.compile(nn.DataParallel(inner), backend="eager")  # no GPU: DataParallel calls the module
    assert next(n for n, _ in wrapped.named_parameters()).startswith("_orig_mod.module.")
    assert instruments.unwrap(wrapped) is inner
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.01)
    mon = tuimon_agent.watch(wrapped, opt, dir=tmp_path, publish=False, stats_every=1)
    _train(wrapped, opt, 2, mon)
    mon.close()
    (layers,) = _records(mon, protocol.LAYERS)
    assert [e["name"] for e in layers.data["params"]] == [n for n, _ in inner.named_parameters()]
    assert len(_records(mon, protocol.PARAM_STATS)) == 2


def test_a_changed_parameter_set_sends_a_new_table(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, stats_every=1)
    _train(model, opt, 2, mon)
    model.extra = nn.Linear(2, 2)
    _train(model, opt, 1, mon)
    mon.close()
    layers = _records(mon, protocol.LAYERS)
    assert [r.step for r in layers] == [None, 3]
    assert layers[1].data["params"][-1]["name"] == "extra.bias"
    last = _records(mon, protocol.PARAM_STATS)[-1].data
    assert len(last["grad_norm"]) == len(layers[1].data["params"]) and last["has_grad"][-1] == 0


def test_a_failing_hook_disables_monitoring_with_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(self: Any) -> None:
        raise RuntimeError("instrument broke")

    monkeypatch.setattr(instruments.ParamStats, "_measure_after", boom)
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, stats_every=1)
    _train(model, opt, 3, mon)  # does not raise
    assert not mon.enabled
    mon.close()
    assert capsys.readouterr().err.count("instrument broke") == 1
    assert not _records(mon, protocol.PARAM_STATS)


def test_the_hello_names_the_users_parameters_through_wrappers(tmp_path) -> None:  # noqa: ANN001
    import torch

    import tuimon_agent
    from tuimon_agent.runfile import RunFileReader

    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    wrapped = torch.nn.DataParallel(net)
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    with tuimon_agent.watch(wrapped, opt, dir=tmp_path, publish=False) as mon:
        pass
    with RunFileReader(mon.run_file) as r:
        hello = next(r.records()).data
    assert [p["name"] for p in hello["model"]["params"]] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert hello["model"]["type"] == "Sequential"
