"""The loss-curve rules on synthetic streams: each fires on its pathology, stays quiet (nothing at warning or
above) on healthy curves of many shapes and noise levels, and does not flap.

The streams are ``metrics``/``eval`` records as the agent emits them. Healthy shapes: exponential decay, power law,
warmup + cosine (with the LR in ``opt/lr``), step-LR drops, negative losses, an MSE on a 1e4 scale, a slow linear
decrease; noise is multiplicative (log-normal), from batch-256-like (σ=0.05) to batch-8-like (σ=0.6).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from tuimon_agent import protocol
from tuimon_agent.alerts import Diagnoser
from tuimon_agent.alerts.loss_rules import LOSS_RULES
from tuimon_agent.protocol import Record

RANK = {"info": 0, "warning": 1, "critical": 2}


def records(
    loss: np.ndarray,
    lr: np.ndarray | None = None,
    evals: np.ndarray | None = None,
    eval_every: int = 50,
    name: str = "loss",
    val_name: str = "val_loss",
) -> Iterator[Record]:
    """The records of a run that logs ``loss`` (and ``opt/lr``) every step and ``val_loss`` every ``eval_every``."""
    seq = 0
    for i, v in enumerate(loss):
        step = i + 1
        seq += 1
        values = {name: float(v)}
        if lr is not None:
            values["opt/lr"] = float(lr[i])
        yield Record(protocol.METRICS, seq, step, 0.0, {"values": values})
        if evals is not None and step % eval_every == 0 and step // eval_every <= len(evals):
            seq += 1
            yield Record(
                protocol.EVAL, seq, step, 0.0, {"values": {val_name: float(evals[step // eval_every - 1])}}
            )


def diagnose(loss: np.ndarray, **kw: object) -> tuple[dict[str, tuple[str, int, int]], list[dict]]:
    """Run the loss rules; return {rule: (highest severity, its first_step, the step it was reached)} and every
    alert payload."""
    diag = Diagnoser([cls() for cls in LOSS_RULES], warn=None)
    top: dict[str, tuple[str, int, int]] = {}
    payloads = []
    for rec in records(loss, **kw):  # type: ignore[arg-type]
        for a in diag.feed(rec):
            assert a.kind == protocol.ALERT, a.data
            d = a.data
            payloads.append(d)
            known = top.get(d["rule"])
            if d["state"] == "active" and (known is None or RANK[d["severity"]] > RANK[known[0]]):
                top[d["rule"]] = (d["severity"], d["first_step"], a.step or 0)
    return top, payloads


def loud(top: dict[str, tuple[str, int, int]]) -> dict[str, tuple[str, int, int]]:
    """The alerts that reached warning or critical."""
    return {k: v for k, v in top.items() if v[0] != "info"}


def noisy(curve: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Multiplicative minibatch noise with median 1."""
    return curve * np.exp(sigma * rng.standard_normal(len(curve)))


def healthy(
    n: int, rng: np.random.Generator, sigma: float
) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Healthy training curves ``{shape: (loss, lr or None)}`` of ``n`` steps."""
    t = np.arange(n, dtype=float)
    out: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    out["exp"] = (noisy(0.05 + 2.25 * np.exp(-t / (n / 8)), rng, sigma), None)
    out["power"] = (noisy(2.3 * (1 + t / 20) ** -0.5, rng, sigma), None)
    warm = n // 10
    lr = np.where(t < warm, (t + 1) / warm, 0.5 * (1 + np.cos(np.pi * (t - warm) / (n - warm)))) * 3e-4
    progress = np.cumsum(lr) / lr.sum()
    out["warmup_cosine"] = (noisy(0.3 + 2.0 * np.exp(-6 * progress), rng, sigma), lr)
    third = n // 3
    step_lr = 0.1 * 0.1 ** (t // third)
    base = np.concatenate(
        [
            1.0 + 1.3 * np.exp(-t[:third] / (n / 20)),
            0.4 + 0.6 * np.exp(-t[:third] / (n / 40)),
            0.2 + 0.2 * np.exp(-t[: n - 2 * third] / (n / 40)),
        ]
    )
    out["step_lr"] = (noisy(base, rng, sigma), step_lr)
    out["negative"] = (-3.0 + 3.0 * np.exp(-t / (n / 6)) + 0.3 * sigma * rng.standard_normal(n), None)
    out["mse_1e4"] = (noisy(1e4 * (0.01 + np.exp(-t / (n / 5))), rng, sigma), None)
    out["slow_linear"] = (noisy(2.3 - 1.5 * t / n, rng, sigma), None)
    return out


def evals_for(loss: np.ndarray, rng: np.random.Generator, gap: float = 0.05, every: int = 50) -> np.ndarray:
    """Eval losses that follow the training curve with a small generalisation gap and 2% eval noise."""
    k = len(loss) // every
    clean = np.array([np.median(loss[max(0, (i + 1) * every - 25) : (i + 1) * every]) for i in range(k)])
    return clean + gap * np.abs(clean) + 0.02 * np.abs(clean) * rng.standard_normal(k)


@pytest.mark.parametrize("n", [300, 1000, 5000])
@pytest.mark.parametrize("sigma", [0.05, 0.3, 0.6])
def test_healthy_curves_raise_nothing_at_warning_or_above(n: int, sigma: float) -> None:
    for seed in range(2):
        rng = np.random.default_rng(seed)
        for shape, (loss, lr) in healthy(n, rng, sigma).items():
            top, _ = diagnose(loss, lr=lr, evals=evals_for(loss, rng))
            assert loud(top) == {}, f"{shape} n={n} sigma={sigma} seed={seed}: {top}"


def test_divergence_explosion_is_critical_within_a_few_blocks_and_suggests_a_tenth_of_the_lr() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(400.0)
    loss = noisy(
        np.where(t < 150, 2.3 * np.exp(-t / 100), 2.3 * np.exp(-150 / 100) * 10 ** ((t - 150) / 20)), rng, 0.2
    )
    loss = np.minimum(loss, 1e6)
    top, payloads = diagnose(loss, lr=np.full(400, 0.3))
    sev, first, at = top["loss_divergence"]
    assert sev == "critical" and 150 <= first <= 200 and at <= 220
    alert = next(p for p in payloads if p["rule"] == "loss_divergence")
    assert alert["actions"][0]["command"] == "set_lr" and alert["actions"][0]["args"][
        "value"
    ] == pytest.approx(0.03)
    assert "learning rate is too high" in alert["message"] and alert["evidence"]["loss_initial"] > 0
    assert set(loud(top)) == {"loss_divergence"}


def test_divergence_from_the_first_steps_uses_the_loss_before_any_update() -> None:
    # lr far too high: the loss is 50x its initial value from step 3 on, erratic.
    rng = np.random.default_rng(1)
    loss = np.concatenate([[2.3, 5.0], noisy(np.full(298, 60.0), rng, 0.6)])
    top, _ = diagnose(loss)
    assert top["loss_divergence"][0] == "critical" and top["loss_divergence"][2] <= 60


def test_divergence_relapse_after_progress_is_a_warning() -> None:
    rng = np.random.default_rng(2)
    t = np.arange(1200.0)
    # Learns down to 0.3, then climbs back to 1.9 (most of the way to the initial 2.3) and stays there.
    clean = np.where(t < 500, 0.3 + 2.0 * np.exp(-t / 80), np.minimum(0.3 + (t - 500) * 0.01, 1.9))
    top, _ = diagnose(noisy(clean, rng, 0.3))
    sev, first, _ = top["loss_divergence"]
    assert sev == "warning" and first >= 550


def test_plateau_with_tiny_updates_fires_after_burn_in_and_suggests_10x_lr() -> None:
    rng = np.random.default_rng(3)
    loss = noisy(np.full(400, 2.3026), rng, 0.05)
    diag = Diagnoser([cls() for cls in LOSS_RULES], warn=None)
    out = []
    for rec in records(loss, lr=np.full(400, 1e-6)):
        if rec.step == 50:  # a param_stats record with tiny update ratios, as the agent sends it
            out += diag.feed(
                Record(
                    protocol.PARAM_STATS,
                    0,
                    50,
                    0.0,
                    {"update_ratio": np.full(4, 1e-8, np.float32), "global_grad_norm": 0.3},
                )
            )
        out += diag.feed(rec)
    plateau = [r.data for r in out if r.data["rule"] == "loss_plateau"]
    assert plateau and plateau[0]["severity"] == "warning" and plateau[0]["first_step"] == 1
    assert 200 <= plateau[0]["last_step"] <= 260
    assert plateau[0]["actions"][0]["args"]["value"] == pytest.approx(1e-5)
    assert "too low" in plateau[0]["message"]


def test_plateau_is_silent_during_a_warmup_and_resolves_when_learning_starts() -> None:
    rng = np.random.default_rng(4)
    t = np.arange(3000.0)
    lr = np.minimum((t + 1) / 2000, 1.0) * 1e-3
    clean = np.where(t < 2000, 2.3, 0.3 + 2.0 * np.exp(-(t - 2000) / 150))  # flat through a 2,000-step warmup
    top, payloads = diagnose(noisy(clean, rng, 0.2), lr=lr)
    assert "loss_plateau" not in loud(top)
    stuck = noisy(np.where(t < 1500, 2.3, 0.3 + 2.0 * np.exp(-(t - 1500) / 150)), rng, 0.2)
    top, payloads = diagnose(stuck, lr=np.full(3000, 1e-3))  # constant LR: stuck for 1,500 steps, then learns
    states = [p["state"] for p in payloads if p["rule"] == "loss_plateau"]
    assert states[0] == "active" and states[-1] == "resolved" and states.count("resolved") == 1


def test_overfitting_fires_when_val_rises_while_train_falls_and_names_the_best_step() -> None:
    rng = np.random.default_rng(5)
    t = np.arange(1500.0)
    train = noisy(0.01 + 2.3 * np.exp(-t / 100), rng, 0.3)
    k = np.arange(1, 31) * 50.0
    val = np.where(
        k < 400, 0.9 + 1.4 * np.exp(-k / 100), 0.92 + 0.0006 * (k - 400)
    ) + 0.005 * rng.standard_normal(30)
    top, payloads = diagnose(train, evals=val)
    sev, first, at = top["overfitting"]
    assert sev == "warning" and 300 <= first <= 500 and at <= 900
    alert = next(p for p in payloads if p["rule"] == "overfitting")
    assert f"step {first}" in alert["remedies"][0] and alert["metric"] == "val_loss"
    assert set(loud(top)) == {"overfitting"}


def test_underfitting_fires_when_train_and_val_converge_high_and_not_when_val_is_missing() -> None:
    rng = np.random.default_rng(6)
    t = np.arange(2000.0)
    train = noisy(1.7 + 0.6 * np.exp(-t / 150), rng, 0.1)  # converges at 74% of the initial loss
    top, _ = diagnose(train, evals=evals_for(train, rng, gap=0.02))
    sev, first, at = top["underfitting"]
    assert sev == "warning" and at <= 1200
    top, _ = diagnose(train)
    assert "underfitting" not in top


def test_spikes_are_isolated_jumps_and_not_level_shifts() -> None:
    rng = np.random.default_rng(7)
    loss = noisy(0.05 + 2.25 * np.exp(-np.arange(1000.0) / 100), rng, 0.1)
    loss[600] = 40.0  # far above everything, back at once
    top, payloads = diagnose(loss)
    assert top["loss_spike"][0] == "warning" and top["loss_spike"][1] == 601
    alert = next(p for p in payloads if p["rule"] == "loss_spike")
    assert alert["evidence"]["spike"] == 40.0 and alert["evidence"]["spike_step"] == 601
    assert [p["state"] for p in payloads if p["rule"] == "loss_spike"][-1] == "resolved"
    small = loss.copy()
    small[600] = small[599] * 6  # 6x the level: a spike, but info only
    top, _ = diagnose(small)
    assert top["loss_spike"][0] == "info"
    shift = loss.copy()
    shift[600:] *= 50  # not back: a level shift, divergence's business
    top, _ = diagnose(shift)
    assert "loss_spike" not in top and top["loss_divergence"][0] != "info"


def test_alerts_do_not_flap_on_a_pathology_that_persists() -> None:
    rng = np.random.default_rng(8)
    loss = noisy(np.full(5000, 40.0), rng, 0.6)
    loss[0] = 2.3
    _, payloads = diagnose(loss)
    div = [p for p in payloads if p["rule"] == "loss_divergence"]
    assert [p["state"] for p in div].count("resolved") == 0
    assert len(div) <= 2 + 5000 // 50  # onset, severity changes, then at most one update every 50 steps


def test_rules_read_other_loss_names_and_skip_non_finite_values() -> None:
    rng = np.random.default_rng(9)
    loss = noisy(np.full(400, 1.0), rng, 0.05)
    loss[::7] = np.nan  # the nonfinite rule's business: ignored here
    loss[0] = 1.0
    top, _ = diagnose(loss * np.where(np.arange(400) > 100, 30.0, 1.0), name="train/loss")
    assert top["loss_divergence"][0] == "critical"


def test_an_eval_loss_logged_with_log_rather_than_log_eval_is_paired_too() -> None:
    rng = np.random.default_rng(10)
    t = np.arange(1500.0)
    train = noisy(0.01 + 2.3 * np.exp(-t / 100), rng, 0.3)
    diag = Diagnoser([cls() for cls in LOSS_RULES], warn=None)
    out = []
    for i, v in enumerate(train):
        step = i + 1
        out += diag.feed(Record(protocol.METRICS, 0, step, 0.0, {"values": {"loss": float(v)}}))
        if step % 50 == 0:  # mon.log(val_loss=...) on its own: a metrics record
            val = (0.9 + 1.4 * np.exp(-step / 100)) if step < 400 else 0.92 + 0.0006 * (step - 400)
            out += diag.feed(Record(protocol.METRICS, 0, step, 0.0, {"values": {"val_loss": float(val)}}))
    assert diag.ctx.eval_loss_name == "val_loss" and diag.ctx.eval_in_metrics
    over = [r.data for r in out if r.data["rule"] == "overfitting"]
    assert over and over[0]["severity"] == "warning" and over[0]["metric"] == "val_loss"
