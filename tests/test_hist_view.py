"""Weight/gradient histograms and activation health over time in the viewer: ``HistState`` (headless), the
histogram pane and the dead/saturated heatmap of the layers screen (Pilot), from replayed and live runs.

The run files are recorded by the real agent (``tuimon_agent.watch(model, optimizer, hist_every=2)``) from seeded
torch loops on one thread and made deterministic like ``conftest.recorded_run``; nothing in the viewer is patched.
"""

from __future__ import annotations

import math
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import _make_deterministic
from helpers import read_until, wait_live
from test_activations_view import CHANNELS, DEAD_CHANNELS, record_dead_relu_run
from test_app import wait_loaded
from textual.pilot import Pilot

import tuimon_agent
from tuimon.app import REPAINT_INTERVAL, make_app
from tuimon.hists import COUNT_BUDGET, HISTOGRAMS, HistState, rebin
from tuimon.layers import LAYERS
from tuimon.screens import LayersScreen
from tuimon.screens.layers import HIST_EMPTY_NOTE
from tuimon.source import FileSource, LiveSource
from tuimon.state import RunState
from tuimon.widgets import GradHeatmap, HistView, LayerTable
from tuimon.widgets.grad_heatmap import NONFINITE_COLOR
from tuimon.widgets.hist_view import NONFINITE_MARK, RECENT, format_value
from tuimon_agent import protocol

STEPS = 40
EVERY = 2
NAN_STEP = 36
"""The step whose ``fc3.bias`` gradient is NaN (the loop then undoes that step's update)."""
NAMES = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"]


# -- recordings -----------------------------------------------------------------------------------------------------


def record_hist_run(run_dir: Path, *, hist_every: int = EVERY) -> tuple[Path, dict[str, np.ndarray]]:
    """A seeded MLP (ReLU and Tanh) for 40 steps, histograms every ``hist_every`` steps, statistics every 2; at
    step 36 ``fc3.bias``'s gradient is made NaN before the step and the update undone after it. Returns the
    deterministic run file and the final weights."""
    import torch

    nn = torch.nn
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same reduction order, so the same floats, on any machine
    try:
        torch.manual_seed(0)
        model = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(8, 32),
                relu=nn.ReLU(),
                fc2=nn.Linear(32, 16),
                tanh=nn.Tanh(),
                fc3=nn.Linear(16, 1),
            )
        )
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        x = torch.randn(128, 8)
        y = x[:, :1] * 2 - x[:, 1:2]
        mon = tuimon_agent.watch(
            model, opt, run="hists", dir=run_dir, publish=False, stats_every=EVERY, hist_every=hist_every
        )
        try:
            for step in range(1, STEPS + 1):
                idx = torch.randint(0, 128, (32,))
                loss = nn.functional.mse_loss(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                if step == NAN_STEP:
                    saved = model.fc3.bias.detach().clone()
                    model.fc3.bias.grad[0] = float("nan")
                opt.step()
                if step == NAN_STEP:
                    with torch.no_grad():
                        model.fc3.bias.copy_(saved)
                mon.log(loss=loss.item())
        finally:
            mon.close()
        final = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
    finally:
        torch.set_num_threads(threads)
    assert mon.run_file is not None
    _make_deterministic(mon.run_file)
    return mon.run_file, final


def record_nan_activation_run(run_dir: Path) -> Path:
    """A seeded MLP with a ReLU, statistics every step; the forward of step 5 gets a NaN input (and no update)."""
    import torch

    nn = torch.nn
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = nn.Sequential(OrderedDict(fc1=nn.Linear(4, 8), relu=nn.ReLU(), fc2=nn.Linear(8, 1)))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        mon = tuimon_agent.watch(model, opt, run="nanact", dir=run_dir, publish=False, stats_every=1)
        for step in range(1, 11):
            x = torch.randn(16, 4)
            if step == 5:
                x[0, 0] = float("nan")
                model(x)  # the sampled forward sees the NaN; the step is skipped, as a NaN guard would
                mon.log(step, loss=float("nan"))
                continue
            loss = model(x).pow(2).mean()
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
def hist_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """The MLP run file (histograms every 2 steps, a NaN gradient at step 36) and its final weights."""
    return record_hist_run(tmp_path_factory.mktemp("hists"))


@pytest.fixture(scope="module")
def no_hist_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same MLP with per-layer statistics but no histograms (``hist_every=0``)."""
    return record_hist_run(tmp_path_factory.mktemp("nohists"), hist_every=0)[0]


@pytest.fixture(scope="module")
def dead_relu_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``test_activations_view``'s CNN: 3 of conv1's 8 channels dead behind relu1, a saturated Tanh."""
    path = record_dead_relu_run(tmp_path_factory.mktemp("acts"))
    _make_deterministic(path)
    return path


def _bodies(path: Path) -> list[bytes]:
    db = sqlite3.connect(path)
    try:
        return [body for (body,) in db.execute("SELECT body FROM records ORDER BY seq")]
    finally:
        db.close()


# -- HistState (headless) -------------------------------------------------------------------------------------------


def test_hist_state_from_a_real_run(hist_run: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, final = hist_run
    state = RunState()
    state.apply_encoded(_bodies(path))
    hists = state.hists
    assert state.malformed == 0 and state.unknown == 0
    assert hists.names == NAMES and hists.bins == 32 and hists.mismatched == 0
    assert hists.received == STEPS // EVERY and hists.latest_step == STEPS
    for i, name in enumerate(NAMES):
        w = hists.series(i, "weight")
        assert list(w.steps) == list(range(EVERY, STEPS + 1, EVERY))
        # The latest weights: the range and the counts of the final tensor, as numpy bins them.
        ref = final[name].ravel()
        assert w.lo[-1] == ref.min() and w.hi[-1] == ref.max()
        expected, _ = np.histogram(
            ref, bins=32, range=(float(np.float32(ref.min())), float(np.float32(ref.max())))
        )
        if ref.min() < ref.max():
            assert w.counts[-1].tolist() == expected.tolist()
        assert w.counts.sum(axis=1).tolist() == [ref.size - n - f for n, f in zip(w.nan, w.inf, strict=True)]
        g = hists.series(i, "grad")
        nan_at = int(np.flatnonzero(g.steps == NAN_STEP)[0])
        assert g.nan[nan_at] == (1 if name == "fc3.bias" else 0)  # the NaN gradient, counted apart
        assert g.nan.sum() == g.nan[nan_at] and g.inf.sum() == 0
        # fc3.bias has one element: at the NaN step no finite value, so no range and no counts.
        unmeasured = [name == "fc3.bias" and s == NAN_STEP for s in g.steps]
        assert (~g.measured()).tolist() == unmeasured and g.counts[unmeasured].sum() == 0


def test_hist_state_memory_is_bounded(hist_run: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, _ = hist_run
    records = [protocol.decode(b) for b in _bodies(path)]
    names = next(r for r in records if r.kind == LAYERS).data["params"]
    names = [p["name"] for p in names]
    hists = HistState(samples=4)
    sizes = []
    for rec in (r for r in records if r.kind == HISTOGRAMS):
        assert hists.apply(rec.step, rec.data, names)
        sizes.append(hists.nbytes())
    assert len(set(sizes)) == 1  # allocated once, for the index: no growth with the run
    assert hists.kept == 4 and hists.received == STEPS // EVERY
    assert list(hists.series(0, "weight").steps) == [
        STEPS - 6,
        STEPS - 4,
        STEPS - 2,
        STEPS,
    ]  # the latest, in order
    # Many tensors or many bins: fewer samples, never more than the budget (and never fewer than 2).
    big = HistState()
    p, bins = 2048, 4096
    data = {
        k: {
            "lo": np.zeros(p, np.float32),
            "hi": np.ones(p, np.float32),
            "counts": np.ones((p, bins), np.int32),
            "nan": np.zeros(p, np.int32),
            "inf": np.zeros(p, np.int32),
        }
        for k in ("weight", "grad")
    }
    assert big.apply(1, {"bins": bins, **data}, [f"p{i}" for i in range(p)])
    assert big.capacity == 2 and big._counts["weight"].size <= max(COUNT_BUDGET, 2 * p * bins)


def _hist(p: int, bins: int, **over: Any) -> dict[str, Any]:
    h = {
        "lo": np.full(p, -1.0, np.float32),
        "hi": np.full(p, 1.0, np.float32),
        "counts": np.ones((p, bins), np.int32),
        "nan": np.zeros(p, np.int32),
        "inf": np.zeros(p, np.int32),
    }
    h.update(over)
    return h


def test_hist_state_ignores_and_counts_bad_records() -> None:
    hists = HistState()
    names = ["a.weight", "a.bias"]
    assert hists.apply(2, {"bins": 4, "weight": _hist(2, 4), "grad": _hist(2, 4)}, names)
    bad = [
        ({"bins": 4, "weight": _hist(3, 4), "grad": _hist(3, 4)}, names),  # P = 3 for an index of 2
        ({"bins": 5, "weight": _hist(2, 4), "grad": _hist(2, 4)}, names),  # counts do not fit the bins
        ({"bins": True, "weight": _hist(2, 1), "grad": _hist(2, 1)}, names),
        ({"bins": 4, "weight": _hist(2, 4)}, names),  # no gradients
        ({"bins": 4, "weight": _hist(2, 4, counts="lots"), "grad": _hist(2, 4)}, names),
        ({"bins": 4, "weight": _hist(2, 4, counts=-np.ones((2, 4))), "grad": _hist(2, 4)}, names),
        ({"bins": 4, "weight": _hist(2, 4, nan=[np.inf, 0]), "grad": _hist(2, 4)}, names),
        ({"bins": 4, "weight": _hist(2, 4), "grad": _hist(2, 4)}, []),  # no index yet
    ]
    for data, index in bad:
        assert not hists.apply(3, data, index)
    assert hists.mismatched == len(bad)
    assert hists.kept == 1 and hists.latest_step == 2  # nothing lost
    assert hists.series(1, "grad").counts.tolist() == [[1, 1, 1, 1]]
    with pytest.raises(KeyError, match="'bias'"):
        hists.series(0, "bias")
    with pytest.raises(IndexError, match="index=7"):
        hists.series(7, "weight")
    # Another index (or other bins) starts afresh.
    assert hists.apply(4, {"bins": 4, "weight": _hist(1, 4), "grad": _hist(1, 4)}, ["b.weight"])
    assert hists.names == ["b.weight"] and hists.kept == 1 and hists.latest_step == 4


def test_rebin_moves_counts_onto_another_range() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=1000).astype(np.float32)
    counts, edges = np.histogram(x, bins=16)
    lo, hi = float(edges[0]), float(edges[-1])
    assert np.allclose(rebin(counts, lo, hi, lo, hi, 16), counts)  # the same bins: unchanged
    wide = rebin(counts, lo, hi, -10.0, 10.0, 20)
    assert wide.sum() == pytest.approx(1000) and wide[:6].sum() == 0 and wide[14:].sum() == 0
    assert rebin(counts, lo, hi, 0.0, 10.0, 4).sum() == pytest.approx((x >= 0).sum(), abs=counts.max())
    assert rebin([0, 5, 0], 2.0, 2.0, 0.0, 4.0, 4).tolist() == [0, 0, 5, 0]  # every value equal: one bin
    assert rebin([3, 3], math.nan, math.nan, 0.0, 1.0, 3).tolist() == [0, 0, 0]  # no finite value
    with pytest.raises(ValueError, match=r"\[1.0, 1.0\]"):
        rebin(counts, lo, hi, 1.0, 1.0, 4)


# -- the histogram pane ---------------------------------------------------------------------------------------------


async def _open_layers(pilot: Pilot) -> LayersScreen:
    await wait_loaded(pilot)
    await pilot.press("g")
    await pilot.pause()
    screen = pilot.app.screen
    assert isinstance(screen, LayersScreen)
    return screen


def _text(view: HistView) -> list[str]:
    return ["".join(s.text for s in view.render_line(y)) for y in range(view.content_size.height)]


def _colours(view: HistView) -> set[str]:
    return {
        c.name
        for y in range(view.content_size.height)
        for s in view.render_line(y)
        if s.style
        for c in (s.style.color, s.style.bgcolor)
        if c
    }


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
async def test_h_shows_the_histograms_of_the_selected_tensor(
    hist_run: tuple[Path, dict[str, np.ndarray]], size: tuple[int, int]
) -> None:
    app = make_app(FileSource(hist_run[0]))
    async with app.run_test(size=size) as pilot:
        screen = await _open_layers(pilot)
        view, heatmap, table = (
            screen.query_one(HistView),
            screen.query_one(GradHeatmap),
            screen.query_one(LayerTable),
        )
        assert not view.display and heatmap.display
        await pilot.press("down", "h")  # the heatmap's cursor row is the tensor shown
        await pilot.pause()
        assert view.display and not heatmap.display and table.display and table.has_focus
        assert view.param == "fc1.bias" and str(view.border_title) == "fc1.bias · histograms"
        lines = _text(view)
        assert lines[0].lstrip().startswith("weights · step 40") and "gradients · step 40" in lines[0]
        assert "NaN" not in lines[0]
        # The x axis is the union of the recent samples' ranges, labelled with numbers.
        hists = app.state.hists
        for kind in ("weight", "grad"):
            lo, hi = hists.series(1, kind).span(RECENT)  # type: ignore[misc]
            assert view.spans[kind] == (lo, hi)
            axis = next(line for line in lines if format_value(lo) in line and format_value(hi) in line)
            assert axis
        assert view.shown_steps[0] == STEPS and view.shown_steps == sorted(view.shown_steps, reverse=True)
        # Nothing overlaps, nothing leaves the screen.
        assert view.region.right <= size[0] and view.region.bottom <= size[1]
        assert not view.region.overlaps(table.region)
        # Enter on a table row picks another tensor; moving the table's cursor follows it.
        await pilot.press("down", "down", "enter")
        await pilot.pause()
        assert table.names[table.cursor_row] == "fc2.bias" and view.param == "fc2.bias"
        assert screen.selected == "fc2.bias" and "fc2.bias" in str(view.border_title)
        await pilot.press("up")
        await pilot.pause()
        assert view.param == "fc2.weight"
        # h again: the heatmap; a statistic key also brings it back.
        await pilot.press("h")
        await pilot.pause()
        assert heatmap.display and not view.display
        await pilot.press("h", "2")
        await pilot.pause()
        assert heatmap.display and not view.display and screen.stat == "update_ratio"


async def test_enter_in_the_table_opens_the_histograms(hist_run: tuple[Path, dict[str, np.ndarray]]) -> None:
    app = make_app(FileSource(hist_run[0]))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await _open_layers(pilot)
        table = screen.query_one(LayerTable)
        table.focus()
        await pilot.press(*["down"] * 5, "enter")
        await pilot.pause()
        view = screen.query_one(HistView)
        assert view.display and view.param == "fc3.bias"


async def test_a_nan_gradient_is_shown_in_red(hist_run: tuple[Path, dict[str, np.ndarray]]) -> None:
    app = make_app(FileSource(hist_run[0]))
    async with app.run_test(size=(160, 48)) as pilot:
        screen = await _open_layers(pilot)
        await pilot.press("h")
        await pilot.pause()
        table, view = screen.query_one(LayerTable), screen.query_one(HistView)
        assert view.param == "fc1.weight" and NONFINITE_MARK not in _colours(view)
        await pilot.press(*["down"] * 5)  # fc3.bias: a NaN gradient (and so a NaN weight) at step 36
        await pilot.pause()
        assert table.names[table.cursor_row] == "fc3.bias" and view.param == "fc3.bias"
        assert NAN_STEP in view.shown_steps
        header = list(view.render_line(0))
        # The latest sample is finite again: the header names the step of the one that was not.
        red = [s for s in header if s.text.strip() == f"NaN/Inf at step {NAN_STEP}"]
        assert len(red) == 2  # in both panels, in the non-finite style
        assert all(
            s.style == view.rich_style + view.get_component_rich_style("hist-view--nonfinite") for s in red
        )
        assert NONFINITE_MARK in _colours(view)  # and the strip marks that sample


async def test_a_run_without_histograms_says_so(no_hist_run: Path) -> None:
    app = make_app(FileSource(no_hist_run))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open_layers(pilot)
        await pilot.press("h")
        await pilot.pause()
        view = screen.query_one(HistView)
        assert view.display and app.state.hists.received == 0
        shown = " ".join(" ".join(_text(view)).split())
        assert HIST_EMPTY_NOTE in shown


LIVE_TRAINER = textwrap.dedent(
    """
    import os, sys, time, torch, tuimon_agent
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = tuimon_agent.watch(model, opt, run="live-hists", dir=sys.argv[1], stats_every=2, hist_every=2)
    x = torch.randn(64, 8)
    for step in range(1, 41):
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.log(loss=loss)
        print(f"STEP {mon.step}", flush=True)
        if step == 10:  # wait for the test to look at the first samples
            while not os.path.exists(sys.argv[2]):
                time.sleep(0.01)
    mon.close()
    """
)


async def _until(pilot: Pilot, done: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout}s")
        await pilot.pause(REPAINT_INTERVAL)


@pytest.mark.slow
async def test_histograms_follow_a_live_run(tmp_path: Path) -> None:
    script, go = tmp_path / "train.py", tmp_path / "go"
    script.write_text(LIVE_TRAINER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path), str(go)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        read_until(proc, "STEP 10")  # the trainer now waits at step 10 until `go` exists
        app = make_app(LiveSource(wait_live(proc.pid), follow_restarts=False))
        async with app.run_test(size=(80, 24)) as pilot:
            await _until(pilot, lambda: app.state.hists.latest_step == 10, "at step 10")
            await pilot.press("g")
            await pilot.pause()
            screen = app.screen
            assert isinstance(screen, LayersScreen)
            await pilot.press("h")
            view = screen.query_one(HistView)
            await _until(pilot, lambda: bool(view.shown_steps), "drawn")
            assert view.shown_steps == [10, 8, 6, 4, 2] and view.param == "0.weight"
            await pilot.press("down")  # the table's cursor picks the tensor
            await pilot.pause()
            assert view.param == "0.bias"
            go.touch()
            await _until(pilot, lambda: app.status == "ended", "ended")
            await pilot.pause(2 * REPAINT_INTERVAL)
            assert (
                view.shown_steps[0] == 40
                and app.state.hists.received == 20
                and app.state.hists.mismatched == 0
            )
            # The table was rebuilt by every new sample; the choice stayed.
            assert view.param == "0.bias" and str(view.border_title) == "0.bias · histograms"
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
@pytest.mark.slow
def test_tuimon_replay_in_tmux_shows_the_histograms(
    hist_run: tuple[Path, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    session = f"tuimon-hists-{tmp_path.name}"
    cmd = f"{sys.executable} -m tuimon replay {hist_run[0]}"
    env_args = [arg for k in ("TUIMON_RUNTIME_DIR", "TUIMON_DIR") for arg in ("-e", f"{k}={os.environ[k]}")]
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", session, "-x", "80", "-y", "24", *env_args, cmd], check=True
    )

    def screen_until(*texts: str) -> str:
        deadline = time.monotonic() + 60
        screen = ""
        while time.monotonic() < deadline:
            screen = subprocess.run(
                ["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True
            ).stdout
            if all(t in screen for t in texts):
                return screen
            time.sleep(0.3)
        raise AssertionError(f"{texts} not on the screen:\n{screen}")

    try:
        screen_until("replay", "loss")
        subprocess.run(["tmux", "send-keys", "-t", session, "g"], check=True)
        screen_until("layers · step 40", "grad norm")
        subprocess.run(["tmux", "send-keys", "-t", session, "h"], check=True)
        screen = screen_until("fc1.weight · histograms", "weights · step 40", "gradients · step 40")
        lines = screen.splitlines()
        assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
        subprocess.run(["tmux", "send-keys", "-t", session, "Down", "Down", "Enter"], check=True)
        screen_until("fc2.weight · histograms")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


# -- activations over time ------------------------------------------------------------------------------------------


async def test_dead_and_saturated_fractions_over_time(dead_relu_run: Path) -> None:
    app = make_app(FileSource(dead_relu_run))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open_layers(pilot)
        heatmap = screen.query_one(GradHeatmap)
        await pilot.press("5")
        await pilot.pause()
        acts = app.state.acts
        assert screen.stat == "dead" and heatmap.stat == "dead"
        # Only the modules that have a dead fraction: the ReLUs, in model order.
        assert [r[0] for r in heatmap.rows] == ["relu1", "relu2"]
        assert str(heatmap.border_title).startswith(f"dead units · 2 modules of {len(acts.names)}")
        dead = DEAD_CHANNELS / CHANNELS
        assert heatmap.status == f"relu1 · step {acts.latest_step} · dead units {dead * 100:.3g}%"
        values, _ = acts.history("dead")
        assert values[acts.names.index("relu1")].tolist() == [dead] * acts.columns
        await pilot.press("left")
        await pilot.pause()
        first, _, _ = acts.steps()
        assert heatmap.status.startswith(f"relu1 · step {int(first[-2])} · dead units")
        legend = " ".join(
            "".join(s.text for s in heatmap.render_line(y)) for y in range(heatmap.content_size.height)
        )
        assert "NaN/Inf 0" in legend and "100%" in legend
        await pilot.press("6")
        await pilot.pause()
        assert [r[0] for r in heatmap.rows] == ["tanh"] and "saturated" in str(heatmap.border_title)
        sat = acts.latest_value("saturated", acts.names.index("tanh"))
        assert sat is not None and sat > 0
        assert heatmap.status.startswith(f"tanh · step {int(first[-2])} · saturated ")  # the cursor stays put
        await pilot.press("right")
        await pilot.pause()
        assert heatmap.status == f"tanh · step {acts.latest_step} · saturated {sat * 100:.3g}%"
        await pilot.press("1")
        await pilot.pause()
        assert heatmap.stat == "grad_norm" and len(heatmap.rows) == len(app.state.layers.names)


async def test_a_nan_activation_is_marked(tmp_path: Path) -> None:
    app = make_app(FileSource(record_nan_activation_run(tmp_path)))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await _open_layers(pilot)
        heatmap = screen.query_one(GradHeatmap)
        await pilot.press("5")
        await pilot.pause()
        assert heatmap.nonfinite_cells >= 1 and "relu" in [r[0] for r in heatmap.rows]
        colours = {
            c.name
            for y in range(heatmap.content_size.height)
            for s in heatmap.render_line(y)
            if s.style
            for c in (s.style.color, s.style.bgcolor)
            if c
        }
        assert NONFINITE_COLOR in colours
