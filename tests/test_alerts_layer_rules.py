"""The per-layer alert rules on synthetic streams of real-shaped records, fed to a real :class:`Diagnoser`.

Each rule: it fires on its pathology (with the layer, onset, evidence and actions), stays quiet on healthy streams
of several shapes (noisy, decaying, scheduled, small-batch), and does not flap. The streams are built record by
record with the same payload shapes the agent emits (``layers``/``modules`` indexes, float32 arrays), seeded.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tuimon_agent import protocol
from tuimon_agent.alerts import RULE_CLASSES, Diagnoser
from tuimon_agent.alerts.activation_rules import DeadUnits, Saturation
from tuimon_agent.alerts.gradient_rules import ExplodingGradients, UpdateRatio, VanishingGradients
from tuimon_agent.alerts.input_rules import UnnormalizedInput, assess
from tuimon_agent.alerts.layer_common import fnum, fpct
from tuimon_agent.alerts.nonfinite import NonFinite
from tuimon_agent.protocol import Record

LAYER_RULES = {
    "nonfinite",
    "exploding_gradients",
    "vanishing_gradients",
    "update_ratio",
    "dead_units",
    "saturation",
    "unnormalized_input",
}

# A small CNN-like model: conv, ReLU, conv, ReLU, linear head; weights and biases in model order.
PARAMS = [
    ("features.0.weight", [16, 1, 3, 3], "features.0", "Conv2d"),
    ("features.0.bias", [16], "features.0", "Conv2d"),
    ("features.2.weight", [32, 16, 3, 3], "features.2", "Conv2d"),
    ("features.2.bias", [32], "features.2", "Conv2d"),
    ("hidden.0.weight", [64, 512], "hidden.0", "Linear"),
    ("hidden.0.bias", [64], "hidden.0", "Linear"),
    ("head.weight", [10, 64], "head", "Linear"),
    ("head.bias", [10], "head", "Linear"),
]
MODULES = [
    ("features.0", "Conv2d"),
    ("features.1", "ReLU"),
    ("features.2", "Conv2d"),
    ("features.3", "ReLU"),
    ("hidden.0", "Linear"),
    ("hidden.1", "Tanh"),
    ("head", "Linear"),
]
P = len(PARAMS)
M = len(MODULES)
WEIGHTS = [i for i, p in enumerate(PARAMS) if len(p[1]) >= 2]
NUMEL = np.array([math.prod(p[1]) for p in PARAMS], dtype=np.float64)


class Stream:
    """Builds the records of one synthetic run and feeds them to a Diagnoser, keeping every alert it emits."""

    def __init__(self, rules: Iterable[Any] | None = None, params: Sequence[tuple] = PARAMS) -> None:
        self.diag = Diagnoser(rules, warn=None)
        self.alerts: list[Record] = []
        self.events: list[Record] = []
        self.params = params
        self.feed(
            Record(
                protocol.LAYERS,
                1,
                None,
                0.0,
                {
                    "params": [
                        {"name": n, "shape": s, "numel": math.prod(s), "module": m, "module_type": t}
                        for n, s, m, t in params
                    ]
                },
            )
        )
        self.feed(
            Record(protocol.MODULES, 2, None, 0.0, {"modules": [{"name": n, "type": t} for n, t in MODULES]})
        )

    def feed(self, rec: Record) -> None:
        for out in self.diag.feed(rec):
            (self.alerts if out.kind == protocol.ALERT else self.events).append(out)

    def metrics(self, step: int, loss: float, lr: float | None = 0.01) -> None:
        values = {"loss": loss}
        if lr is not None:
            values["opt/lr"] = lr
        self.feed(Record(protocol.METRICS, 0, step, 0.0, {"values": values}))

    def params_stats(
        self,
        step: int,
        grad_rms: np.ndarray | float,
        update_ratio: np.ndarray | float = 1e-3,
        nonfinite: Sequence[int] = (),
        bias_scale: float = 1.0,
    ) -> None:
        """One ``param_stats`` record whose gradient RMS per parameter is ``grad_rms`` (biases scaled apart)."""
        rms = np.broadcast_to(np.asarray(grad_rms, dtype=np.float64), (P,)).copy()
        for i, p in enumerate(self.params):
            if len(p[1]) < 2:
                rms[i] *= bias_scale
        gn = (rms * np.sqrt(NUMEL)).astype(np.float32)
        bad = np.zeros(P, dtype=np.uint8)
        for i in nonfinite:
            bad[i] = 1
            gn[i] = np.nan
        ur = np.broadcast_to(np.asarray(update_ratio, dtype=np.float32), (P,)).copy()
        finite = gn[np.isfinite(gn)]
        self.feed(
            Record(
                protocol.PARAM_STATS,
                0,
                step,
                0.0,
                {
                    "grad_norm": gn,
                    "grad_max": gn,
                    "grad_zero": np.zeros(P, dtype=np.float32),
                    "grad_nonfinite": bad,
                    "has_grad": np.ones(P, dtype=np.uint8),
                    "weight_norm": np.sqrt(NUMEL).astype(np.float32) * 0.05,
                    "update_ratio": ur,
                    "global_grad_norm": float(np.sqrt((finite.astype(np.float64) ** 2).sum()))
                    if not len(nonfinite)
                    else math.nan,
                },
            )
        )

    def acts(
        self,
        step: int,
        dead: float = 0.0,
        saturated: float = 0.0,
        nonfinite: Sequence[int] = (),
        first_std: float = 1.0,
    ) -> None:
        nan = np.float32(np.nan)
        dead_a = np.array([dead if t == "ReLU" else nan for _, t in MODULES], dtype=np.float32)
        sat_a = np.array([saturated if t == "Tanh" else nan for _, t in MODULES], dtype=np.float32)
        flags = np.zeros(M, dtype=np.uint8)
        for i in nonfinite:
            flags[i] = 1
        self.feed(
            Record(
                protocol.ACT_STATS,
                0,
                step,
                0.0,
                {
                    "mean": np.zeros(M, dtype=np.float32),
                    "std": np.array([first_std] + [1.0] * (M - 1), dtype=np.float32),
                    "dead": dead_a,
                    "saturated": sat_a,
                    "nonfinite": flags,
                },
            )
        )

    def inputs(
        self,
        step: int,
        mean: Sequence[float],
        std: Sequence[float],
        lo: Sequence[float],
        hi: Sequence[float],
        batch: int = 64,
    ) -> None:
        c = len(mean)
        self.feed(
            Record(
                protocol.INPUT_STATS,
                0,
                step,
                0.0,
                {
                    "shape": [batch, c, 8, 8],
                    "mean": np.asarray(mean, dtype=np.float32),
                    "std": np.asarray(std, dtype=np.float32),
                    "min": np.asarray(lo, dtype=np.float32),
                    "max": np.asarray(hi, dtype=np.float32),
                },
            )
        )

    def of(self, rule: str) -> list[dict[str, Any]]:
        """The payloads of the alert records of one rule, in order."""
        return [a.data for a in self.alerts if a.data["rule"] == rule]

    def loud(self, rules: set[str] = LAYER_RULES) -> list[dict[str, Any]]:
        """Alert payloads at warning or critical from ``rules``."""
        return [
            a.data
            for a in self.alerts
            if a.data["rule"] in rules and a.data["severity"] in ("warning", "critical")
        ]


def healthy_rms(rng: np.random.Generator, scale: float = 1e-3, sigma: float = 0.3) -> np.ndarray:
    """Per-parameter gradient RMS of a healthy step: the head's largest, layers within a decade, log-normal noise."""
    profile = np.array([0.3, 0.3, 0.5, 0.5, 0.6, 0.6, 1.0, 1.0])
    return scale * profile * 10 ** rng.normal(0, sigma, P)


# -- the registry ----------------------------------------------------------------------------------------------


def test_every_layer_rule_is_registered_once_with_a_spec_name() -> None:
    names = [c.name for c in RULE_CLASSES]
    assert set(names) >= LAYER_RULES
    assert len(names) == len(set(names))
    # Causes run before the rules that are subordinate to them, so that a same-record finding is already capped.
    assert names.index("nonfinite") < names.index("exploding_gradients")
    assert names.index("unnormalized_input") < names.index("dead_units")


def test_malformed_records_never_disable_a_rule() -> None:
    s = Stream()
    bad: list[dict[str, Any]] = [
        {"grad_norm": np.zeros(3, dtype=np.float32), "global_grad_norm": "x"},  # wrong length, wrong type
        {"grad_norm": "junk", "update_ratio": None, "grad_nonfinite": [1, 2]},
        {},
    ]
    for i, d in enumerate(bad, 1):
        s.feed(Record(protocol.PARAM_STATS, 0, i, 0.0, d))
        s.feed(Record(protocol.ACT_STATS, 0, i, 0.0, {"dead": [0.5], "saturated": "no"}))
        s.feed(Record(protocol.INPUT_STATS, 0, i, 0.0, {"mean": [1.0, 2.0], "std": [1.0], "shape": "x"}))
        s.feed(Record(protocol.EVENT, 0, i, 0.0, {"what": "nonfinite", "first_step": "soon", "layer": 7}))
    assert s.diag.disabled == {}
    assert [e for e in s.events if e.data.get("what") == "rule_error"] == []


# -- nonfinite -------------------------------------------------------------------------------------------------


def test_nonfinite_names_the_first_step_and_the_first_flagged_layer_in_model_order() -> None:
    s = Stream()
    rng = np.random.default_rng(0)
    for step in range(1, 30):
        s.metrics(step, 2.0 - step * 0.01)
        s.params_stats(step, healthy_rms(rng))
    s.metrics(30, math.nan)
    s.params_stats(30, healthy_rms(rng), nonfinite=[6, 2, 4])  # head, features.2, hidden.0: features.2 first
    s.acts(31, nonfinite=[0, 1, 2])
    for step in range(31, 60):
        s.metrics(step, math.nan)
    (first, *rest) = s.of("nonfinite")
    assert first["severity"] == "critical" and first["state"] == "active"
    assert first["first_step"] == 30
    assert first["metric"] == "loss"
    alerts = s.diag.alerts["nonfinite:global"]
    assert alerts["layers"] == ["features.2.weight"]
    assert alerts["evidence"]["bad_params"] == 3
    assert "step 30" in alerts["message"] and "features.2.weight" in alerts["message"]
    assert any(
        a["command"] == "set_lr" and a["args"]["value"] == pytest.approx(0.001) for a in alerts["actions"]
    )
    assert any(a["command"] == "set_clip" for a in alerts["actions"])
    assert all(p["state"] == "active" for p in rest)  # a NaN does not heal by itself
    assert len(s.of("nonfinite")) <= 3  # one record, then throttled updates: no flood


def test_nonfinite_waits_for_the_step_to_complete_and_names_the_loss_as_the_origin() -> None:
    """As the agent sends them: a step's sampled NaN gradients, then its NaN loss, then the provenance event."""
    s = Stream([NonFinite()])
    for step in range(1, 50):
        s.metrics(step, 1.0)
        s.params_stats(step, 1e-3)
    s.params_stats(50, 1e-3, nonfinite=list(range(P)))
    assert s.of("nonfinite") == []
    s.metrics(50, math.nan)
    s.feed(
        Record(
            protocol.EVENT,
            0,
            50,
            0.0,
            {
                "what": "nonfinite",
                "first_step": 50,
                "of": "loss",
                "layer": None,
                "param": None,
                "exact": True,
                "message": "first non-finite loss at step 50; every gradient of step 50 followed",
            },
        )
    )
    (first,) = s.of("nonfinite")
    assert first["first_step"] == 50 and first["layers"] == [] and first["metric"] == "loss"
    assert "first in the loss" in first["message"]
    assert first["evidence"]["provenance"].startswith("first non-finite loss")


def test_nonfinite_prefers_the_agents_provenance_event() -> None:
    s = Stream([NonFinite()])
    for step in range(1, 10):
        s.metrics(step, 1.0)
    s.feed(
        Record(
            protocol.EVENT,
            0,
            12,
            0.0,
            {
                "what": "nonfinite",
                "first_step": 11,
                "layer": "hidden.1",
                "of": "activation",
                "message": "...",
            },
        )
    )
    s.params_stats(12, 1e-3, nonfinite=[0])
    alert = s.diag.alerts["nonfinite:global"]
    assert alert["first_step"] == 11 and alert["layers"] == ["hidden.1"]
    assert alert["evidence"]["sources"].startswith("activation")


def test_nonfinite_stays_quiet_on_finite_streams_and_resolves_once_clean_again() -> None:
    s = Stream()
    rng = np.random.default_rng(1)
    for step in range(1, 200):
        s.metrics(step, float(rng.uniform(0.1, 1e4)))  # huge but finite losses are not this rule's business
        s.params_stats(step, healthy_rms(rng, scale=1e3))
        s.acts(step)
    assert s.of("nonfinite") == []
    s.metrics(200, math.inf)
    assert s.of("nonfinite") == []  # said once the step is complete, with what the agent's provenance adds
    s.metrics(201, math.inf)
    assert s.of("nonfinite")[-1]["state"] == "active" and s.of("nonfinite")[-1]["first_step"] == 200
    for step in range(201, 260):  # the user restored a checkpoint: everything finite again
        s.metrics(step, 0.5)
        s.params_stats(step, healthy_rms(rng))
        s.acts(step)
    assert s.of("nonfinite")[-1]["state"] == "resolved"


# -- exploding_gradients ---------------------------------------------------------------------------------------


def test_exploding_fires_on_orders_of_magnitude_growth_names_the_layers_and_derives_a_clip_value() -> None:
    s = Stream([ExplodingGradients()])
    rng = np.random.default_rng(2)
    healthy_norms = []
    for step in range(1, 41):
        rms = healthy_rms(rng)
        s.params_stats(step, rms)
        healthy_norms.append(float(np.sqrt(((rms * np.sqrt(NUMEL)) ** 2).sum())))
    assert s.of("exploding_gradients") == []
    for k, step in enumerate(range(41, 61)):
        rms = healthy_rms(rng)
        rms[4:6] *= 10 ** min(6, 0.5 * (k + 1))  # hidden.0 blows up: half a decade per step
        s.params_stats(step, rms)
    alert = s.diag.alerts["exploding_gradients:global"]
    assert alert["state"] == "active"
    assert 41 <= alert["first_step"] <= 46
    assert alert["layers"][0] == "hidden.0.weight"
    assert alert["severity"] == "critical"  # > 4 decades
    (clip,) = [a for a in alert["actions"] if a["command"] == "set_clip"]
    assert min(healthy_norms) <= clip["args"]["max_norm"] <= max(healthy_norms)
    sev = [p["severity"] for p in s.of("exploding_gradients")]
    assert sev == sorted(sev, key=["warning", "critical"].index)  # escalates, never flips back and forth


@pytest.mark.parametrize(
    "shape",
    [
        "noisy",
        "decaying",
        "one_spike_50x",
        "warmup_growth_10x",
        "heavy_tailed",
        "converged_then_hard_batches",
    ],
)
def test_exploding_stays_quiet_on_healthy_gradient_norms(shape: str) -> None:
    s = Stream([ExplodingGradients()])
    rng = np.random.default_rng(3)
    for step in range(1, 301):
        if shape == "noisy":
            scale = 1e-2 * 10 ** rng.normal(0, 0.35)  # batch-8 noise: ±0.35 decades
        elif shape == "decaying":
            scale = 10 ** (1 - 3 * step / 300)  # a transformer's norm falls 1000× from step 1
        elif shape == "one_spike_50x":
            scale = 1e-2 * (50 if step == 150 else 1)
        elif shape == "converged_then_hard_batches":
            # The loss reached ~0: norms fell 1000x; now and then a hard batch brings back 300x for a few steps.
            scale = 1e-1 if step < 20 else (1e-4 * (300 if step % 40 < 3 else 1))
        elif shape == "warmup_growth_10x":
            scale = 1e-3 * 10 ** min(1.0, step / 100)
        else:
            scale = 1e-2 * (1 + rng.pareto(2.5))  # occasional 5-10× bursts
        s.params_stats(step, healthy_rms(rng, scale=scale, sigma=0.1))
    assert s.of("exploding_gradients") == []


def test_exploding_does_not_flap_around_its_threshold() -> None:
    s = Stream([ExplodingGradients()])
    rng = np.random.default_rng(4)
    for step in range(1, 30):
        s.params_stats(step, healthy_rms(rng, sigma=0.05))
    for step in range(30, 200):  # exploded, then hovering between 1.2 and 2.5 decades above the start
        s.params_stats(
            step,
            healthy_rms(
                rng, scale=1e-3 * 10 ** (3.5 if step < 40 else 1.8 + 0.6 * math.sin(step)), sigma=0.05
            ),
        )
    states = [p["state"] for p in s.of("exploding_gradients")]
    assert states[0] == "active"
    assert states.count("resolved") <= 1


# -- vanishing_gradients ---------------------------------------------------------------------------------------


def _vanishing_profile(decades: float) -> np.ndarray:
    # features.0 ... head: the first layers' RMS `decades` below the head's.
    lg = np.array(
        [-decades, -decades, -decades * 0.66, -decades * 0.66, -decades * 0.33, -decades * 0.33, 0, 0]
    )
    return 1e-2 * 10**lg


def test_vanishing_fires_when_early_layers_get_orders_of_magnitude_less_and_the_loss_is_stuck() -> None:
    s = Stream([VanishingGradients()])
    for step in range(1, 40):
        s.metrics(step, 2.30 + 0.01 * math.sin(step))
        s.acts(step)
        s.params_stats(step, _vanishing_profile(8))
    alert = s.diag.alerts["vanishing_gradients:global"]
    assert alert["severity"] == "critical" and alert["first_step"] == 1
    assert alert["layers"][0] == "features.0.weight"
    assert alert["evidence"]["decades"] == pytest.approx(-8, abs=0.1)
    assert len(s.of("vanishing_gradients")) == 1  # stable evidence: one record


@pytest.mark.parametrize(
    "case", ["converging", "healthy_profile", "tiny_biases", "dead_units_explain", "zero_grads"]
)
def test_vanishing_stays_quiet_when_something_else_explains_it(case: str) -> None:
    s = Stream([VanishingGradients()])
    rng = np.random.default_rng(5)
    for step in range(1, 80):
        loss = 2.3 * math.exp(-step / 10) if case == "converging" else 2.3
        s.metrics(step, loss)
        s.acts(step, dead=0.9 if case == "dead_units_explain" else 0.1)
        if case == "converging":
            rms = _vanishing_profile(4)  # small early grads while learning fast are not the pathology
        elif case == "tiny_biases":
            rms = healthy_rms(rng)
            rms[[1, 3]] = 1e-12  # biases of the first convs: another scale, never compared
        elif case == "zero_grads":
            rms = healthy_rms(rng)
            rms[0:4] = 0.0  # exactly zero: unused or dead, not vanishing
        elif case == "dead_units_explain":
            rms = _vanishing_profile(5)
        else:
            rms = healthy_rms(rng) * np.array([0.05, 1, 0.1, 1, 0.3, 1, 1, 1])  # 1.3 decades: healthy
        s.params_stats(step, rms)
    assert s.of("vanishing_gradients") == []


# -- update_ratio ----------------------------------------------------------------------------------------------


def test_update_ratio_warns_when_steps_are_far_too_large() -> None:
    s = Stream([UpdateRatio()])
    for step in range(1, 30):
        s.metrics(step, 1.0, lr=0.5)
        s.params_stats(step, 1e-3, update_ratio=0.6)
    alert = s.diag.alerts["update_ratio:global"]
    assert alert["severity"] == "warning" and alert["evidence"]["direction"] == "high"
    (act,) = alert["actions"]
    assert act["command"] == "set_lr" and act["args"]["value"] == pytest.approx(0.05)  # at most 10× down
    assert len(s.of("update_ratio")) == 1


def test_update_ratio_defers_to_the_loss_when_it_already_diverges() -> None:
    s = Stream([UpdateRatio()])
    for step in range(1, 30):
        s.metrics(step, 2.3 * (1.5**step), lr=5.0)
        s.params_stats(step, 1e-3, update_ratio=0.6)
    assert s.of("update_ratio") and all(p["severity"] == "info" for p in s.of("update_ratio"))
    assert s.diag.alerts["update_ratio:global"]["evidence"]["caused_by"] == "loss_rising"


def test_update_ratio_too_small_is_info_and_a_decayed_schedule_is_healthy() -> None:
    low = Stream([UpdateRatio()])
    for step in range(1, 30):
        low.metrics(step, 2.3, lr=1e-6)
        low.params_stats(step, 1e-3, update_ratio=1e-7)
    alert = low.diag.alerts["update_ratio:global"]
    assert alert["severity"] == "info" and alert["evidence"]["direction"] == "low"
    assert alert["actions"][0]["args"]["value"] == pytest.approx(1e-4)  # at most 100× up

    cosine = Stream([UpdateRatio()])
    for step in range(1, 301):
        lr = 1e-3 * min(1.0, step / 30) * 0.5 * (1 + math.cos(math.pi * step / 300))
        cosine.metrics(step, 1.0, lr=lr)
        cosine.params_stats(step, 1e-3, update_ratio=max(lr, 1e-12))  # ratio follows the LR down to ~0
    assert cosine.of("update_ratio") == []


@pytest.mark.parametrize("ratio", [3e-2, 1e-3, 2e-5])
def test_update_ratio_stays_quiet_in_the_sane_band(ratio: float) -> None:
    s = Stream([UpdateRatio()])
    rng = np.random.default_rng(6)
    for step in range(1, 200):
        s.metrics(step, 1.0)
        s.params_stats(step, 1e-3, update_ratio=ratio * 10 ** rng.normal(0, 0.3, P))
    assert s.of("update_ratio") == []


# -- dead_units and saturation ---------------------------------------------------------------------------------


def test_dead_units_fire_per_layer_with_severity_by_fraction() -> None:
    s = Stream([DeadUnits()])
    for step in range(1, 20):
        s.metrics(step, 2.3)
        s.inputs(step, [0.0], [1.0], [-1.0], [2.0])
        s.acts(step, dead=0.95)
    alert = s.diag.alerts["dead_units:features.1"]
    assert alert["severity"] == "critical" and alert["layers"] == ["features.1"]
    assert alert["evidence"]["dead"] == pytest.approx(0.95, abs=1e-3)
    assert alert["first_step"] == 1
    assert "features.1" in alert["message"] and "95 %" in alert["message"]
    assert "dead_units:features.3" in s.diag.alerts


def test_fractions_and_numbers_print_as_people_write_them() -> None:
    s = Stream([DeadUnits()])
    for step in range(1, 20):
        s.metrics(step, 2.3)
        s.inputs(step, [0.0], [1.0], [-1.0], [2.0])
        s.acts(step, dead=1.0)
    message = s.diag.alerts["dead_units:features.1"]["message"]
    assert "100 %" in message and "e+" not in message
    assert [fpct(x) for x in (1.0, 0.54, 0.035, 0.0004, 0.0)] == ["100 %", "54 %", "3.5 %", "0.04 %", "0 %"]
    assert [fnum(x) for x in (2.0e7, 3.2e-5, 0.021, 1500.0, 12.5, 0.0)] == ["2.00e7", "3.20e-5", "0.021", "1500", "12.5", "0"]
    assert fnum(2.0e7, 2) == "2.0e7"


def test_dead_units_ignore_small_batch_flicker_and_moderate_healthy_fractions() -> None:
    s = Stream([DeadUnits()])
    rng = np.random.default_rng(7)
    for step in range(1, 300):
        s.metrics(step, 2.3 * math.exp(-step / 100))
        s.inputs(step, [0.0], [1.0], [-1.0], [2.0], batch=8)
        # A small batch: many units look dead in one batch (up to 80%), never the same ones for long.
        s.acts(step, dead=float(rng.choice([0.2, 0.3, 0.45, 0.8], p=[0.4, 0.3, 0.2, 0.1])))
    assert s.of("dead_units") == []


def test_dead_units_caused_by_unnormalized_input_are_info() -> None:
    s = Stream()
    for step in range(1, 20):
        s.metrics(step, 2.3)
        s.inputs(step, [75.0], [95.0], [0.0], [255.0])
        s.acts(step, dead=0.99)
    assert s.diag.alerts["unnormalized_input:global"]["severity"] == "critical"
    dead = s.diag.alerts["dead_units:features.3"]
    assert dead["severity"] == "info" and dead["evidence"]["caused_by"] == "unnormalized_input"


def test_dead_units_resolve_with_hysteresis_when_units_revive() -> None:
    s = Stream([DeadUnits()])
    for step in range(1, 100):
        frac = 0.9 if step < 40 else (0.5 if step < 60 else 0.1)  # 0.5 sits between off (0.4) and on (0.6)
        s.acts(step, dead=frac)
    states = [(p["state"], p["last_step"]) for p in s.of("dead_units") if p["id"] == "dead_units:features.1"]
    assert states[0][0] == "active"
    assert [st for st, _ in states].count("resolved") == 1
    assert states[-1][0] == "resolved" and states[-1][1] >= 60


def test_saturation_fires_on_pinned_tanh_and_defers_to_a_diverging_loss() -> None:
    s = Stream([Saturation()])
    for step in range(1, 20):
        s.metrics(step, 2.3 * 0.9**step)
        s.acts(step, saturated=0.8)
    alert = s.diag.alerts["saturation:hidden.1"]
    assert alert["severity"] == "warning" and alert["layers"] == ["hidden.1"]
    assert "±1" in alert["message"]

    diverging = Stream([Saturation()])
    for step in range(1, 20):
        diverging.metrics(step, 2.3 * 2**step)
        diverging.acts(step, saturated=0.99)
    alert = diverging.diag.alerts["saturation:hidden.1"]
    assert alert["severity"] == "info" and alert["evidence"]["caused_by"] == "loss_rising"


def test_saturation_left_behind_by_a_divergence_stays_attributed_to_it() -> None:
    s = Stream([Saturation()])
    for step in range(1, 300):
        s.metrics(
            step, 2.3 * 2 ** min(step, 12) if step < 40 else 3.0
        )  # diverges, then calms down near the start
        s.acts(step, saturated=0.99)  # the units stay pinned
    sat = s.of("saturation")
    assert sat and all(p["severity"] == "info" for p in sat)
    assert sat[-1]["evidence"]["caused_by"] == "loss_rising" and sat[-1]["state"] == "active"


def test_an_output_sigmoid_is_not_a_saturated_layer() -> None:
    s = Stream([Saturation()])
    modules = [*MODULES, ("out", "Sigmoid")]  # a binary classifier's output: confident means near 0 or 1
    s.feed(Record(protocol.MODULES, 3, None, 0.0, {"modules": [{"name": n, "type": t} for n, t in modules]}))
    nan = np.float32(np.nan)
    for step in range(1, 100):
        s.metrics(step, 0.5 * 0.97**step)
        sat = np.array(
            [0.1 if t == "Tanh" else (0.95 if t == "Sigmoid" else nan) for _, t in modules], np.float32
        )
        s.feed(
            Record(protocol.ACT_STATS, 0, step, 0.0, {"saturated": sat, "dead": np.full(len(modules), nan)})
        )
    assert s.of("saturation") == []


def test_saturation_stays_quiet_on_a_healthy_tanh() -> None:
    s = Stream([Saturation()])
    rng = np.random.default_rng(8)
    for step in range(1, 300):
        s.metrics(step, 1.0)
        s.acts(step, saturated=float(rng.uniform(0.0, 0.45)))  # RNN-style tanh near ±1 at times
    assert s.of("saturation") == []


# -- unnormalized_input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mean", "std", "lo", "hi", "problem"),
    [
        ([75.0], [95.0], [0.0], [255.0], "large"),  # raw 8-bit pixels
        ([2e-5, 1e-5], [3e-4, 2e-4], [-1e-3, -1e-3], [1e-3, 1e-3], "tiny"),
        (
            [0.0] * 7 + [2000.0],
            [1.0] * 7 + [1500.0],
            [-3.0] * 7 + [0.0],
            [3.0] * 7 + [9000.0],
            "mixed_scales",
        ),
        (
            [0.0] * 7 + [0.0],
            [1.0] * 7 + [150.0],
            [-3.0] * 8,
            [3.0] * 7 + [500.0],
            "large",
        ),  # one feature in 100s
        ([0.0] * 3, [0.01, 0.01, 20.0], [-0.03, -0.03, -60.0], [0.03, 0.03, 60.0], "mixed_scales"),
    ],
)
def test_unnormalized_input_judges_scale_and_mixed_channels(
    mean: list[float], std: list[float], lo: list[float], hi: list[float], problem: str
) -> None:
    ev = assess({"mean": mean, "std": std, "min": lo, "max": hi})
    assert ev and ev["problem"] == problem
    s = Stream([UnnormalizedInput()])
    s.inputs(1, mean, std, lo, hi)
    alert = s.diag.alerts["unnormalized_input:global"]
    assert alert["first_step"] == 1 and alert["severity"] in ("warning", "critical")
    assert alert["remedies"] and "not normalized since step 1" in alert["message"]


@pytest.mark.parametrize(
    ("mean", "std", "lo", "hi"),
    [
        ([0.0, 0.1, -0.1], [1.0, 0.9, 1.1], [-3.0] * 3, [3.0] * 3),  # standardized
        ([0.45, 0.45, 0.4], [0.27, 0.26, 0.28], [0.0] * 3, [1.0] * 3),  # images in [0, 1]
        ([0.0, 0.0], [0.0, 0.05], [0.0, -0.2], [0.0, 0.2]),  # a constant zero channel (padding) is skipped
        ([-0.42] * 4, [0.0, 0.0, 1.0, 1.2], [-0.42] * 4, [-0.42, -0.42, 2.8, 2.8]),  # MNIST-like borders
    ],
)
def test_unnormalized_input_stays_quiet_on_normalized_inputs(
    mean: list[float], std: list[float], lo: list[float], hi: list[float]
) -> None:
    assert assess({"mean": mean, "std": std, "min": lo, "max": hi}) == {}


@pytest.mark.parametrize(("first_std", "severity"), [(70.0, "critical"), (0.6, "info")])
def test_unnormalized_input_is_info_when_the_first_layer_brings_it_back_to_scale(
    first_std: float, severity: str
) -> None:
    """Raw pixels into a model that divides by 255 in its forward: its first conv's output has a normal scale."""
    s = Stream([UnnormalizedInput()])
    s.acts(1, first_std=first_std)  # the agent sends a forward's act_stats just before its input_stats
    s.inputs(1, [75.0], [95.0], [0.0], [255.0])
    alert = s.diag.alerts["unnormalized_input:global"]
    assert alert["severity"] == severity
    assert ("absorbed_by" in alert["evidence"]) == (severity == "info")


def test_moderately_scaled_input_is_only_info() -> None:
    s = Stream([UnnormalizedInput()])
    s.inputs(1, [4.9], [6.0], [0.0], [16.0])  # raw 0-16 counts: trainable, worth a note
    alert = s.diag.alerts["unnormalized_input:global"]
    assert alert["severity"] == "info" and alert["evidence"]["problem"] == "moderate"


def test_token_ids_feeding_an_embedding_are_not_unnormalized_input() -> None:
    params = [
        ("emb.weight", [1000, 64], "emb", "Embedding"),
        ("rnn.weight_ih_l0", [256, 64], "rnn", "LSTM"),
        ("rnn.weight_hh_l0", [256, 64], "rnn", "LSTM"),
        ("rnn.bias_ih_l0", [256], "rnn", "LSTM"),
        ("rnn.bias_hh_l0", [256], "rnn", "LSTM"),
        ("head.weight", [1000, 64], "head", "Linear"),
        ("head.bias", [1000], "head", "Linear"),
        ("x.bias", [1], "x", "Linear"),
    ]
    s = Stream([UnnormalizedInput()], params=params)
    for step in range(1, 10):
        s.inputs(step, [480.0] * 12, [290.0] * 12, [0.0] * 12, [999.0] * 12, batch=32)
    assert s.of("unnormalized_input") == []


def test_unnormalized_input_resolves_after_three_normalized_batches() -> None:
    s = Stream([UnnormalizedInput()])
    s.inputs(1, [75.0], [95.0], [0.0], [255.0])
    for step in range(2, 6):
        s.inputs(step, [0.0], [1.0], [-1.0], [2.5])
    assert [p["state"] for p in s.of("unnormalized_input")] == ["active", "resolved"]
    assert s.of("unnormalized_input")[-1]["last_step"] == 4


def test_tuimon_diagnose_lists_the_most_severe_alert_first(tmp_path: Path) -> None:
    """A run whose first alert is a warning and whose later one is critical: ``diagnose`` prints the critical
    one first, as the viewer's panel does."""
    from tuimon.diagnose import diagnose_file, format_diagnosis
    from tuimon_agent.runfile import RunFileWriter

    writer = RunFileWriter(tmp_path / "run.sqlite", meta={"run_id": "20260101-000000-cccccc", "name": "order"})
    seq = iter(range(1, 1_000_000))

    class Recorded(Stream):
        def feed(self, rec: Record) -> None:
            rec = Record(rec.kind, next(seq), rec.step, rec.ts, rec.data)
            writer.add(rec, protocol.encode(rec))
            super().feed(rec)

    s = Recorded([DeadUnits(), Saturation()])
    for step in range(1, 40):
        s.metrics(step, 2.3)
        s.inputs(step, [0.0], [1.0], [-1.0], [2.0])
        s.acts(step, dead=0.0 if step < 20 else 1.0, saturated=0.6)
    writer.commit()
    writer.close()
    d = diagnose_file(tmp_path / "run.sqlite")
    severities = [a["max_severity"] for a in d.alerts]
    assert severities[0] == "critical" and "warning" in severities
    assert min(a["first_step"] for a in d.alerts if a["max_severity"] == "warning") < d.alerts[0]["first_step"]
    text = format_diagnosis(d)
    assert text.index("[CRITICAL]") < text.index("[WARNING")
