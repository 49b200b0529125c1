"""Activation and input statistics in the viewer: ``ActState`` (headless) and the layers screen (Pilot).

The run file is recorded by the real agent from a seeded CNN on one thread whose first convolution has a bias that
kills 3 of its 8 channels for every input (a dead ReLU) and whose Tanh is fed large values (saturation), then
made deterministic like ``conftest.recorded_run``. Nothing in the viewer is patched.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import _make_deterministic
from test_app import wait_loaded
from textual.pilot import Pilot
from textual.widgets import Static

import tuimon_agent
from tuimon.app import make_app
from tuimon.layers import ACT_STATS, INPUT_STATS, MODULES, ActState
from tuimon.screens import LayersScreen
from tuimon.source import FileSource
from tuimon.state import RunState
from tuimon.widgets import GradHeatmap, LayerTable
from tuimon.widgets.layer_table import ActTable, format_cell
from tuimon_agent import protocol

STEPS = 12
EVERY = 2
DEAD_CHANNELS, CHANNELS = 3, 8
MODULE_NAMES = ["conv1", "relu1", "conv2", "relu2", "fc1", "tanh", "fc2"]


def record_dead_relu_run(run_dir: Path) -> Path:
    """A seeded CNN on 0–255 images (scaled inside the model), statistics every 2 steps, one thread."""
    import torch

    nn = torch.nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, CHANNELS, 3, padding=1)
            self.relu1 = nn.ReLU()
            self.conv2 = nn.Conv2d(CHANNELS, 8, 3)
            self.relu2 = nn.ReLU()
            self.fc1 = nn.Linear(8, 16)
            self.tanh = nn.Tanh()
            self.fc2 = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.relu2(self.conv2(self.relu1(self.conv1(x / 255.0))))
            return self.fc2(self.tanh(self.fc1(h.mean(dim=(2, 3)))))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = Net()
        with torch.no_grad():
            model.conv1.bias[:DEAD_CHANNELS] = -100.0  # |w·x| <= 27 × 0.2: these channels never fire
            model.fc1.weight.mul_(40.0)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        mon = tuimon_agent.watch(model, opt, run="acts", dir=run_dir, publish=False, stats_every=EVERY)
        for step in range(1, STEPS + 1):
            x = torch.randint(0, 256, (8, 3, 8, 8)).float()
            x[0, :, 0, 0] = 255.0
            y = torch.randint(0, 3, (8,))
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.log(step, loss=loss.item())
        mon.close()
    finally:
        torch.set_num_threads(threads)
    assert mon.run_file is not None
    _make_deterministic(mon.run_file)
    return mon.run_file


@pytest.fixture(scope="module")
def acts_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_dead_relu_run(tmp_path_factory.mktemp("acts"))


def _modules(m: int) -> dict[str, Any]:
    return {"modules": [{"name": f"m{i}", "type": "ReLU" if i % 2 else "Linear"} for i in range(m)]}


def _acts(m: int, dead: float, **over: Any) -> dict[str, Any]:
    d = {
        "mean": np.zeros(m, np.float32),
        "std": np.ones(m, np.float32),
        "dead": np.full(m, dead, np.float32),
        "saturated": np.full(m, math.nan, np.float32),
        "nonfinite": np.zeros(m, np.uint8),
    }
    d.update(over)
    return d


# -- ActState (headless) --------------------------------------------------------------------------------------------


def test_act_state_keeps_a_bounded_max_merged_history() -> None:
    s = ActState(capacity=4)
    s.apply_modules(_modules(3))
    for step in range(1, 11):
        assert s.apply_stats(step, _acts(3, 0.5 if step == 3 else 0.1))
    assert s.samples == 10 and s.columns <= 4 and s.samples_per_column == 4
    values, bad = s.history("dead")
    assert values.shape == (3, s.columns) and not bad.any()
    assert values[0, 0] == pytest.approx(0.5)  # the spike at step 3 survives the merges
    first, last, count = s.steps()
    assert first[0] == 1 and last[-1] == 10 and count.sum() == 10
    assert s.nbytes() == 2 * 3 * 4 * (4 + 1)
    # A non-finite output marks both histories; a record of the wrong length is counted and ignored.
    assert s.apply_stats(11, _acts(3, 0.1, nonfinite=np.array([0, 1, 0], np.uint8)))
    assert s.history("saturated")[1][1, -1] and s.history("dead")[1][1, -1]
    assert not s.apply_stats(12, _acts(2, 0.1)) and s.mismatched == 1
    # The same index keeps the history; another one starts afresh.
    s.apply_modules(_modules(3))
    assert s.samples == 11
    s.apply_modules(_modules(4))
    assert s.samples == 0 and s.columns == 0


def test_run_state_routes_the_three_kinds_and_owners_map_to_their_activation() -> None:
    state = RunState()
    state.apply(protocol.Record(MODULES, 1, None, 1.0, _modules(4)))
    state.apply(protocol.Record(ACT_STATS, 2, 5, 1.0, _acts(4, 0.25)))
    inputs = {"shape": [2, 3], "mean": [1.0, 2.0, 3.0], "std": [0.0] * 3, "min": [0.0] * 3, "max": [9.0] * 3}
    state.apply(protocol.Record(INPUT_STATS, 3, 5, 1.0, inputs))
    acts = state.acts
    assert acts.names == ["m0", "m1", "m2", "m3"] and acts.latest_step == 5 and acts.inputs_step == 5
    assert (
        acts.inputs is not None
        and acts.inputs["shape"] == [2, 3]
        and acts.inputs["max"].tolist() == [9.0] * 3
    )
    assert state.unknown == 0
    # m0 (Linear) owns parameters: m1 (ReLU) follows it and speaks for it; m2 then m3 likewise.
    assert acts.for_param_modules(["m0", "m2"]) == {"m0": 1, "m2": 3}


# -- the layers screen ----------------------------------------------------------------------------------------------


async def _layers(pilot: Pilot) -> LayersScreen:
    await wait_loaded(pilot)
    await pilot.press("g")
    await pilot.pause()
    screen = pilot.app.screen
    assert isinstance(screen, LayersScreen)
    return screen


def _cells(table: Any, key: str) -> list[str]:
    return [c.plain for c in table.get_row(key)]


def _by_column(table: Any, key: str) -> dict[str, str]:
    """A row's cells by column key (at 80 columns the tensor table leaves out ``sat``; the activations have it)."""
    return {str(k.value): c for k, c in zip(table.columns, _cells(table, key), strict=True)}


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_the_layers_screen_shows_activations_and_inputs(acts_run: Path, size: tuple[int, int]) -> None:
    app = make_app(FileSource(acts_run))
    async with app.run_test(size=size) as pilot:
        screen = await _layers(pilot)
        acts = app.state.acts
        assert acts.names == MODULE_NAMES and acts.samples == STEPS // EVERY and acts.latest_step == STEPS
        assert acts.latest["dead"][1] == DEAD_CHANNELS / CHANNELS
        assert 0 < acts.latest["saturated"][5] <= 1
        # The tensor table's dead and sat columns: conv1's parameters show relu1's dead fraction, fc1's the tanh's
        # saturated fraction.
        table = screen.query_one(LayerTable)
        dead = format_cell("dead", DEAD_CHANNELS / CHANNELS).plain
        assert dead == "38%"
        conv1, fc1 = _by_column(table, "conv1.weight"), _by_column(table, "fc1.bias")
        sat = format_cell("dead", float(acts.latest["saturated"][5])).plain
        assert conv1["dead"] == dead and fc1["dead"] == "–"
        assert ("sat" in conv1) == (size[0] >= 100)  # at 80 columns "sat" gives way to the names (issue 14)
        if "sat" in conv1:
            assert conv1["sat"] == "–" and fc1["sat"] == sat
        # The input line: shape, per-channel ranges, 0–255 images reach 255.
        line = str(screen.query_one("#input-stats", Static).render())
        assert line.startswith("input 8×3×8×8 · 3 ch · mean ") and line.endswith("max 255")
        assert screen.query_one("#input-stats").region.width > 0
        # a: the activation table in place of the tensor table.
        act_table = screen.query_one(ActTable)
        assert not act_table.display
        await pilot.press("a")
        await pilot.pause()
        assert act_table.display and not table.display
        assert screen.query_one(GradHeatmap).has_focus  # the heatmap keeps its keys (issue 14)
        assert act_table.names == MODULE_NAMES
        row = _cells(act_table, "relu1")
        assert row[:2] == ["relu1", "ReLU"] and row[4:] == [dead, "–"]
        assert row[2] == format_cell("mean", float(acts.latest["mean"][1])).plain
        assert _cells(act_table, "tanh")[4:] == ["–", sat]
        assert act_table.region.bottom <= size[1] and act_table.region.right <= size[0]
        # a again: back to the tensors.
        await pilot.press("a")
        await pilot.pause()
        assert table.display and not act_table.display


async def test_both_tables_show_when_wide(acts_run: Path) -> None:
    app = make_app(FileSource(acts_run))
    async with app.run_test(size=(160, 48)) as pilot:
        screen = await _layers(pilot)
        tables = screen.query_one(LayerTable), screen.query_one(ActTable)
        assert all(t.display and t.region.height >= 5 for t in tables)
        assert tables[1].region.y >= tables[0].region.bottom


async def test_a_run_without_activation_statistics_keeps_the_table_as_it_was(tmp_path: Path) -> None:
    import torch

    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = tuimon_agent.watch(model, opt, dir=tmp_path, publish=False, stats_every=1, activations=False)
    for step in range(1, 3):
        model(torch.ones(1, 2)).sum().backward()
        opt.step()
        mon.log(step, loss=1.0)
    mon.close()
    assert mon.run_file is not None
    app = make_app(FileSource(mon.run_file))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _layers(pilot)
        table = screen.query_one(LayerTable)
        assert _by_column(table, "weight")["dead"] == "–"
        assert _by_column(table, "weight").get("sat", "–") == "–"
        assert not screen.query_one("#input-stats").display
        await pilot.press("a")
        await pilot.pause()
        assert table.display and not screen.query_one(ActTable).display
