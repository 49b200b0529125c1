"""Hostile values and steps handed to ``log()``, ``log_eval()`` and ``log_check()`` in a real training loop: each
is dropped and counted (a ``bad_value`` or ``bad_step`` event, ``bad_values`` in the ``end`` record), nothing is
ever raised into the loop, and monitoring goes on (every later good value is in the run file)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

import tuimon_agent
from tuimon_agent import protocol
from tuimon_agent.runfile import RunFileReader

STEPS = 12
HOSTILE_AT = 5


class _FloatRaises:
    """A value whose ``__float__`` raises something other than TypeError/ValueError."""

    def __float__(self) -> float:
        raise ZeroDivisionError("no float here")


class _UnreadableMapping(Mapping[str, float]):
    """A mapping whose items cannot be read."""

    def __getitem__(self, key: str) -> float:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("cannot iterate")

    def __len__(self) -> int:
        return 1


def _records(mon: tuimon_agent.Monitor) -> list[protocol.Record]:
    assert mon.run_file is not None
    with RunFileReader(mon.run_file) as r:
        return list(r.records())


HOSTILE: dict[str, Callable[[tuimon_agent.Monitor], None]] = {
    "int beyond float": lambda mon: mon.log(hostile=10**400),
    "meta tensor": lambda mon: mon.log(hostile=torch.tensor(1.0, device="meta")),
    "meta tensor beside a good tensor": lambda mon: mon.log(
        hostile=torch.ones(1, device="meta"), also=torch.tensor(2.0)
    ),
    "sparse tensor": lambda mon: mon.log(hostile=torch.ones(1, 1).to_sparse()),
    "multi-element sparse tensor": lambda mon: mon.log(hostile=torch.ones(3, 3).to_sparse()),
    "__float__ raises": lambda mon: mon.log(hostile=_FloatRaises()),
    "log_eval int beyond float": lambda mon: mon.log_eval(hostile=10**400),
    "log_check of a non-result": lambda mon: mon.log_check(object()),
    "log_check whose payload cannot be encoded": lambda mon: mon.log_check(
        type("R", (), {"to_data": lambda self: {"x": object()}})()
    ),
    "a name that is not a string": lambda mon: mon.log({(1, 2): 1.0}),
    "an unreadable mapping": lambda mon: mon.log(_UnreadableMapping()),
    # With an optimizer that has not stepped since: the next log() used to compute "abc" + 1.
    "step='abc'": lambda mon: mon.log(step="abc", hostile=1.0),
    "step=object()": lambda mon: mon.log(step=object(), hostile=1.0),
    "step=10**30": lambda mon: mon.log(step=10**30, hostile=1.0),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_value_is_dropped_and_counted_and_monitoring_goes_on(tmp_path: Path, case: str) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = tuimon_agent.watch(model, opt, run="hostile", dir=tmp_path, stats_every=1)
    assert mon.enabled
    for step in range(1, STEPS + 1):
        loss = model(torch.randn(16, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.log(loss=loss, step=step)  # a tensor, read on the agent thread
        if step == HOSTILE_AT:
            HOSTILE[case](mon)  # never raises
            mon.log(after=float(step))  # the step after the previous one (no optimizer step since)
        if step % 4 == 0:
            mon.log_eval(val=float(step))
    assert mon.enabled, "one hostile value switched monitoring off"
    mon.close()
    recs = _records(mon)
    losses = [r.step for r in recs if r.kind == protocol.METRICS and "loss" in r.data["values"]]
    assert losses == list(range(1, STEPS + 1))
    after = [
        r.data["values"]["after"] for r in recs if r.kind == protocol.METRICS and "after" in r.data["values"]
    ]
    assert after == [float(HOSTILE_AT)]
    assert [
        r.data["values"]["val"] for r in recs if r.kind == protocol.EVAL and "val" in r.data["values"]
    ] == [
        4.0,
        8.0,
        12.0,
    ]
    assert len([r for r in recs if r.kind == protocol.PARAM_STATS]) == STEPS
    names = {n for r in recs if r.kind in (protocol.METRICS, protocol.EVAL) for n in r.data["values"]}
    assert all(type(n) is str for n in names)
    if "also" in names:  # a good tensor beside a bad one is still read
        assert [r.data["values"]["also"] for r in recs if "also" in r.data.get("values", {})] == [2.0]
    events = [r.data for r in recs if r.kind == protocol.EVENT]
    whats = [e["what"] for e in events]
    if case.startswith("step="):
        assert whats.count("bad_step") == 1
        assert [r.step for r in recs if r.kind == protocol.METRICS and "hostile" in r.data["values"]] == [
            None
        ]
    elif case == "sparse tensor":  # a one-element sparse tensor is a number after all
        assert [r.data["values"]["hostile"] for r in recs if "hostile" in r.data.get("values", {})] == [1.0]
    else:
        assert whats.count("bad_value") == 1, events
        assert "hostile" not in names
    end = recs[-1]
    assert end.kind == protocol.END and end.data["reason"] == "closed"
    assert end.data["steps"] == STEPS
    assert end.data.get("bad_values", 0) == (0 if case == "sparse tensor" else 1)


@pytest.mark.parametrize(
    "bad", ["abc", object(), [3], 10**30, 2.5], ids=["str", "object", "list", "huge", "float"]
)
@pytest.mark.parametrize("with_model", [False, True], ids=["no-model", "model"])
def test_a_bad_step_without_an_optimizer_never_poisons_later_logs(
    tmp_path: Path, bad: Any, with_model: bool
) -> None:
    model = torch.nn.Linear(3, 1) if with_model else None
    mon = tuimon_agent.watch(model, dir=tmp_path, stats_every=1)
    for step in range(1, 4):
        if model is not None:
            model(torch.randn(2, 3)).sum().backward()
        mon.log(loss=float(step))
    mon.log(step=bad, loss=-1.0)  # recorded without a step; the step count stays at 3
    assert mon.step == 3
    for _ in range(3):
        mon.log(loss=2.0)  # used to raise TypeError here, in the user's loop
    mon.log(step=bad, loss=-1.0)
    mon.log(step=np_int(10), loss=3.0)
    mon.log(loss=4.0)
    assert mon.enabled and mon.step == 11
    mon.close()
    recs = _records(mon)
    steps = [(r.step, r.data["values"]["loss"]) for r in recs if r.kind == protocol.METRICS]
    assert steps == [
        (1, 1.0),
        (2, 2.0),
        (3, 3.0),
        (None, -1.0),
        (4, 2.0),
        (5, 2.0),
        (6, 2.0),
        (None, -1.0),
        (10, 3.0),
        (11, 4.0),
    ]
    assert [r.data["what"] for r in recs if r.kind == protocol.EVENT] == ["bad_step"]
    assert recs[-1].kind == protocol.END and recs[-1].data["steps"] == 11 and recs[-1].data["bad_values"] == 2
    if with_model:
        assert {r.step for r in recs if r.kind == protocol.PARAM_STATS} >= {1, 2, 3, 4, 5, 6, 10, 11}


def np_int(n: int) -> Any:
    """A numpy integer step (converted, not a bad step)."""
    import numpy as np

    return np.int64(n)
