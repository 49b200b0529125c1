"""The probe's feature maps in the viewer: ``ProbeState`` (headless), the feature maps screen (Pilot) on a replayed
run and on a live one, hostile records, and the half-block pixels themselves.

The recorded run is the demo itself (``python -m tuimon.demo.digits`` in a subprocess, which passes a validation digit as the
probe), made deterministic like ``conftest.recorded_run``; nothing in the viewer is patched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import _make_deterministic
from helpers import wait_live
from test_app import wait_loaded
from textual.pilot import Pilot
from textual.widgets import Static

import tuimon_agent
from tuimon.app import make_app
from tuimon.probe import FEATURE_MAPS, MapSet, ProbeState
from tuimon.screens.feature_maps import EMPTY_NOTE, FeatureMapsScreen
from tuimon.source import FileSource, LiveSource
from tuimon.state import RunState
from tuimon.widgets import FeatureMaps
from tuimon.widgets.feature_maps import _GREY, LEVELS, layout, resample
from tuimon.widgets.grad_heatmap import PALETTE
from tuimon_agent import protocol

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

PROBE_STEPS = 60
PROBE_EVERY = 20


def record_probe_run(run_dir: Path) -> Path:
    """The demo CNN on digits for 60 steps in a subprocess, feature maps of its probe digit every 20 steps; the run
    file made deterministic (timestamps, ids, host). Returns the run file."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tuimon.demo.digits",
            "--steps",
            str(PROBE_STEPS),
            "--pace",
            "0",
            "--no-checks",
        ]
        + ["--probe-every", str(PROBE_EVERY), "--dir", str(run_dir), "--run", "digits-probe"],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ.copy(),
    )
    assert out.returncode == 0, out.stderr
    (path,) = run_dir.glob("*/run.sqlite")
    _make_deterministic(path)
    return path


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A replayable run with ``feature_maps`` records (see :func:`record_probe_run`)."""
    return record_probe_run(tmp_path_factory.mktemp("probe-run"))


async def _open_feature_maps(pilot: Pilot) -> FeatureMapsScreen:
    await wait_loaded(pilot)
    await pilot.press("g")
    await pilot.pause()
    await pilot.press("f")
    await pilot.pause(0.3)
    screen = pilot.app.screen
    assert isinstance(screen, FeatureMapsScreen)
    return screen


def _text(widget: FeatureMaps) -> list[str]:
    return [widget.render_line(y).text for y in range(widget.scrollable_content_region.height)]


# -- ProbeState ---------------------------------------------------------------------------------------------------


def _layer(name: str = "conv", k: int = 2, h: int = 4, w: int = 6, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "Conv2d",
        "shape": [k * 2, h, w],
        "channels": list(range(k)),
        "maps": np.arange(k * h * w, dtype=np.uint8).reshape(k, h, w),
        "min": np.zeros(k, np.float32),
        "max": np.ones(k, np.float32),
        "nonfinite": np.zeros(k, np.uint8),
        **extra,
    }


def test_probe_state_keeps_the_latest_sample_and_drops_what_does_not_fit() -> None:
    p = ProbeState()
    assert p.apply(10, {"every": 10, "layers": [_layer("a"), _layer("b")], "input": None})
    assert [m.name for m in p.layers] == ["a", "b"] and p.step == 10 and p.every == 10
    assert not p.apply(5, {"layers": [_layer("old")]})  # an older step never replaces a newer sample
    bad = [
        _layer("dtype", maps=np.zeros((2, 4, 6), np.float32)),
        _layer("ndim", maps=np.zeros((4, 6), np.uint8)),
        _layer("min", min=np.zeros(3, np.float32)),
        _layer("many", k=257, h=1, w=1),  # more maps than any agent sends
        {"name": 3},
        "not a layer",
        _layer("good"),
    ]
    assert p.apply(20, {"layers": bad, "input": {"maps": "no"}})
    assert [m.name for m in p.layers] == ["good"] and p.image is None
    assert p.malformed == 6
    assert not p.apply(30, {"layers": "nope"}) and p.malformed == 7 and p.step == 20
    v = p.version
    p.note_off("boom")
    assert p.off == "boom" and p.version > v


def test_run_state_routes_feature_maps_and_probe_off_events() -> None:
    s = RunState()
    s.apply(protocol.Record(FEATURE_MAPS, 1, 7, 1.0, {"every": 7, "layers": [_layer()], "input": None}))
    s.apply(protocol.Record(protocol.EVENT, 2, 9, 2.0, {"what": "probe_off", "message": "probe failed: x"}))
    assert s.probe.step == 7 and len(s.probe.layers) == 1
    assert s.probe.off == "probe failed: x" and s.step == 9


def test_resample_averages_when_shrinking_and_repeats_when_enlarging() -> None:
    x = np.arange(16, dtype=np.uint8).reshape(1, 4, 4)
    np.testing.assert_array_equal(resample(x, 2, 2)[0], [[2.5, 4.5], [10.5, 12.5]])
    np.testing.assert_array_equal(
        resample(x[:, :2, :2], 4, 4)[0], np.repeat(np.repeat([[0, 1], [4, 5]], 2, 0), 2, 1)
    )
    assert layout(8, 8, 8, 76) == (8, 8, 8)  # the demo at 80 columns: eight 8×8 maps in one row
    assert layout(8, 8, 8, 160)[1] == 16  # wider: enlarged by a whole factor
    th, tw, per_row = layout(8, 32, 32, 76)
    assert tw == 8 and per_row == 8  # shrunk to fit one row
    assert layout(64, 32, 32, 76)[1:] == (8, 8)  # too many: 8 columns each, wrapped


# -- the screen, on a replayed run ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_feature_maps_screen_shows_the_recorded_probe(probe_run: Path, size: tuple[int, int]) -> None:
    app = make_app(FileSource(probe_run))
    async with app.run_test(size=size) as pilot:
        screen = await _open_feature_maps(pilot)
        probe = app.state.probe
        assert probe.step == PROBE_STEPS  # samples at steps 1, 20, 40, 60: the latest is kept
        assert [m.name for m in probe.layers] == ["features.1", "features.3"]  # each conv after its ReLU
        title = str(screen.query_one("#fmaps-title", Static).render())
        assert f"step {probe.step}" in title and f"probe every {PROBE_EVERY}" in title
        widget = screen.query_one(FeatureMaps)
        text = "\n".join(_text(widget))
        assert "probe input · 1×8×8" in text
        assert "1/2 features.1 · ReLU · 16×8×8 · ch 0–7 of 16" in text
        assert "c0" in text and "c7" in text
        everything = "\n".join(line.text for line in widget._lines)  # scrolled out of view included
        second = probe.layers[1]
        const = [k for k in range(len(second.channels)) if second.lo[k] == second.hi[k]]
        # a constant (dead) channel's label says its value (this run has one in features.3 on this torch build)
        assert all(f"c{second.channels[k]} ={second.lo[k]:.2g}" in everything for k in const)
        assert not screen.has_class("-empty")
        # The probe image: each cell's foreground is the upper pixel and its background the lower one.
        img = probe.image
        assert img is not None
        th, tw, _ = widget.map_size[0]
        pixels = resample(img.maps, th, tw)
        strip = widget.render_line(1)  # the first line of the image, under its header
        cells = [seg for seg in strip for ch in seg.text if ch == "▀"]  # one per pixel column
        assert len(cells) == tw
        for x, seg in enumerate(cells):
            assert seg.style is not None and seg.style.color is not None and seg.style.bgcolor is not None
            assert seg.style.color.name == _GREY[int(pixels[0, 0, x] * LEVELS / 256)]
            assert seg.style.bgcolor.name == _GREY[int(pixels[0, 1, x] * LEVELS / 256)]
        # Every line fits the terminal.
        assert all(len(line) <= size[0] for line in _text(widget))


async def test_layer_keys_scroll_to_each_layer_and_m_switches_to_viridis(probe_run: Path) -> None:
    app = make_app(FileSource(probe_run))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open_feature_maps(pilot)
        widget = screen.query_one(FeatureMaps)
        await pilot.press("right_square_bracket")
        await pilot.pause()
        assert widget.selected == 1
        assert widget.scroll_offset.y == widget.layer_rows[1] or widget.scroll_offset.y == widget.max_scroll_y
        assert any("2/2 features.3" in line for line in _text(widget))
        await pilot.press("left_square_bracket")
        await pilot.pause()
        assert widget.selected == 0 and widget.scroll_offset.y <= widget.layer_rows[0]
        first = widget.layer_rows[0] + 1 - widget.scroll_offset.y  # the first line of the first layer's maps
        colours = {s.style.color.name for s in widget.render_line(first) if "▀" in s.text and s.style}
        assert colours <= set(_GREY)
        await pilot.press("m")
        await pilot.pause()
        colours = {s.style.color.name for s in widget.render_line(first) if "▀" in s.text and s.style}
        assert colours and colours <= set(PALETTE)
        await pilot.press("escape")
        await pilot.pause()
        assert type(app.screen).__name__ == "LayersScreen"


async def test_a_run_without_a_probe_says_how_to_get_one(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = tuimon_agent.watch(model, opt, publish=False, dir=tmp_path)
    model(torch.randn(4, 2)).sum().backward()
    opt.step()
    mon.log(loss=1.0)
    mon.close()
    assert mon.run_file is not None
    app = make_app(FileSource(mon.run_file))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open_feature_maps(pilot)
        assert screen.has_class("-empty")
        assert str(screen.query_one("#fmaps-empty", Static).render()) == EMPTY_NOTE


async def test_a_probe_that_failed_shows_why(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Flatten())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = tuimon_agent.watch(
        model, opt, publish=False, dir=tmp_path, probe=torch.randn(2, 8, 8)
    )  # 2 channels
    model(torch.randn(4, 1, 8, 8)).sum().backward()
    opt.step()
    mon.log(loss=1.0)
    mon.close()
    assert mon.run_file is not None
    app = make_app(FileSource(mon.run_file))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open_feature_maps(pilot)
        assert screen.has_class("-empty")
        note = str(screen.query_one("#fmaps-empty", Static).render())
        assert note.startswith("feature-map probe off: feature-map probe disabled") and "RuntimeError" in note
        assert "probe off" in str(screen.query_one("#fmaps-title", Static).render())


async def test_hostile_feature_maps_records_are_counted_not_drawn() -> None:
    state_records = [
        protocol.Record(protocol.HELLO, 1, None, 1.0, {"run_id": "r", "name": "x"}),
        protocol.Record(
            FEATURE_MAPS,
            2,
            1,
            1.0,
            {
                "layers": [
                    _layer(
                        "ok",
                        nonfinite=np.array([0, 1], np.uint8),
                        min=np.array([0.5, 0.0]),
                        max=np.array([0.5, 1.0]),
                    )
                ]
            },
        ),
        protocol.Record(
            FEATURE_MAPS, 3, 2, 1.0, {"layers": [_layer("huge", maps=np.zeros((1, 1, 1 << 23), np.uint8))]}
        ),
    ]
    app = make_app(None)
    async with app.run_test(size=(80, 24)) as pilot:
        app.state.apply_many(state_records[:2])
        app.push_screen(FeatureMapsScreen(app.state))
        await pilot.pause(0.3)
        widget = app.screen.query_one(FeatureMaps)
        text = "\n".join(_text(widget))
        assert "ok · Conv2d" in text and "c1 NaN" in text  # a channel that had NaN/Inf is labelled
        assert "c0 =0.5" in text  # a constant channel (min = max) says its value
        app.state.apply(state_records[2])
        await pilot.pause(0.3)
        assert app.state.probe.malformed == 1
        assert "1 malformed" in str(app.screen.query_one("#fmaps-title", Static).render())
        assert all(len(line) <= 80 for line in _text(widget))


def test_map_set_range_text_uses_finite_channels_only() -> None:
    m = MapSet.from_data(_layer(min=np.array([np.nan, -2.0]), max=np.array([np.nan, 3.0])))
    assert m is not None and m.range_text() == "-2…3"


# -- live -----------------------------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_feature_maps_follow_a_live_training_process(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuimon.demo.digits", "--steps", "100000", "--pace", "0.01", "--no-checks"]
        + ["--probe-every", "10", "--dir", str(tmp_path), "--run", "live-probe"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:
        info = wait_live(proc.pid, timeout=60)
        app = make_app(LiveSource(info))
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("g")
            await pilot.pause()
            await pilot.press("f")
            deadline = time.monotonic() + 60
            steps = set()
            while time.monotonic() < deadline and len(steps) < 3:
                await pilot.pause(0.2)
                if app.state.probe.step is not None:
                    steps.add(app.state.probe.step)
            assert len(steps) >= 3, f"saw feature maps at steps {sorted(steps)}"
            assert all(s % 10 == 0 or s == 1 for s in steps)
            widget = app.screen.query_one(FeatureMaps)
            await pilot.pause(0.3)
            assert any("features.1 · ReLU" in line for line in _text(widget))
            # End the run before the app exits: a repaint timer tick during the app's teardown (children already
            # removed) raises NoMatches while records still stream in.
            proc.terminate()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not app.state.ended:
                await pilot.pause(0.1)
            await pilot.pause(0.3)
    finally:
        proc.terminate()
        proc.wait(30)
