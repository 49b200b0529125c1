"""The cheap per-step pass (``watch(..., norms_every=N)``): ``grad_norms`` records between the full samples, equal
to per-tensor references, the non-finite gradient at its exact step, and every consumer (viewer state,
``tuimon diagnose``, the alert rules) working on such a run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import tuimon_agent
from tuimon.state import RunState
from tuimon_agent import protocol
from tuimon_agent.runfile import RunFileReader


class Net(nn.Module):
    """An MLP with an unused layer (its gradients stay ``None``: ``has_grad`` 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(6, 16)
        self.mid = nn.Linear(16, 16)
        self.head = nn.Linear(16, 3)
        self.unused = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.mid(torch.relu(self.stem(x)))))


StepHook = Callable[[int, Net], None]


def _train(
    tmp_path: Path, steps: int, *, before_step: StepHook | None = None, **opts: Any
) -> tuple[tuimon_agent.Monitor, dict[int, list[float]]]:
    """Train ``Net`` with Adam; returns the closed monitor and each step's per-tensor ``p.grad.norm()`` (NaN for
    a tensor without a gradient), taken right before ``optimizer.step()``."""
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    options: dict[str, Any] = {"stats_every": 5, "hist_every": 0, "norms_every": 1, **opts}
    mon = tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, **options)
    ref: dict[int, list[float]] = {}
    try:
        for step in range(1, steps + 1):
            x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            if before_step is not None:
                before_step(step, model)
            ref[step] = [math.nan if p.grad is None else p.grad.norm().item() for p in model.parameters()]
            opt.step()
            mon.log(loss=loss)
    finally:
        mon.close()
    return mon, ref


def _records(mon: tuimon_agent.Monitor, kind: str) -> list[protocol.Record]:
    assert mon.run_file is not None
    with RunFileReader(mon.run_file) as r:
        return [rec for rec in r.records() if rec.kind == kind]


def test_norms_equal_per_tensor_references_between_full_samples(tmp_path: Path) -> None:
    mon, ref = _train(tmp_path, 12)
    norms = {rec.step: rec.data for rec in _records(mon, protocol.GRAD_NORMS)}
    full = {rec.step: rec.data for rec in _records(mon, protocol.PARAM_STATS)}
    assert sorted(full) == [5, 10]  # the full samples still come every stats_every
    assert sorted(norms) == [s for s in range(1, 13) if s % 5]  # every other step: norms only
    for step, d in norms.items():
        assert set(d) == {"grad_norm", "grad_nonfinite", "has_grad", "global_grad_norm"}
        expected = np.array(ref[step])
        np.testing.assert_allclose(d["grad_norm"], expected, rtol=1e-5, equal_nan=True)
        assert list(d["has_grad"]) == [0 if math.isnan(v) else 1 for v in ref[step]]
        assert not d["grad_nonfinite"].any()
        total = math.sqrt(sum(v * v for v in ref[step] if not math.isnan(v)))
        assert d["global_grad_norm"] == pytest.approx(total, rel=1e-5)
    for step, d in full.items():  # the full pass is unchanged
        np.testing.assert_allclose(d["grad_norm"], np.array(ref[step]), rtol=1e-5, equal_nan=True)
        assert "update_ratio" in d and "weight_norm" in d


def test_norms_every_n_and_off_by_default(tmp_path: Path) -> None:
    mon, _ = _train(tmp_path / "n3", 12, norms_every=3)
    assert [r.step for r in _records(mon, protocol.GRAD_NORMS)] == [3, 6, 9, 12]
    mon, _ = _train(tmp_path / "off", 12, norms_every=None)
    assert _records(mon, protocol.GRAD_NORMS) == []
    assert len(_records(mon, protocol.PARAM_STATS)) == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "1"])
def test_an_invalid_norms_every_is_refused_with_its_value(tmp_path: Path, bad: Any) -> None:
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=f"norms_every={bad!r}"):
        tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, norms_every=bad)


def test_a_non_finite_gradient_is_flagged_at_its_exact_step(tmp_path: Path) -> None:
    """NaN in one gradient and Inf in another at step 7 (not a full sample), with a finite loss: the norms record of
    step 7 flags exactly those, and the run's ``nonfinite`` event names the gradient at step 7, exactly."""

    def corrupt(step: int, model: Net) -> None:
        if step == 7:
            assert model.stem.bias.grad is not None and model.mid.bias.grad is not None
            model.stem.bias.grad[0] = math.nan
            model.mid.bias.grad[1] = math.inf

    mon, _ = _train(tmp_path, 9, before_step=corrupt, activations=False)
    names = [n for n, _ in Net().named_parameters()]
    flagged = {
        rec.step: [names[i] for i in np.flatnonzero(rec.data["grad_nonfinite"])]
        for rec in _records(mon, protocol.GRAD_NORMS)
    }
    assert flagged[6] == []
    assert flagged[7] == ["stem.bias", "mid.bias"]
    (event,) = [r.data for r in _records(mon, protocol.EVENT) if r.data.get("what") == "nonfinite"]
    assert (event["first_step"], event["of"], event["param"], event["how"], event["exact"]) == (
        7,
        "gradient",
        "mid.bias",
        "norms",
        True,
    )


def test_the_viewer_state_merges_norms_and_full_samples(tmp_path: Path) -> None:
    """The run file of a norms_every=1 run, read into the viewer's RunState: every step has a grad_norm column
    value, the other statistics only at full samples (NaN = not measured, never 0), and the table's latest
    sample is the latest full one."""
    mon, ref = _train(tmp_path, 12)
    assert mon.run_file is not None
    state = RunState()
    with RunFileReader(mon.run_file) as r:
        for rec in r.records():
            state.apply(rec)
    layers = state.layers
    assert layers.mismatched == 0
    first, last, count = layers.steps()
    assert list(first) == list(range(1, 13)) and list(count) == [1] * 12
    grad, grad_bad = layers.history("grad_norm")
    np.testing.assert_allclose(grad.T, np.array([ref[s] for s in range(1, 13)]), rtol=1e-5, equal_nan=True)
    assert not grad_bad.any()
    ratio, _ = layers.history("update_ratio")
    measured = [int(s) for s, col in zip(first, ratio.T, strict=True) if np.isfinite(col).any()]
    assert measured == [5, 10]
    assert layers.latest_step == 10 and "weight_norm" in layers.latest
    steps, _values = layers.global_grad_norm.tail_points(100)
    assert list(steps) == list(range(1, 13))


def test_diagnose_and_the_alert_rules_accept_a_healthy_norms_run(tmp_path: Path) -> None:
    """A healthy run with norms_every=1 raises no alert (live, in the run file) and ``tuimon diagnose`` reads it."""
    mon, _ = _train(tmp_path, 60, stats_every=10)
    assert len(_records(mon, protocol.GRAD_NORMS)) == 54
    assert _records(mon, protocol.ALERT) == []
    res = subprocess.run(
        [sys.executable, "-m", "tuimon", "diagnose", "--json", str(mon.run_file)],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["alerts"] == []  # recomputed from the run file: no alert either
