"""The alert engine (``tuimon_agent.alerts``): the Diagnoser's alert lifecycle, routing, failure containment,
bounded memory, the Context's facts, and the robust-statistics helpers rules share.

Rules here are tiny test rules driven by the loss value itself, so that each lifecycle step is caused by a known
input; the real rules have their own tests.
"""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from tuimon_agent import protocol
from tuimon_agent.alerts import Diagnoser, Rule, default_rules
from tuimon_agent.alerts.base import (
    CRITICAL,
    RULE_NAMES,
    WARNING,
    Context,
    Ema,
    Finding,
    Hysteresis,
    Window,
    log_slope,
    mad,
    set_clip,
    set_lr,
)
from tuimon_agent.alerts.engine import MAX_ALERTS, UPDATE_EVERY
from tuimon_agent.protocol import Record


def metrics(step: int, loss: float, **extra: float) -> Record:
    """A ``metrics`` record as the agent emits it."""
    return Record(protocol.METRICS, step + 1, step, 1000.0 + step, {"values": {"loss": loss, **extra}})


class Threshold(Rule):
    """Active while the loss is >= 5 (3 in a row), resolved after 3 in a row <= 3; critical at >= 10."""

    name = "loss_spike"
    kinds = frozenset({protocol.METRICS})

    def __init__(self) -> None:
        self.state = Hysteresis(5.0, 3.0, min_on=3, min_off=3)
        self.fed = 0

    def feed(self, record: Record, ctx: Context) -> list[Finding] | None:
        self.fed += 1
        v = ctx.loss_value(record)
        assert v is not None and record.step is not None
        changed = self.state.update(v, record.step)
        if self.state.on:
            sev = CRITICAL if v >= 10 else WARNING
            return [
                self.active(
                    "global",
                    record.step,
                    severity=sev,
                    first_step=self.state.onset,
                    evidence={"v": v, "np": np.float32(v)},
                    message=f"loss {v}",
                    actions=[set_lr(0.01)],
                )
            ]
        return [self.resolved("global", record.step)] if changed else None


class Boom(Rule):
    """Raises on its third record."""

    name = "boom"
    kinds = frozenset({protocol.METRICS})

    def __init__(self) -> None:
        self.n = 0

    def feed(self, record: Record, ctx: Context) -> list[Finding] | None:
        self.n += 1
        if self.n == 3:
            raise RuntimeError("broken rule")
        return None


def run(diag: Diagnoser, values: list[float]) -> list[Record]:
    out: list[Record] = []
    for i, v in enumerate(values):
        out.extend(diag.feed(metrics(i, v)))
    return out


def test_lifecycle_onset_escalation_throttled_updates_and_resolve() -> None:
    diag = Diagnoser([Threshold()], warn=None)
    values = [1.0] * 10 + [6.0] * 120 + [20.0] * 5 + [1.0] * 10 + [6.0] * 5 + [20.0] * 3 + [6.0] * 60
    out = run(diag, values)
    alerts = [r.data for r in out]
    assert all(r.kind == protocol.ALERT for r in out)
    onset = alerts[0]
    # Starts at the third bad value, with the streak's first step as its onset.
    assert (onset["state"], onset["severity"], onset["first_step"], onset["last_step"]) == (
        "active",
        WARNING,
        10,
        12,
    )
    assert onset["id"] == "loss_spike:global" and onset["rule"] == "loss_spike"
    assert onset["actions"] == [set_lr(0.01)]
    assert isinstance(onset["evidence"]["np"], float)  # numpy scalars become plain numbers
    # While active at one severity: at most one record every UPDATE_EVERY steps.
    steady = [
        a for a in alerts if a["severity"] == WARNING and a["state"] == "active" and a["last_step"] < 130
    ]
    steps = [a["last_step"] for a in steady]
    assert len(steady) >= 2 and all(b - a >= UPDATE_EVERY for a, b in zip(steps, steps[1:], strict=False))
    # Escalation is emitted at once, the first step kept.
    crit = [a for a in alerts if a["severity"] == CRITICAL]
    assert crit and crit[0]["last_step"] == 130 and crit[0]["first_step"] == 10
    # The way back down waits until the higher severity has held UPDATE_EVERY steps: resolved first here.
    assert all(a["severity"] == CRITICAL for a in alerts if 130 < a["last_step"] <= 137)
    # Resolved exactly once, after 3 good values; nothing after.
    resolved = [a for a in alerts if a["state"] == "resolved"]
    assert len(resolved) == 1 and resolved[0]["last_step"] == 137
    # A second episode: critical at step 150, back to warning only UPDATE_EVERY steps later.
    second = [a for a in alerts if a["last_step"] > 137]
    assert second[0]["first_step"] == 145 and [a["severity"] for a in second[:2]] == [WARNING, CRITICAL]
    down = [a for a in second if a["severity"] == WARNING and a["last_step"] > 150]
    assert down and down[0]["last_step"] == 150 + UPDATE_EVERY
    assert [p["id"] for p in diag.active()] == ["loss_spike:global"]
    # Every record is encodable on the wire and decodes to the same payload.
    for r in out:
        back = protocol.decode(protocol.encode(r))
        assert back.kind == protocol.ALERT and back.data["id"] == "loss_spike:global"


def test_values_around_the_threshold_do_not_flap() -> None:
    rng = np.random.default_rng(0)
    diag = Diagnoser([Threshold()], warn=None)
    # Noise straddling the on threshold (5) but never reaching the off threshold (3) after onset.
    values = [6.0] * 5 + list(4.0 + 1.5 * rng.standard_normal(2000).clip(-0.6, 2))
    out = run(diag, values)
    states = [r.data["state"] for r in out]
    assert states[0] == "active" and "resolved" not in states
    assert len(out) <= 2 + len(values) // UPDATE_EVERY


def test_a_new_episode_after_resolution_gets_a_new_onset() -> None:
    diag = Diagnoser([Threshold()], warn=None)
    out = run(diag, [6.0] * 5 + [1.0] * 5 + [6.0] * 5)
    active = [r.data for r in out if r.data["state"] == "active"]
    assert [a["first_step"] for a in active] == [0, 10]


def test_a_raising_rule_is_disabled_with_one_warning_and_the_others_go_on() -> None:
    warnings: list[str] = []
    good = Threshold()
    diag = Diagnoser([Boom(), good], warn=warnings.append)
    out = run(diag, [6.0] * 10)
    events = [r for r in out if r.kind == protocol.EVENT]
    assert len(events) == 1 and events[0].data["what"] == "rule_error" and events[0].data["rule"] == "boom"
    assert "broken rule" in events[0].data["message"] and "step 2" in events[0].data["message"]
    assert len(warnings) == 1 and "boom" in diag.disabled
    assert good.fed == 10 and any(r.kind == protocol.ALERT for r in out)


def test_a_rule_returning_a_bad_finding_is_disabled() -> None:
    class BadSeverity(Threshold):
        def feed(self, record: Record, ctx: Context) -> list[Finding] | None:
            return [self.active("x", record.step or 0, severity="fatal")]

    diag = Diagnoser([BadSeverity()], warn=None)
    out = diag.feed(metrics(1, 1.0))
    assert out[0].kind == protocol.EVENT and "invalid severity='fatal'" in out[0].data["message"]
    assert diag.feed(metrics(2, 1.0)) == []


def test_alert_records_are_never_fed_back_and_other_kinds_are_routed_only_to_their_readers() -> None:
    rule = Threshold()
    diag = Diagnoser([rule], warn=None)
    alert = Record(protocol.ALERT, 5, 3, 0.0, {"id": "x:y"})
    assert diag.feed(alert) == [] and diag.records_fed == 0
    diag.feed(Record(protocol.EVAL, 6, 3, 0.0, {"values": {"val_loss": 1.0}}))
    assert rule.fed == 0 and diag.records_fed == 1


def test_subordinate_rules_are_capped_at_info_while_their_cause_is_active() -> None:
    class Cause(Threshold):
        name = "vanishing_gradients"

    class Effect(Threshold):
        name = "loss_plateau"
        subordinate_to = frozenset({"vanishing_gradients"})

    diag = Diagnoser([Cause(), Effect()], warn=None)
    out = run(diag, [6.0] * 5)
    effect = [r.data for r in out if r.data["rule"] == "loss_plateau"]
    assert (
        effect
        and effect[0]["severity"] == "info"
        and effect[0]["evidence"]["caused_by"] == "vanishing_gradients"
    )
    assert diag.ctx.is_active("vanishing_gradients") and diag.ctx.is_active("vanishing_gradients", "global")


@pytest.mark.slow
def test_memory_is_bounded_over_a_long_run_with_many_alert_ids() -> None:
    class PerStep(Rule):
        """A new alert id every step (worst case for the engine's table), resolved 3 steps later."""

        name = "dead_units"
        kinds = frozenset({protocol.METRICS})

        def feed(self, record: Record, ctx: Context) -> list[Finding]:
            s = record.step or 0
            return [self.active(f"layer{s}", s, message="m"), self.resolved(f"layer{s - 3}", s)]

    from tuimon_agent.alerts.loss_rules import LOSS_RULES  # the rules that read every metrics record

    diag = Diagnoser([PerStep(), *(cls() for cls in LOSS_RULES)], warn=None)
    rng = np.random.default_rng(1)
    noise = rng.lognormal(0, 0.3, 100_000)
    tracemalloc.start()
    for i in range(20_000):
        diag.feed(metrics(i, 2.0 * noise[i], **{"opt/lr": 0.1}))
    base = tracemalloc.get_traced_memory()[0]
    for i in range(20_000, 100_000):
        diag.feed(metrics(i, 2.0 * noise[i], **{"opt/lr": 0.1}))
    grown = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert len(diag.alerts) <= MAX_ALERTS
    assert grown < 1_000_000, f"memory grew by {grown} bytes over 80,000 more steps"


def test_context_tracks_loss_names_lr_and_the_layer_index() -> None:
    ctx = Context()
    ctx.observe(
        Record(protocol.METRICS, 1, 0, 0.0, {"values": {"acc": 0.5, "train/loss": 2.0, "opt/lr": 0.1}})
    )
    assert ctx.loss_name == "train/loss" and ctx.lr == 0.1 and ctx.lr_max == 0.1
    ctx.observe(Record(protocol.EVAL, 2, 0, 0.0, {"values": {"val/acc": 0.5, "val/loss": 2.1}}))
    assert ctx.eval_loss_name == "val/loss"
    assert ctx.eval_loss_value(Record(protocol.EVAL, 3, 5, 0.0, {"values": {"val/loss": 1.5}})) == 1.5
    ctx.observe(Record(protocol.METRICS, 4, 1, 0.0, {"values": {"opt/lr": float("nan")}}))
    assert ctx.lr == 0.1  # a NaN learning rate is not a fact
    params = [{"name": "0.weight", "module": "0", "module_type": "Linear"}]
    ctx.observe(Record(protocol.LAYERS, 5, None, 0.0, {"params": params}))
    ctx.observe(Record(protocol.MODULES, 6, None, 0.0, {"modules": [{"name": "1", "type": "ReLU"}]}))
    assert ctx.param_names == ["0.weight"] and ctx.module_names == ["1"]
    assert ctx.module_type("1") == "ReLU" and ctx.module_type("0.weight") == "Linear"
    other = Context()
    other.observe(Record(protocol.METRICS, 1, 0, 0.0, {"values": {"mse_loss": 3.0, "opt/lr": 0.1}}))
    other.observe(Record(protocol.EVAL, 2, 0, 0.0, {"values": {"val_mse_loss": 3.0}}))
    assert (other.loss_name, other.eval_loss_name) == ("mse_loss", "val_mse_loss")


def test_default_rules_have_unique_spec_names() -> None:
    names = [r.name for r in default_rules()]
    assert len(names) == len(set(names))
    assert set(names) <= set(RULE_NAMES)
    assert {"loss_divergence", "loss_plateau", "overfitting", "underfitting", "loss_spike"} <= set(names)


def test_robust_helpers() -> None:
    e = Ema(0.5)
    assert math.isnan(e.value)
    assert e.add(4.0) == 4.0  # bias-corrected: the first value is the average
    e.add(float("nan"))
    assert e.value == 4.0
    w = Window(5)
    for i, v in enumerate([1.0, 2.0, 100.0, 3.0, 4.0, 5.0, float("inf")]):
        w.add(v, i)
    assert w.full and list(w.array()) == [2.0, 100.0, 3.0, 4.0, 5.0]
    assert w.median() == 4.0 and w.mad() == pytest.approx(1.4826 * 1.0)
    assert mad(np.array([1.0, 1.0, 1.0])) == 0.0
    steps = np.arange(10.0)
    assert log_slope(steps, 10.0 ** (-0.5 * steps)) == pytest.approx(-0.5)
    assert math.isnan(log_slope(steps[:2], np.ones(2)))
    h = Hysteresis(0.1, 0.2, min_on=2, min_off=2, above=False)
    assert [h.update(v, i) for i, v in enumerate([0.05, 0.05, 0.15, 0.25, 0.05, 0.25, 0.25])] == [
        False,
        True,
        False,
        False,
        False,
        False,
        True,
    ]
    with pytest.raises(ValueError, match="invalid thresholds"):
        Hysteresis(1.0, 2.0)
    assert set_clip(2.5)["args"] == {"max_norm": 2.5}


def test_hostile_and_partial_records_never_raise_out_of_the_engine() -> None:
    warnings: list[str] = []
    diag = Diagnoser(warn=warnings.append)
    junk = [
        Record(protocol.METRICS, 1, 1, 0.0, {"values": None}),
        Record(protocol.METRICS, 2, 2, 0.0, {"values": {"loss": "abc", "opt/lr": "fast"}}),
        Record(protocol.METRICS, 3, None, 0.0, {"values": {"loss": 1.0}}),
        Record(protocol.METRICS, 4, 4, 0.0, {}),
        Record(protocol.EVAL, 5, 5, 0.0, {"values": [1, 2]}),
        Record(protocol.LAYERS, 6, None, 0.0, {"params": "nope"}),
        Record(protocol.MODULES, 7, None, 0.0, {"modules": [1, None, {"name": 3}]}),
        Record(protocol.PARAM_STATS, 8, 8, 0.0, {"update_ratio": "x", "global_grad_norm": None}),
        Record(protocol.PARAM_STATS, 9, 9, 0.0, {"update_ratio": np.zeros(3), "grad_norm": np.ones(7)}),
        Record(protocol.ACT_STATS, 10, 10, 0.0, {"dead": np.ones(2)}),
        Record(protocol.INPUT_STATS, 11, 11, 0.0, {"mean": 5}),
        Record(protocol.EVENT, 12, 12, 0.0, {"what": "nonfinite", "step": "x"}),
        Record("unknown-kind", 13, 13, 0.0, {"a": 1}),
    ]
    for rec in junk:
        diag.feed(rec)
    for i in range(14, 400):  # then a normal stream: the loss rules are still there and working
        diag.feed(metrics(i, 2.3 if i < 20 else 500.0))
    loss_rules = {"loss_divergence", "loss_plateau", "overfitting", "underfitting", "loss_spike"}
    assert not loss_rules & set(diag.disabled), diag.disabled
    assert any(p["rule"] == "loss_divergence" for p in diag.active())
    assert len(warnings) == len(diag.disabled)
