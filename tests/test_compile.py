"""Under ``torch.compile`` (CPU inductor): parameter statistics and histograms measure the eager parameters, equal to
an uncompiled twin's; activation statistics are off and one ``activations_unavailable`` event says so; nothing
breaks the compiled graph; a NaN is still traced to its step through the loss."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import tuimon_agent
from tuimon_agent import protocol
from tuimon_agent.runfile import RunFileReader


def _compile_available() -> str | None:
    """Why ``torch.compile`` cannot run here, or ``None`` when a tiny function compiles and runs."""
    try:
        fn = torch.compile(lambda x: x * 2 + 1)
        return None if torch.equal(fn(torch.ones(2)), torch.full((2,), 3.0)) else "wrong result"
    except Exception as exc:  # no C compiler, unsupported Python, ...
        return f"{type(exc).__name__}: {exc}"


_WHY = _compile_available()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=f"torch.compile unavailable: {_WHY}")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def _records(mon: tuimon_agent.Monitor) -> list[protocol.Record]:
    assert mon.run_file is not None
    with RunFileReader(mon.run_file) as r:
        return list(r.records())


def _nonfinite(recs: list[protocol.Record]) -> list[dict[str, Any]]:
    return [r.data for r in recs if r.kind == protocol.EVENT and r.data.get("what") == "nonfinite"]


def _train(model: nn.Module, tmp_path: Path, steps: int, nan_at: int | None = None) -> list[protocol.Record]:
    """Train ``steps`` steps (``nan_at``: that step's loss times NaN, then on, up to 2000 steps, until the agent
    thread has written its ``nonfinite`` event, as a real run would go on meanwhile)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, stats_every=2, hist_every=3)
    torch.manual_seed(1)
    step = 0
    while step < steps or (nan_at is not None and step < 2000 and not _nonfinite(_records(mon))):
        step += 1
        x, y = torch.randn(16, 4), torch.randn(16, 2)
        loss = nn.functional.mse_loss(model(x), y)
        if step == nan_at:
            loss = loss * math.nan
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.log(loss=loss)
    mon.close()
    return _records(mon)


def test_compiled_model_statistics_equal_the_eager_twin(tmp_path: Path) -> None:
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(_model())
    got = _train(compiled, tmp_path / "compiled", 6)
    want = _train(_model(), tmp_path / "eager", 6)
    assert not torch._dynamo.utils.counters["graph_break"], dict(torch._dynamo.utils.counters["graph_break"])

    def kinds(recs: list[protocol.Record], kind: str) -> list[protocol.Record]:
        return [r for r in recs if r.kind == kind]

    (layers,) = kinds(got, protocol.LAYERS)
    assert [p["name"] for p in layers.data["params"]] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    stats, ref = kinds(got, protocol.PARAM_STATS), kinds(want, protocol.PARAM_STATS)
    assert [r.step for r in stats] == [r.step for r in ref] == [2, 4, 6]
    for a, b in zip(stats, ref, strict=True):
        for key in ("grad_norm", "weight_norm", "update_ratio"):
            np.testing.assert_allclose(a.data[key], b.data[key], rtol=1e-4, atol=1e-6)
    assert [r.step for r in kinds(got, protocol.HISTOGRAMS)] == [3, 6]
    assert not kinds(got, protocol.ACT_STATS) and kinds(want, protocol.ACT_STATS)
    events = [r.data for r in kinds(got, protocol.EVENT)]
    assert [e["what"] for e in events] == ["activations_unavailable"]
    assert "torch.compile" in events[0]["message"]


def test_a_nan_loss_under_compile_is_traced_by_a_forced_sample(tmp_path: Path) -> None:
    import torch._dynamo

    torch._dynamo.reset()
    (event,) = _nonfinite(_train(torch.compile(_model()), tmp_path, 10, nan_at=7))
    # No forward is checked under compile: the NaN loss of step 7 made the agent force a full sample of a later
    # step, where the update of step 7 has made every weight NaN; the step is the loss's, the layer not provable.
    assert (event["first_step"], event["of"], event["how"], event["exact"]) == (7, "weight", "forced", False)
    assert event["seen_at"] > 7 and event["weights"] == ["0", "2"]
