"""The viewer's alerts: the alert state (lifecycle, order, hostile payloads), the overview's alert panel and badge,
the alert detail screen, its jumps to the chart and the layers heatmap, the chart's onset markers, and a live run.

Run files are written with the real :class:`~tuimon_agent.runfile.RunFileWriter` from real ``protocol.Record``\\ s
whose payloads follow the alert spec, and replayed by the real :class:`~tuimon.source.FileSource`; the live test
trains a real torch model under the real agent, whose diagnosis rules emit the alerts. Nothing is patched.
"""

from __future__ import annotations

import math
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import read_until, wait_live
from textual.widgets import OptionList, Static

import tuimon.app
from tuimon.alerts import ACTIVE_KEPT, HISTORY_KEPT, MAX_TEXT, AlertState, describe_action
from tuimon.app import REPAINT_INTERVAL, TuimonApp, make_app
from tuimon.messages import AlertActionRequested
from tuimon.screens import LayersScreen
from tuimon.screens.alert_detail import AlertDetail
from tuimon.source import FileSource, LiveSource
from tuimon.state import MARKERS_KEPT, RunState
from tuimon.widgets import AlertPanel, GradHeatmap, MetricChart, MetricList
from tuimon_agent import protocol
from tuimon_agent.runfile import RunFileWriter

PARAMS = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"]
"""The parameter index of the hand-made runs."""


def alert(step: int, **fields: Any) -> protocol.Record:
    """An ``alert`` record with the spec's payload (defaults for what ``fields`` leaves out)."""
    d: dict[str, Any] = {
        "state": "active",
        "layers": [],
        "metric": None,
        "confidence": 0.8,
        "evidence": {},
        "message": "",
        "remedies": [],
        "actions": [],
        "last_step": step,
    }
    d.update(fields)
    return protocol.Record(protocol.ALERT, 0, step, 1000.0 + step * 0.05, d)


VANISHING = dict(
    id="vanishing_gradients:global",
    rule="vanishing_gradients",
    severity="warning",
    first_step=120,
    layers=["fc1.weight", "fc1.bias"],
    confidence=0.7,
    evidence={"ratio_first_last": 1e-3, "grad_norm_fc1": 1e-4},
    message="gradients of fc1 are 1000× smaller than those of fc3 since step 120",
    remedies=["Use ReLU-family activations.", "Add normalization layers or residual connections."],
)
SPIKE = dict(
    id="loss_spike:loss",
    rule="loss_spike",
    severity="info",
    first_step=250,
    metric="loss",
    evidence={"value": 5.6, "median": 0.6, "mad_z": 41.0},
    message="loss jumped to 5.6 at step 250, 41 robust deviations above its recent median",
    remedies=["Check the batch at that step for bad data."],
)
EXPLODING = dict(
    id="exploding_gradients:fc3.weight",
    rule="exploding_gradients",
    severity="warning",
    first_step=300,
    layers=["fc3.weight"],
    evidence={"grad_norm": 1000.0, "robust_level": 1.0, "growth": 1000.0},
    message="gradient norm of fc3.weight grew 1000× in 10 steps since step 300",
    remedies=["Clip gradients.", "Lower the learning rate.", "Use ReLU-family activations."],
    actions=[
        {"command": "set_clip", "args": {"max_norm": 1.0}, "label": "clip gradients at norm 1"},
        {"command": "set_lr", "args": {"value": 3e-4}, "label": "lower the learning rate to 3e-4"},
    ],
)
DIVERGENCE = dict(
    id="loss_divergence:loss",
    rule="loss_divergence",
    severity="critical",
    first_step=330,
    metric="loss",
    evidence={"slope_log": 0.012, "rise": 1.8},
    confidence=0.95,
    message="the loss has risen for 60 steps since step 330: the learning rate is too high",
    remedies=["Lower the learning rate."],
    actions=[{"command": "set_lr", "args": {"value": 1e-4}, "label": "lower the learning rate to 1e-4"}],
)


def alert_records() -> list[protocol.Record]:
    """Four alerts: vanishing (warning, 120), a loss spike (info, 250, resolved at 260), exploding gradients
    (warning, 300) and divergence (critical, 330)."""
    return [
        alert(120, **VANISHING),
        alert(250, **SPIKE),
        alert(260, **{**SPIKE, "state": "resolved", "last_step": 250}),
        alert(310, **EXPLODING),
        alert(360, **DIVERGENCE),
    ]


MODULES = [("fc1", "Linear"), ("act1", "ReLU"), ("fc2", "Linear"), ("act2", "ReLU"), ("fc3", "Linear")]
"""The module index of the hand-made runs (``acts=True``)."""


def write_run(path: Path, extra: list[protocol.Record], *, steps: int = 400, acts: bool = False) -> Path:
    """A finished run: hello, a parameter index, ``steps`` metrics (a loss that falls, spikes at 250 and rises
    from 300), eval every 20 steps, param_stats every 10 steps (and with ``acts``, a module index and act_stats
    where act1's dead fraction climbs to 90 %); ``extra`` records go in at their steps."""
    w = RunFileWriter(path, meta={"run_id": "rid-alerts", "name": "alerts"})
    seq = 0

    def add(rec: protocol.Record) -> None:
        nonlocal seq
        seq += 1
        rec = protocol.Record(rec.kind, seq, rec.step, rec.ts, rec.data)
        w.add(rec, protocol.encode(rec))

    def rec(kind: str, step: int | None, data: dict[str, Any]) -> None:
        add(protocol.Record(kind, 0, step, 1000.0 + (step or 0) * 0.05, data))

    rec(
        protocol.HELLO,
        None,
        {"run_id": "rid-alerts", "name": "alerts", "pid": 1, "host": "h", "started": 1000.0},
    )
    index = [{"name": n, "shape": [4, 4], "numel": 16, "module": n.rsplit(".", 1)[0]} for n in PARAMS]
    rec(protocol.LAYERS, 0, {"params": index})
    if acts:
        rec(protocol.MODULES, 0, {"modules": [{"name": n, "type": t} for n, t in MODULES]})
    pending = sorted(extra, key=lambda r: r.step or 0)
    for s in range(1, steps + 1):
        loss = 2.0 * math.exp(-s / 100) + 0.1 + (5.0 if s == 250 else 0.0) + max(0, s - 300) * 0.02
        rec(protocol.METRICS, s, {"values": {"loss": loss, "acc": 1 - loss / 3}})
        if s % 20 == 0:
            rec(protocol.EVAL, s, {"values": {"val_loss": loss * 1.1}})
        if s % 10 == 0:
            g = np.array([1e-3, 1e-4, 1e-2, 1e-3, 1.0 if s < 300 else 1e3, 0.1], dtype=np.float32)
            ones = np.ones(len(PARAMS), np.float32)
            rec(
                protocol.PARAM_STATS,
                s,
                {
                    "grad_norm": g,
                    "grad_max": g,
                    "grad_zero": 0 * ones,
                    "grad_nonfinite": 0 * ones,
                    "has_grad": ones,
                    "weight_norm": ones,
                    "update_ratio": 1e-3 * ones,
                    "global_grad_norm": float(g.sum()),
                },
            )
        if acts and s % 10 == 0:
            dead = np.array([0, min(0.9, s / 300), 0, 0.05, 0], dtype=np.float32)
            zeros = np.zeros(len(MODULES), np.float32)
            rec(
                protocol.ACT_STATS,
                s,
                {"mean": zeros + 0.5, "std": zeros + 1, "dead": dead, "saturated": zeros, "nonfinite": zeros},
            )
        while pending and (pending[0].step or 0) <= s:
            add(pending.pop(0))
    rec(protocol.END, steps, {"reason": "closed", "steps": steps, "dropped": 0})
    w.commit()
    w.close()
    return path


def _state(recs: list[protocol.Record]) -> RunState:
    state = RunState()
    for i, r in enumerate(recs, 1):
        state.apply(protocol.Record(r.kind, i, r.step, r.ts, r.data))
    return state


async def _loaded(pilot: Any, timeout: float = 15.0) -> None:
    app = pilot.app
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await pilot.pause(REPAINT_INTERVAL)
        if app.status in ("replay", "ended") and not app._dirty and app.overview.query_one(MetricList).names:
            await pilot.pause()
            return
    raise AssertionError(f"run not loaded after {timeout}s (status {app.status})")


def _text(widget: Static) -> str:
    return str(widget.render())


# -- the alert state ----------------------------------------------------------------------------------------------


def test_lifecycle_onset_update_resolve_moves_an_alert_to_the_history() -> None:
    state = _state([alert(120, **VANISHING)])
    assert [a.id for a in state.alerts.active] == ["vanishing_gradients:global"] and not state.alerts.history
    a = state.alerts.active[0]
    assert (a.first_step, a.last_step, a.layers, a.confidence) == (120, 120, ("fc1.weight", "fc1.bias"), 0.7)
    state.apply(protocol.Record(protocol.ALERT, 2, 170, 0.0, alert(170, **VANISHING).data))
    a = state.alerts.active[0]
    assert (a.first_step, a.last_step, a.updates) == (120, 170, 2) and len(state.alerts) == 1
    escalated = alert(200, **{**VANISHING, "severity": "critical"}).data
    state.apply(protocol.Record(protocol.ALERT, 3, 200, 0.0, escalated))
    assert state.alerts.active[0].severity == "critical"
    state.apply(
        protocol.Record(protocol.ALERT, 4, 260, 0.0, alert(260, **{**VANISHING, "state": "resolved"}).data)
    )
    assert not state.alerts.active and [h.id for h in state.alerts.history] == ["vanishing_gradients:global"]
    assert state.alerts.history[0].state == "resolved" and state.alerts.get("vanishing_gradients:global")
    # Onset and escalation are markers, the plain update and the resolve are not.
    assert [(m.step, m.kind) for m in state.markers] == [(120, "alert:warning"), (200, "alert:critical")]
    # The same id firing again is a new episode (a new onset marker), the old one stays in the history.
    state.apply(
        protocol.Record(protocol.ALERT, 5, 400, 0.0, alert(400, **{**VANISHING, "first_step": 390}).data)
    )
    assert state.alerts.active[0].first_step == 390 and len(state.alerts.history) == 1
    assert state.markers[-1][:2] == (390, "alert:warning")


def test_active_alerts_are_sorted_by_severity_then_onset() -> None:
    state = _state(alert_records())
    assert [a.rule for a in state.alerts.active] == [
        "loss_divergence",
        "vanishing_gradients",
        "exploding_gradients",
    ]
    assert state.alerts.counts() == {"critical": 1, "warning": 2, "info": 0}
    assert [a.rule for a in state.alerts.history] == ["loss_spike"]
    assert sorted(m.step for m in state.markers) == [120, 250, 300, 330]


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"id": "x:y"},
        {"id": "x:y", "rule": "x", "state": "active"},  # no severity
        {"id": "x:y", "rule": "x", "state": "open", "severity": "warning"},
        {"id": "x:y", "rule": "x", "state": "active", "severity": "fatal"},
        {"id": 7, "rule": "x", "state": "active", "severity": "warning"},
        {"id": "", "rule": "x", "state": "active", "severity": "warning"},
        {"id": "x:y", "rule": ["x"], "state": "active", "severity": "warning"},
        ["not", "a", "dict"],
        None,
    ],
)
def test_unusable_payloads_are_ignored_and_counted(payload: Any) -> None:
    state = RunState()
    state.apply(protocol.Record(protocol.ALERT, 1, 5, 0.0, payload))  # type: ignore[arg-type]
    assert not state.alerts.active and state.alerts.malformed == 1 and not state.markers
    assert state.unknown == 0 and state.last_seq == 1


def test_hostile_fields_are_cut_or_dropped_and_counted() -> None:
    huge = "x" * 1_000_000
    payload = {
        "id": "evil:" + huge,
        "rule": "evil",
        "state": "active",
        "severity": "critical",
        "first_step": "120",  # wrong type: the record's step stands in
        "last_step": 2**80,  # out of range
        "layers": [huge, 3, None, *[f"l{i}" for i in range(100)]],
        "metric": {"no": 1},
        "confidence": float("nan"),
        "evidence": {
            "big": 10**40,
            "s": huge,
            "nested": {"a": 1},
            5: 1.0,
            **{f"k{i}": i for i in range(100)},
        },
        "message": "[b]markup[/b] " + huge,
        "remedies": "clip",  # not a list
        "actions": [
            {"command": "set_lr", "args": {"value": 1e-4}, "label": huge},
            {"command": 5},
            {"command": "set_clip", "args": "max_norm=1"},
            "junk",
            {"command": "set_clip", "args": {"max_norm": 1.0, "obj": {"deep": 1}}},
        ],
    }
    state = RunState()
    state.apply(protocol.Record(protocol.ALERT, 1, 77, 0.0, payload))
    (a,) = state.alerts.active
    assert state.alerts.repaired == 1 and state.alerts.malformed == 0
    assert len(a.id) <= 120 and a.id.endswith("…") and len(a.message) == MAX_TEXT
    assert (a.first_step, a.last_step, a.metric, a.confidence, a.remedies) == (77, 77, None, None, ())
    assert len(a.layers) == 8 and all(isinstance(x, str) and len(x) <= 120 for x in a.layers)
    assert len(a.evidence) <= 24 and "nested" not in a.evidence and 5 not in a.evidence
    assert a.evidence["big"] == 1e40 and len(str(a.evidence["s"])) <= 120
    assert [x["command"] for x in a.actions] == ["set_lr", "set_clip"]
    assert len(a.actions[0]["label"]) == MAX_TEXT and a.actions[1]["args"] == {"max_norm": 1.0}
    assert describe_action("set_clip", a.actions[1]["args"]) == "set_clip max_norm=1"


async def test_hostile_alert_records_in_a_run_file_are_shown_safely_and_counted(tmp_path: Path) -> None:
    evil = {
        **EXPLODING,
        "id": "x[/]:[b]y",
        "rule": "rule[/b]",
        "layers": ["[red]layer[/]" * 50],
        "message": "[bold]not markup[/bold] [link=x]" + "y" * 10_000,
        "evidence": {"[k]": "[v]", "n": float("inf")},
        "remedies": ["[/]", "fine"],
        "actions": [{"command": "set_lr", "args": {"value": float("nan")}, "label": "[/]"}],
    }
    bad = [
        alert(50, **{"id": "a:b", "rule": "a", "state": "active"}),  # no severity
        protocol.Record(protocol.ALERT, 0, 60, 1000.0, {"id": 5}),
    ]
    run = write_run(tmp_path / "run.sqlite", [alert(300, **evil), *bad])
    async with make_app(FileSource(run)).run_test(size=(100, 30)) as pilot:
        await _loaded(pilot)
        panel = pilot.app.overview.query_one(AlertPanel)
        assert [a.id for a in panel.alerts] == ["x[/]:[b]y"] and pilot.app.state.alerts.malformed == 2
        assert "rule[/b]" in str(panel.render()) and "[bold]not markup[/bold]" in str(panel.render())
        assert "2 bad records ignored" in panel.border_subtitle
        pilot.app.overview.open_alert("x[/]:[b]y")
        await pilot.pause()
        details = _text(pilot.app.screen.query_one("#alert-details", Static))
        assert "[k]  [v]" in details and "n    inf" in details
        assert "a  set_lr  [/]" in details  # a NaN argument is dropped, not sent
    async with make_app(FileSource(run)).run_test(size=(80, 24)) as pilot:
        await _loaded(pilot)
        badge = str(pilot.app.overview.query_one(AlertPanel).render())
        assert badge.startswith("⚠ 1 alert (1 warning) · 2 bad alert records ignored — press A")


def test_active_alerts_and_the_history_are_bounded() -> None:
    alerts = AlertState()
    for i in range(ACTIVE_KEPT + 50):
        alerts.apply(i, {"id": f"r:{i}", "rule": "r", "state": "active", "severity": "info", "first_step": i})
    assert len(alerts) == ACTIVE_KEPT and alerts.overflow == 50
    for i in range(ACTIVE_KEPT):
        alerts.apply(
            i, {"id": f"r:{i}", "rule": "r", "state": "resolved", "severity": "info", "first_step": i}
        )
    assert len(alerts) == 0 and len(alerts.history) == min(HISTORY_KEPT, ACTIVE_KEPT)


def test_markers_are_generic_and_bounded() -> None:
    state = RunState()
    for i in range(MARKERS_KEPT + 10):
        state.add_marker(i, "command", f"set_lr {i}")
    assert len(state.markers) == MARKERS_KEPT and state.markers[0] == (10, "command", "set_lr 10")
    state.reset()
    assert not state.markers and not state.alerts.active


# -- the panel, the badge, the detail screen ----------------------------------------------------------------------


async def test_panel_lists_active_alerts_most_severe_first(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run.sqlite", alert_records())
    async with make_app(FileSource(run)).run_test(size=(100, 30)) as pilot:
        await _loaded(pilot)
        panel = pilot.app.overview.query_one(AlertPanel)
        assert not panel.compact and panel.has_class("-list")
        lines = [str(line) for line in panel.render().split()]
        assert [line.split()[1] for line in lines] == [
            "loss_divergence",
            "vanishing_gradients",
            "exploding_gradients",
        ]
        assert "since 330" in lines[0] and "the loss has risen" in lines[0]
        assert "fc1.weight +1" in lines[1] and "since 120" in lines[1]
        assert "1 critical · 2 warning" in panel.border_title and "1 resolved" in panel.border_subtitle
        assert panel.region.height == 3 + 2  # three rows and the border
        chart = pilot.app.overview.query_one(MetricChart)
        assert chart.region.height >= 12


async def test_small_terminal_shows_a_one_line_badge_and_keeps_the_chart(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run.sqlite", alert_records())
    async with make_app(FileSource(run)).run_test(size=(80, 24)) as pilot:
        await _loaded(pilot)
        panel = pilot.app.overview.query_one(AlertPanel)
        assert panel.compact and panel.region.height == 1
        badge = str(panel.render())
        assert badge.startswith("✖ 3 alerts (1 critical, 2 warning) — press A")
        assert pilot.app.overview.query_one(MetricChart).region.height >= 10
        assert pilot.app.overview.query_one(MetricList).region.height >= 3
        await pilot.press("A")  # the badge opens the alerts at once
        await pilot.pause()
        assert isinstance(pilot.app.screen, AlertDetail)
        assert pilot.app.screen.selected is not None and pilot.app.screen.selected.rule == "loss_divergence"


async def test_a_healthy_run_says_no_alerts_quietly(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run.sqlite", [])
    async with make_app(FileSource(run)).run_test(size=(100, 30)) as pilot:
        await _loaded(pilot)
        panel = pilot.app.overview.query_one(AlertPanel)
        assert str(panel.render()) == "✓ no alerts" and panel.region.height == 1
        assert not panel.has_class("-list")
        await pilot.press("A")
        await pilot.pause()
        assert pilot.app.screen is pilot.app.overview  # nothing to open: a notification says so


async def test_detail_screen_shows_evidence_remedies_and_exact_actions(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run.sqlite", alert_records())
    async with make_app(FileSource(run)).run_test(size=(100, 30)) as pilot:
        await _loaded(pilot)
        await pilot.press("A")  # focus the panel
        panel = pilot.app.overview.query_one(AlertPanel)
        assert panel.has_focus and str(panel.render()).startswith("▸✖ loss_divergence")  # the selection shows
        await pilot.press("down", "down", "enter")
        await pilot.pause()
        screen = pilot.app.screen
        assert isinstance(screen, AlertDetail) and screen.selected is not None
        assert screen.selected.id == "exploding_gradients:fc3.weight"
        details = _text(screen.query_one("#alert-details", Static))
        for expected in (
            "warning · exploding_gradients",
            "gradient norm of fc3.weight grew 1000×",
            "since step 300, last seen at step 310",
            "grad_norm",
            "1000",
            "robust_level",
            "• Clip gradients.",
            "a  set_clip max_norm=1  clip gradients at norm 1",
            "2  set_lr value=0.0003  lower the learning rate to 3e-4",
            "fc3.weight in the layers heatmap at step 300",
        ):
            assert expected in details, expected
        # Moving in the list shows another alert's details.
        await pilot.press("up")
        await pilot.pause()
        assert screen.selected.rule == "vanishing_gradients"
        assert "ratio_first_last" in _text(screen.query_one("#alert-details", Static))


async def test_a_click_on_an_alert_line_opens_it(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run.sqlite", alert_records())
    async with make_app(FileSource(run)).run_test(size=(100, 30)) as pilot:
        await _loaded(pilot)
        panel = pilot.app.overview.query_one(AlertPanel)
        await pilot.click(panel, offset=(30, 2))  # the border, then the second line: vanishing_gradients
        await pilot.pause()
        screen = pilot.app.screen
        assert isinstance(screen, AlertDetail) and screen.selected is not None
        assert screen.selected.rule == "vanishing_gradients"


async def test_resolved_alerts_are_in_the_history_list(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run.sqlite", alert_records())
    async with make_app(FileSource(run)).run_test(size=(100, 30)) as pilot:
        await _loaded(pilot)
        pilot.app.overview.open_alert(None)
        await pilot.pause()
        screen = pilot.app.screen
        assert isinstance(screen, AlertDetail) and not screen.history
        assert screen.query_one(OptionList).option_count == 3
        await pilot.press("h")
        await pilot.pause()
        assert screen.history and [a.rule for a in screen.listed] == ["loss_spike"]
        assert screen.query_one(OptionList).option_count == 1
        assert "resolved" in _text(screen.query_one("#alert-details", Static))


async def test_the_action_key_posts_the_exact_suggested_action(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run.sqlite", alert_records())
    seen: list[AlertActionRequested] = []

    class Recording(TuimonApp):
        CSS_PATH = Path(tuimon.app.__file__).with_name("app.tcss")

        def on_alert_action_requested(self, message: AlertActionRequested) -> None:
            seen.append(message)

    async with Recording(FileSource(run)).run_test(size=(100, 30)) as pilot:
        await _loaded(pilot)
        await pilot.press("A", "a")  # the panel's selected (most severe) alert's first action
        await pilot.pause()
        assert [(m.alert_id, m.action["command"], m.action["args"]) for m in seen] == [
            ("loss_divergence:loss", "set_lr", {"value": 1e-4})
        ]
        while len(pilot.app.screen_stack) > 1:
            pilot.app.pop_screen()  # whatever the live-commands handler opened
            await pilot.pause()
        pilot.app.overview.open_alert("exploding_gradients:fc3.weight")
        await pilot.pause()
        await pilot.press("2")
        await pilot.pause()
        assert seen[-1].alert_id == "exploding_gradients:fc3.weight"
        assert seen[-1].action == {
            "command": "set_lr",
            "args": {"value": 3e-4},
            "label": EXPLODING["actions"][1]["label"],
        }


# -- jumps and markers --------------------------------------------------------------------------------------------


async def test_jump_to_the_layers_heatmap_puts_the_cursor_on_the_layer_at_the_onset(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run.sqlite", alert_records())
    async with make_app(FileSource(run)).run_test(size=(100, 30)) as pilot:
        await _loaded(pilot)
        pilot.app.overview.open_alert("exploding_gradients:fc3.weight")
        await pilot.pause()
        await pilot.press("g")
        for _ in range(10):
            await pilot.pause(REPAINT_INTERVAL)
        screen = pilot.app.screen
        assert isinstance(screen, LayersScreen)
        heatmap = screen.query_one(GradHeatmap)
        assert heatmap.rows[heatmap.cursor_row][0] == "fc3.weight"
        assert heatmap.status.startswith("fc3.weight · step 300 ")  # the sample at the onset, its exact value
        assert "grad norm 1" in heatmap.status


DEAD = dict(
    id="dead_units:act1",
    rule="dead_units",
    severity="warning",
    first_step=200,
    layers=["act1"],
    evidence={"dead_fraction": 0.67},
    message="67% of act1's ReLU units have output zero for every input since step 200",
    remedies=["Lower the learning rate.", "Use LeakyReLU or GELU."],
)


async def test_a_module_alert_jumps_to_its_activation_row_or_to_the_tensor_before_it(tmp_path: Path) -> None:
    ratio = {**DEAD, "id": "update_ratio:act1", "rule": "update_ratio", "first_step": 100}
    run = write_run(tmp_path / "run.sqlite", [alert(200, **DEAD), alert(100, **ratio)], acts=True)
    async with make_app(FileSource(run)).run_test(size=(100, 30)) as pilot:
        await _loaded(pilot)
        pilot.app.overview.open_alert("dead_units:act1")
        await pilot.pause()
        await pilot.press("g")
        for _ in range(10):
            await pilot.pause(REPAINT_INTERVAL)
        screen = pilot.app.screen
        assert (
            isinstance(screen, LayersScreen) and screen.stat == "dead"
        )  # the dead-unit map, on the ReLU's row
        heatmap = screen.query_one(GradHeatmap)
        assert heatmap.rows[heatmap.cursor_row][0] == "act1" and heatmap.status.startswith("act1 · step 200 ")
        await pilot.press("escape")
        await pilot.pause()
        # A module without parameters and a parameter statistic: the last tensor of the module before it.
        pilot.app.overview.open_alert("update_ratio:act1")
        await pilot.pause()
        await pilot.press("g")
        for _ in range(10):
            await pilot.pause(REPAINT_INTERVAL)
        screen = pilot.app.screen
        assert isinstance(screen, LayersScreen) and screen.stat == "update_ratio"
        heatmap = screen.query_one(GradHeatmap)
        assert heatmap.rows[heatmap.cursor_row][0] == "fc1.bias" and heatmap.status.startswith(
            "fc1.bias · step 100 "
        )


async def test_jump_to_the_chart_marks_the_onset_and_markers_sit_at_onsets(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run.sqlite", alert_records())
    async with make_app(FileSource(run)).run_test(size=(100, 30)) as pilot:
        await _loaded(pilot)
        overview = pilot.app.overview
        chart = overview.query_one(MetricChart)
        assert chart.metric == "loss"
        assert sorted((m.step, m.kind) for m in chart.markers_drawn) == [
            (120, "alert:warning"),
            (250, "alert:info"),
            (300, "alert:warning"),
            (330, "alert:critical"),
        ]
        assert "alerts" in chart.border_subtitle and "critical" in chart.border_subtitle
        overview.query_one(MetricList).selected = "acc"
        await pilot.pause()
        overview.open_alert("loss_divergence:loss")
        await pilot.pause()
        await pilot.press("c")
        await pilot.pause()
        assert pilot.app.screen is overview
        assert overview.query_one(MetricList).selected == "loss"
        assert chart.metric == "loss" and chart.marked_step == 330 and "step 330" in chart.border_title


# -- live ---------------------------------------------------------------------------------------------------------

NAN_TRAINER = textwrap.dedent(
    """
    import sys, time, torch, tuimon_agent
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = tuimon_agent.watch(model, opt, run="alerts-live", dir=sys.argv[1], stats_every=1)
    print(f"RUN {mon.run_id} {mon.run_file}", flush=True)
    x = torch.randn(256, 8)
    y = x[:, :1] * 2
    for i in range(1, 301):
        loss = torch.nn.functional.mse_loss(model(x), y)
        if i == 150:
            loss = loss * float("nan")
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.log(loss=loss)
        print(f"STEP {i}", flush=True)
        time.sleep(0.01)
    mon.close()
    """
)


@pytest.mark.slow
async def test_a_live_run_whose_agent_raises_an_alert_shows_it(tmp_path: Path) -> None:
    import subprocess

    script = tmp_path / "nan_trainer.py"
    script.write_text(NAN_TRAINER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        read_until(proc, "STEP 20")
        app = make_app(LiveSource(wait_live(proc.pid), follow_restarts=False))
        async with app.run_test(size=(100, 30)) as pilot:
            deadline = time.monotonic() + 60
            panel = app.overview.query_one(AlertPanel)
            while time.monotonic() < deadline and not any(a.rule == "nonfinite" for a in panel.alerts):
                await pilot.pause(REPAINT_INTERVAL)
            found = [a for a in panel.alerts if a.rule == "nonfinite"]
            assert found, f"no nonfinite alert; alerts: {[a.id for a in panel.alerts]}"
            assert found[0].severity == "critical" and found[0].first_step == 150
            assert found[0].remedies
            assert any(m.kind == "alert:critical" and m.step == 150 for m in app.state.markers)
            assert app.state.alerts.malformed == 0
    finally:
        proc.kill()
        proc.wait()
