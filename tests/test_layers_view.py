"""Per-layer statistics in the viewer: ``LayerState`` (headless), the layers screen (Pilot) and its look (snapshots).

The run files are recorded by the real agent (``tuimon_agent.watch(model, optimizer, stats_every=1)``) from seeded
torch training loops on one thread, then made deterministic like ``conftest.recorded_run`` (timestamps, run id, pid,
host); nothing in the viewer is patched. Values depend on the torch build, so a different torch may need
``pytest --snapshot-update``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import _make_deterministic
from test_app import wait_loaded
from textual import events
from textual.pilot import Pilot
from textual.widgets import Input, Static

import tuimon_agent
from tuimon.app import REPAINT_INTERVAL, make_app
from tuimon.layers import HISTORY_STATS, LAYERS, PARAM_STATS, LayerState
from tuimon.messages import SourceUpdated
from tuimon.screens import LayersScreen, OverviewScreen
from tuimon.screens.layers import EMPTY_NOTE
from tuimon.series import CHUNK
from tuimon.source import FileSource, SourceUpdate
from tuimon.state import RunState
from tuimon.widgets import GradHeatmap, LayerTable
from tuimon.widgets.grad_heatmap import NONFINITE_COLOR, fill_rows, group_rows, pair_label
from tuimon.widgets.layer_table import ActTable
from tuimon_agent import protocol

CNN_STEPS = 60
NAN_STEP = 40
"""The CNN run's step whose ``fc2.bias`` gradient is NaN (the loop then undoes that step's update)."""
CNN_NAMES = [
    "conv1.weight",
    "conv1.bias",
    "bn1.weight",
    "bn1.bias",
    "conv2.weight",
    "conv2.bias",
    "fc1.weight",
    "fc1.bias",
    "fc2.weight",
    "fc2.bias",
]


# -- recordings -----------------------------------------------------------------------------------------------------


def _one_thread(fn: Any) -> Any:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same reduction order, so the same floats, on any machine
    try:
        return fn(torch)
    finally:
        torch.set_num_threads(threads)


def record_cnn_run(run_dir: Path) -> Path:
    """A small seeded CNN (10 parameter tensors) learning random 8×8 images for 60 steps, statistics every step;
    at step 40 one gradient is made NaN (and the step undone, as a NaN guard would). Deterministic file."""

    def loop(torch: Any) -> Path:
        nn = torch.nn
        torch.manual_seed(0)
        model = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(1, 4, 3, padding=1),
                bn1=nn.BatchNorm2d(4),
                relu1=nn.ReLU(),
                conv2=nn.Conv2d(4, 8, 3, stride=2, padding=1),
                relu2=nn.ReLU(),
                flat=nn.Flatten(),
                fc1=nn.Linear(8 * 4 * 4, 16),
                relu3=nn.ReLU(),
                fc2=nn.Linear(16, 4),
            )
        )
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        x = torch.randn(64, 1, 8, 8)
        y = torch.randint(0, 4, (64,))
        mon = tuimon_agent.watch(model, opt, run="cnn", dir=run_dir, publish=False, stats_every=1)
        try:
            for step in range(1, CNN_STEPS + 1):
                idx = torch.randint(0, 64, (16,))
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                if step == NAN_STEP:
                    saved = model.fc2.bias.detach().clone()
                    model.fc2.bias.grad[0] = float("nan")
                opt.step()
                if step == NAN_STEP:
                    with torch.no_grad():
                        model.fc2.bias.copy_(saved)
                mon.log(loss=loss.item())
        finally:
            mon.close()
        assert mon.run_file is not None
        return mon.run_file

    path = _one_thread(loop)
    _make_deterministic(path)
    return path


def record_mlp_run(run_dir: Path, steps: int = 8) -> Path:
    """A deep MLP of 100 Linear layers in 10 stages (``stage3.4.weight``): 200 parameter tensors."""

    def loop(torch: Any) -> Path:
        nn = torch.nn
        torch.manual_seed(0)
        model = nn.Sequential(
            OrderedDict(
                (f"stage{s}", nn.Sequential(*(nn.Linear(8, 8) for _ in range(10)))) for s in range(10)
            )
        )
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        x, y = torch.randn(32, 8), torch.randn(32, 8)
        mon = tuimon_agent.watch(model, opt, run="mlp200", dir=run_dir, publish=False, stats_every=1)
        try:
            for _ in range(steps):
                loss = nn.functional.mse_loss(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                mon.log(loss=loss.item())
        finally:
            mon.close()
        assert mon.run_file is not None
        return mon.run_file

    path = _one_thread(loop)
    _make_deterministic(path)
    return path


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CNN run file (10 tensors, 60 sampled steps, a NaN gradient at step 40), timestamps rewritten."""
    return record_cnn_run(tmp_path_factory.mktemp("cnn"))


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 200-tensor MLP run file (8 sampled steps)."""
    return record_mlp_run(tmp_path_factory.mktemp("mlp"))


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run with losses and no per-layer statistics (no model given to ``watch``)."""
    mon = tuimon_agent.watch(run="plain", dir=tmp_path_factory.mktemp("plain"), publish=False)
    try:
        for step in range(1, 11):
            mon.log(loss=1.0 / step, step=step)
    finally:
        mon.close()
    assert mon.run_file is not None
    return mon.run_file


# -- LayerState -----------------------------------------------------------------------------------------------------


def _index(p: int) -> dict[str, Any]:
    return {
        "params": [
            {"name": f"l{i}.weight", "shape": [2, 2], "numel": 4, "module": f"l{i}", "module_type": "Linear"}
            for i in range(p)
        ]
    }


def _stats(p: int, value: float | np.ndarray, **over: Any) -> dict[str, Any]:
    v = np.broadcast_to(np.asarray(value, dtype=np.float32), (p,)).copy()
    data: dict[str, Any] = {
        "grad_norm": v,
        "grad_max": v,
        "grad_zero": np.zeros(p, np.float32),
        "grad_nonfinite": np.zeros(p, np.uint8),
        "has_grad": np.ones(p, np.uint8),
        "weight_norm": np.ones(p, np.float32),
        "update_ratio": v / 100,
        "global_grad_norm": float(np.sqrt((v.astype(np.float64) ** 2).sum())),
    }
    data.update(over)
    return data


def test_layer_state_keeps_the_whole_run_in_bounded_columns() -> None:
    layers = LayerState(capacity=8)
    layers.apply_layers(_index(3))
    assert layers.names == ["l0.weight", "l1.weight", "l2.weight"] and layers.columns == 0
    before = layers.nbytes()
    for step in range(1, 101):
        # a spike of 1000 at step 37 only; everything else is the step number / 1000
        value = 1000.0 if step == 37 else step / 1000
        assert layers.apply_stats(step, _stats(3, value))
    assert (
        layers.nbytes() <= before + 16 * CHUNK
    )  # bounded: the matrices never grow (a series chunk may wait)
    assert layers.columns <= 8 and layers.samples == 100
    first, last, counts = layers.steps()
    assert first[0] == 1 and last[-1] == 100 and counts.sum() == 100
    assert all(last[:-1] + 1 == first[1:])  # the columns tile the run without a hole
    values, bad = layers.history("grad_norm")
    assert values.shape == (3, layers.columns) and not bad.any()
    spike = int(np.flatnonzero((first <= 37) & (last >= 37))[0])
    assert values[0, spike] == 1000.0  # the merge keeps the max: the one-step spike survives
    assert values[0, -1] == pytest.approx(0.1)
    assert layers.latest_step == 100 and layers.latest_value("grad_norm", 1) == pytest.approx(0.1)
    assert layers.global_grad_norm.count == 100 and layers.global_grad_norm.max() == pytest.approx(
        1000 * 3**0.5
    )


def test_layer_state_marks_nonfinite_apart_from_not_measured() -> None:
    layers = LayerState(capacity=4)
    layers.apply_layers(_index(3))
    layers.apply_stats(
        1,
        _stats(
            3,
            np.array([1.0, np.nan, np.inf]),
            has_grad=np.array([1, 0, 1], np.uint8),
            grad_nonfinite=np.array([0, 0, 1], np.uint8),
        ),
    )
    values, bad = layers.history("grad_norm")
    assert values[0, 0] == 1.0 and not bad[0, 0]
    assert np.isnan(values[1, 0]) and not bad[1, 0]  # no gradient: not measured, not an alarm
    assert np.isnan(values[2, 0]) and bad[2, 0]
    for step in range(2, 9):  # merges: a NaN mark survives them (OR)
        layers.apply_stats(step, _stats(3, 1.0))
    values, bad = layers.history("grad_norm")
    assert bad[2, 0] and not bad[0].any() and values[2, 0] == 1.0


def test_layer_state_ignores_and_counts_mismatched_records() -> None:
    layers = LayerState()
    assert not layers.apply_stats(1, _stats(3, 1.0))  # before any index
    layers.apply_layers(_index(3))
    assert not layers.apply_stats(2, _stats(4, 1.0))  # P = 4 for an index of 3
    assert not layers.apply_stats(3, {"grad_norm": "not an array"})
    assert layers.mismatched == 3 and layers.columns == 0 and layers.latest_step is None
    assert layers.apply_stats(4, _stats(3, 2.0)) and layers.columns == 1
    # The same index again keeps the history; another one starts afresh.
    layers.apply_layers(_index(3))
    assert layers.columns == 1
    layers.apply_layers(_index(5))
    assert layers.columns == 0 and len(layers.params) == 5 and layers.latest == {}


def test_run_state_applies_the_two_kinds() -> None:
    state = RunState()
    recs = [
        protocol.Record(LAYERS, 1, None, 1.0, _index(2)),
        protocol.Record(PARAM_STATS, 2, 5, 2.0, _stats(2, 0.5)),
        protocol.Record(PARAM_STATS, 3, 6, 3.0, _stats(7, 0.5)),
    ]
    state.apply_many(
        [protocol.decode(protocol.encode(r)) for r in recs]
    )  # numpy arrays through the wire format
    assert state.unknown == 0 and state.step == 6
    assert state.layers.samples == 1 and state.layers.mismatched == 1 and state.layers.latest_step == 5
    assert set(HISTORY_STATS) <= set(state.layers._values)
    state.reset()
    assert state.layers.params == []


def test_grouping_and_labels() -> None:
    names = [f"stage{s}.{i}.{w}" for s in range(10) for i in range(10) for w in ("weight", "bias")]
    assert group_rows(names, 200) == [(n, i, i + 1) for i, n in enumerate(names)]
    rows = group_rows(names, 36)
    assert [r[0] for r in rows] == [f"stage{s}.*" for s in range(10)] and rows[3][1:] == (60, 80)
    rows = group_rows(names, 4)  # not even the stages fit: equal runs of tensors
    assert len(rows) <= 4 and rows[0][1] == 0 and rows[-1][2] == 200
    assert pair_label("conv1.weight", "conv1.bias") == "conv1.weight/bias"
    assert pair_label("conv1.bias", "bn1.weight") == "conv1.bias/bn1.weight"


# -- the screen -------------------------------------------------------------------------------------------------------


async def _open_layers(pilot: Pilot) -> LayersScreen:
    await wait_loaded(pilot)
    await pilot.press("g")
    await pilot.pause()
    screen = pilot.app.screen
    assert isinstance(screen, LayersScreen)
    return screen


def _segments(heatmap: GradHeatmap, y: int) -> list[Any]:
    return list(heatmap.render_line(y))


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
async def test_layers_screen_shows_the_recorded_run(cnn_run: Path, size: tuple[int, int]) -> None:
    app = make_app(FileSource(cnn_run))
    async with app.run_test(size=size) as pilot:
        assert "g Layers" in " ".join(
            f"{b.binding.key} {b.binding.description}" for b in app.screen.active_bindings.values()
        )
        screen = await _open_layers(pilot)
        heatmap = screen.query_one(GradHeatmap)
        layers = app.state.layers
        assert layers.names == CNN_NAMES and layers.samples == CNN_STEPS and layers.mismatched == 0
        # Rows in model order, named, one a line (10 tensors fit: whole cells), nothing grouped.
        assert [r[0] for r in heatmap.rows] == CNN_NAMES and not heatmap.grouped
        lines = ["".join(s.text for s in _segments(heatmap, y)) for y in range(heatmap.size.height)]
        labels = [line.split("▸")[0].split("▀")[0].strip() for line in lines]
        assert [t for t in labels if t in CNN_NAMES] == CNN_NAMES and "▀" in lines[0]
        assert heatmap.region.right <= size[0] and heatmap.has_focus
        # The cursor starts on the newest sample of the first tensor; the status line has its exact value. (+ zooms
        # in to one sample a cell where the whole run does not fit the width.)
        await pilot.press("plus")
        await pilot.pause()
        grad = layers.latest_value("grad_norm", 0)
        assert grad is not None
        assert heatmap.status == f"conv1.weight · step {CNN_STEPS} · grad norm {grad:.6g}"
        await pilot.press("down", "left")
        await pilot.pause()
        values, _ = layers.history("grad_norm")
        first_steps, _, _ = layers.steps()
        col = int(np.flatnonzero(first_steps == CNN_STEPS - 1)[0])
        assert heatmap.status == f"conv1.bias · step {CNN_STEPS - 1} · grad norm {float(values[1, col]):.6g}"
        # 2: the update ratio, in the title and the status.
        await pilot.press("2")
        await pilot.pause()
        ratios, _ = layers.history("update_ratio")
        assert screen.stat == "update_ratio" and "update ratio" in str(heatmap.border_title)
        assert (
            heatmap.status == f"conv1.bias · step {CNN_STEPS - 1} · update ratio {float(ratios[1, col]):.6g}"
        )
        # The table lists every tensor at the latest sample.
        table = screen.query_one(LayerTable)
        assert table.names == CNN_NAMES and table.row_count == 10
        assert table.region.y >= heatmap.region.bottom or table.region.x >= heatmap.region.right
        # escape goes back; g opens it and g closes it.
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is app.overview
        await pilot.press("g")
        await pilot.pause()
        assert isinstance(app.screen, LayersScreen)
        await pilot.press("g")
        await pilot.pause()
        assert isinstance(app.screen, OverviewScreen)


async def test_a_nan_gradient_is_painted_in_the_nan_colour(cnn_run: Path) -> None:
    app = make_app(FileSource(cnn_run))
    async with app.run_test(size=(160, 48)) as pilot:
        screen = await _open_layers(pilot)
        heatmap = screen.query_one(GradHeatmap)
        assert heatmap.nonfinite_cells >= 1  # counted in the legend ...
        legend = "".join("".join(s.text for s in _segments(heatmap, y)) for y in range(heatmap.size.height))
        assert f"NaN/Inf {heatmap.nonfinite_cells}" in legend
        # ... and drawn, in fc2.bias's row only.
        row = ""
        for y in range(heatmap.size.height):
            segments = _segments(heatmap, y)
            text = "".join(s.text for s in segments)
            if "▀" not in text:
                break
            row = text.split("▸")[0].split("▀")[0].strip() or row  # a row's 2nd and 3rd lines have no label
            colours = {c.name for s in segments if s.style for c in (s.style.color, s.style.bgcolor) if c}
            assert (NONFINITE_COLOR in colours) == (row == "fc2.bias"), row
            assert ("×" in text) == (row == "fc2.bias"), (
                row
            )  # a shape too: told apart without colour (NO_COLOR)
        assert f"× NaN/Inf {heatmap.nonfinite_cells}" in legend and "■ not measured" in legend
        # The cursor reads it out (+: one sample a cell).
        await pilot.press("plus", "down", "down", "down", "down", "down", "down", "down", "down", "down")
        for _ in range(CNN_STEPS - NAN_STEP):
            await pilot.press("left")
        await pilot.pause()
        assert heatmap.status.startswith(f"fc2.bias · step {NAN_STEP} ")
        assert heatmap.status.endswith("grad norm NaN/Inf")


async def test_two_hundred_tensors_group_at_80x24(mlp_run: Path) -> None:
    app = make_app(FileSource(mlp_run))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open_layers(pilot)
        heatmap = screen.query_one(GradHeatmap)
        assert len(app.state.layers.params) == 200
        assert heatmap.grouped and [r[0] for r in heatmap.rows] == [f"stage{s}.*" for s in range(10)]
        assert "200 tensors in 10 groups (max)" in str(heatmap.border_title)
        assert heatmap.status.startswith("stage0.* (20 tensors, max) · step 8 · grad norm ")
        await pilot.press("+", "-", "[", "]", "3", "4")  # zoom, scroll and stats on a short run: no error
        await pilot.pause()
        assert screen.stat == "grad_zero"
        assert screen.query_one(LayerTable).row_count == 200


async def test_the_table_sorts_and_filters(cnn_run: Path) -> None:
    app = make_app(FileSource(cnn_run))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open_layers(pilot)
        table = screen.query_one(LayerTable)
        layers = app.state.layers
        await pilot.press("o")  # grad norm, largest first (NaN/Inf first)
        await pilot.pause()
        norms = [layers.latest_value("grad_norm", CNN_NAMES.index(n)) for n in table.names]
        assert table.sort == "grad_norm" and norms == sorted(norms, reverse=True)
        assert "grad norm ↓" in str(table.border_title)
        await pilot.press("/")
        await pilot.pause()
        box = screen.query_one("#layers-filter", Input)
        assert box.has_focus and box.display
        await pilot.press("c", "o", "n", "v")  # typed into the box, not taken as keys
        await pilot.pause()
        assert isinstance(app.screen, LayersScreen) and box.value == "conv"
        assert sorted(table.names) == ["conv1.bias", "conv1.weight", "conv2.bias", "conv2.weight"]
        await pilot.press("enter")
        await pilot.pause()
        assert screen.query_one(GradHeatmap).has_focus and not box.display and table.row_count == 4
        await pilot.press("/", "escape")  # escape in the box clears the filter
        await pilot.pause()
        assert table.row_count == 10 and isinstance(app.screen, LayersScreen)


async def test_a_run_without_per_layer_statistics(plain_run: Path) -> None:
    app = make_app(FileSource(plain_run))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open_layers(pilot)
        note = screen.query_one("#layers-empty", Static)
        assert screen.has_class("-empty") and note.display and note.region.height > 0
        assert str(note.render()) == EMPTY_NOTE
        assert screen.query_one(GradHeatmap).region.area == 0


async def test_the_layers_screen_follows_new_samples_live() -> None:
    app = make_app()
    hello = protocol.Record(protocol.HELLO, 1, None, time.time(), {"run_id": "r1", "name": "live"})
    index = protocol.Record(LAYERS, 2, None, time.time(), _index(16))
    async with app.run_test(size=(80, 24)) as pilot:
        app.post_message(SourceUpdated(SourceUpdate([hello, index], status="live")))
        await pilot.pause(3 * REPAINT_INTERVAL)
        await pilot.press("g")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, LayersScreen) and not screen.has_class("-empty")
        heatmap = screen.query_one(GradHeatmap)
        assert heatmap.status == "l0.weight · no samples yet"
        recs = [
            protocol.Record(PARAM_STATS, 3 + i, i + 1, time.time(), _stats(16, 0.1 * (i + 1)))
            for i in range(5)
        ]
        app.post_message(SourceUpdated(SourceUpdate(recs)))
        await pilot.pause(3 * REPAINT_INTERVAL)
        assert heatmap.status == "l0.weight · step 5 · grad norm 0.5"  # the cursor follows the newest
        # 16 tensors, fewer lines: half blocks, two named rows a line, not grouped.
        assert not heatmap.grouped and len(heatmap.rows) == 16
        first = "".join(s.text for s in _segments(heatmap, 0))
        assert first.lstrip().startswith("l0.weight/l1.weight▸") and "▀" in first
        app.post_message(SourceUpdated(SourceUpdate([], reset=True)))
        await pilot.pause(3 * REPAINT_INTERVAL)
        assert screen.has_class("-empty")


# -- snapshots --------------------------------------------------------------------------------------------------------


async def _layers_then(pilot: Pilot, *keys: str) -> None:
    await _open_layers(pilot)
    if keys:
        await pilot.press(*keys)
    await pilot.pause()


def test_layers_snapshot_80x24(snap_compare: Any, cnn_run: Path) -> None:
    assert snap_compare(make_app(FileSource(cnn_run)), terminal_size=(80, 24), run_before=_layers_then)


async def _cursor_on_the_nan(pilot: Pilot) -> None:
    await _layers_then(pilot, "plus", *["down"] * 9, *["left"] * (CNN_STEPS - NAN_STEP))


def test_layers_snapshot_160x48(snap_compare: Any, cnn_run: Path) -> None:
    assert snap_compare(make_app(FileSource(cnn_run)), terminal_size=(160, 48), run_before=_cursor_on_the_nan)


def test_layers_grouped_snapshot_80x24(snap_compare: Any, mlp_run: Path) -> None:
    assert snap_compare(make_app(FileSource(mlp_run)), terminal_size=(80, 24), run_before=_layers_then)


# -- issue 14, item 7: the keys the heatmap advertises keep working; filters and titles; 80×24 fits --------------


@pytest.mark.slow
async def test_the_heatmap_keeps_the_focus_after_a_o_and_the_filter(cnn_run: Path) -> None:
    app = make_app(FileSource(cnn_run))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open_layers(pilot)
        heatmap = screen.query_one(GradHeatmap)
        for keys in (("a",), ("a",), ("o",), ("slash", "c", "o", "n", "v", "enter"), ("slash", "escape")):
            await pilot.press(*keys)
            await pilot.pause()
            assert heatmap.has_focus, keys
            row = heatmap.cursor_row
            await pilot.press("down")  # the arrows the heatmap advertises move its cursor
            await pilot.pause()
            assert heatmap.cursor_row == row + 1, keys
            await pilot.press("up", "left")  # left: the cursor leaves the newest sample
            await pilot.pause()
            assert heatmap.cursor_row == row and heatmap._cursor_col is not None, keys
            await pilot.press("right")
            await pilot.pause()
            assert heatmap._cursor_col is None, (
                keys
            )  # back on the newest (+ - [ ] are bound on the heatmap too)


async def test_the_filter_shows_in_both_titles_and_filters_the_table_shown(cnn_run: Path) -> None:
    app = make_app(FileSource(cnn_run))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open_layers(pilot)
        table, acts = screen.query_one(LayerTable), screen.query_one(ActTable)
        await pilot.press("a")  # the activations table in place of the tensors
        await pilot.pause()
        assert acts.display and not table.display
        await pilot.press("slash", "r", "e", "l", "u", "enter")
        await pilot.pause()
        assert acts.names == ["relu1", "relu2", "relu3"] and acts.row_count == 3
        assert "“relu”" in str(acts.border_title)
        await pilot.press("a", "o")  # the tensors, sorted: the filter stays in the title
        await pilot.pause()
        assert table.sort == "grad_norm" and table.names == []  # no tensor is called relu
        assert "grad norm ↓" in str(table.border_title) and "“relu”" in str(table.border_title)


async def test_the_tensor_table_fits_80_columns(cnn_run: Path) -> None:
    app = make_app(FileSource(cnn_run))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open_layers(pilot)
        table = screen.query_one(LayerTable)
        widths = sum(c.get_render_width(table) for c in table.columns.values())
        assert widths <= table.scrollable_content_region.width, widths
        assert table.max_scroll_x == 0
        assert (
            "conv1.weight" in table.names and table.get_cell("conv1.weight", "name").plain == "conv1.weight"
        )
        acts = screen.query_one(ActTable)
        await pilot.press("a")
        await pilot.pause()
        widths = sum(c.get_render_width(acts) for c in acts.columns.values())
        assert widths <= acts.scrollable_content_region.width and acts.max_scroll_x == 0


def test_groups_fill_the_lines_they_need() -> None:
    names = [f"block{b}.0.{w}" for b in range(11) for w in ("weight", "bias")]  # 22 tensors
    assert len(group_rows(names, 20)) == 11  # one group per block: 11 rows on 6 lines of half blocks
    rows = fill_rows(names, 20)
    assert len(rows) == 20 and rows[0] == ("block0.0.*", 0, 2) and rows[1] == ("block1.0.*", 2, 4)
    assert rows[-1] == ("block10.0.bias", 21, 22) and [r[1] for r in rows] == sorted(r[1] for r in rows)


def record_blocks_run(run_dir: Path) -> Path:
    """Eleven one-layer blocks (``block3.0.weight``): 22 parameter tensors, 4 sampled steps."""

    def loop(torch: Any) -> Path:
        nn = torch.nn
        torch.manual_seed(0)
        model = nn.Sequential(OrderedDict((f"block{b}", nn.Sequential(nn.Linear(8, 8))) for b in range(11)))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        x, y = torch.randn(32, 8), torch.randn(32, 8)
        mon = tuimon_agent.watch(model, opt, run="blocks", dir=run_dir, publish=False, stats_every=1)
        try:
            for _ in range(4):
                loss = nn.functional.mse_loss(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                mon.log(loss=loss.item())
        finally:
            mon.close()
        assert mon.run_file is not None
        return mon.run_file

    return _one_thread(loop)


async def test_22_tensors_use_every_line_at_80x24(tmp_path: Path) -> None:
    app = make_app(FileSource(record_blocks_run(tmp_path)))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open_layers(pilot)
        heatmap = screen.query_one(GradHeatmap)
        lines = heatmap._heat_lines()
        assert heatmap.grouped and len(heatmap.rows) == 2 * lines  # two rows on every line, none left empty
        assert len(heatmap._lines_rows) == lines
        assert sum(b - a for _, a, b in heatmap.rows) == 22


async def test_a_filter_typed_in_one_burst_lands_in_the_box(cnn_run: Path) -> None:
    """``/conv`` typed faster than the app handles keys: each key is queued for the heatmap before ``/`` has moved
    the focus to the box. They must all land in the box (``c`` would otherwise open the clip dialog)."""
    app = make_app(FileSource(cnn_run))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open_layers(pilot)
        for ch in "/conv":
            app.post_message(events.Key("slash" if ch == "/" else ch, ch))
        box = screen.query_one("#layers-filter", Input)
        table = screen.query_one(LayerTable)
        deadline = time.monotonic() + 10
        while (box.value != "conv" or len(table.names) != 4) and time.monotonic() < deadline:
            await pilot.pause(0.05)
        assert box.value == "conv" and box.has_focus and app.screen is screen
        assert sorted(screen.query_one(LayerTable).names) == [
            "conv1.bias",
            "conv1.weight",
            "conv2.bias",
            "conv2.weight",
        ]
