"""Tests for tuimon.state: the viewer's bounded view state, fed with real protocol records."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tuimon.state import CHUNK, EVENTS_KEPT, RunState, Series
from tuimon_agent import protocol


def wire(rec: protocol.Record) -> protocol.Record:
    """Round-trip a record through the real encoding, as the client would receive it."""
    return protocol.decode(protocol.encode(rec))


def metrics(seq: int, step: int, ts: float = 0.0, **values: float) -> protocol.Record:
    return wire(protocol.Record(protocol.METRICS, seq, step, ts, {"values": values}))


def evals(seq: int, step: int, **values: float) -> protocol.Record:
    return wire(protocol.Record(protocol.EVAL, seq, step, 0.0, {"values": values}))


def hello(seq: int = 1, run_id: str = "r1", name: str = "demo") -> protocol.Record:
    return wire(protocol.Record(protocol.HELLO, seq, None, 100.0, {"run_id": run_id, "name": name, "pid": 1}))


def heartbeat(seq: int, *, dropped: int = 0, queued: int = 0, step: int = 0) -> protocol.Record:
    data = {"dropped": dropped, "queued": queued, "step": step}
    return wire(protocol.Record(protocol.HEARTBEAT, seq, None, 200.0, data))


# -- RunState: sequencing ---------------------------------------------------------------------------------------------


def test_records_in_order_build_series_in_first_seen_order() -> None:
    st = RunState()
    v0 = st.version
    st.apply(hello())
    for i in range(1, 6):
        assert st.apply(metrics(i + 1, i, loss=1.0 / i, acc=0.1 * i))
    st.apply(metrics(7, 6, grad_norm=2.0, loss=0.1))
    assert st.hello["pid"] == 1 and st.run_id == "r1" and st.name == "demo"
    assert list(st.train) == ["loss", "acc", "grad_norm"]
    assert st.train["loss"].count == 6 and st.train["grad_norm"].count == 1
    assert st.train["acc"].last_step == 5 and st.train["acc"].last_value == pytest.approx(0.5)
    assert np.allclose(st.train["loss"].tail_values(3), [1 / 4, 1 / 5, 0.1])
    assert (st.step, st.last_seq, st.received, st.gaps, st.duplicates) == (6, 7, 7, 0, 0)
    assert st.version > v0


def test_gaps_count_missing_seq_numbers() -> None:
    st = RunState()
    st.apply_many([metrics(1, 1, loss=1.0), metrics(2, 2, loss=1.0), metrics(5, 3, loss=1.0)])
    assert st.gaps == 2
    st.apply(metrics(9, 4, loss=1.0))
    assert st.gaps == 5 and st.last_seq == 9


def test_duplicates_are_dropped_and_counted() -> None:
    st = RunState()
    recs = [metrics(i, i, loss=float(i)) for i in range(1, 11)]
    assert st.apply_many(recs) == 10
    # A snapshot overlapping the live stream: the first five are duplicates.
    assert st.apply_many(recs[5:] + [metrics(11, 11, loss=11.0)]) == 1
    assert not st.apply(recs[0])
    assert st.duplicates == 6
    assert st.train["loss"].count == 11 and st.received == 11 and st.gaps == 0


def test_unknown_kinds_are_ignored_but_keep_the_sequence() -> None:
    st = RunState()
    st.apply(metrics(1, 1, loss=1.0))
    assert st.apply(wire(protocol.Record("future_kind", 2, 1, 0.0, {"x": [1, 2]})))
    assert st.apply(wire(protocol.Record("future_ping", 0, None, 0.0, {})))  # ephemeral, unknown
    st.apply(metrics(3, 2, loss=2.0))
    assert st.unknown == 2 and st.gaps == 0 and st.last_seq == 3
    assert list(st.train) == ["loss"] and not st.eval


def test_seq_zero_never_moves_last_seq() -> None:
    st = RunState()
    st.apply(metrics(4, 4, loss=1.0))
    st.apply(metrics(0, 5, loss=2.0))
    st.apply(metrics(0, 6, loss=3.0))
    assert st.last_seq == 4 and st.duplicates == 0 and st.train["loss"].count == 3
    st.apply(metrics(5, 7, loss=4.0))
    assert st.gaps == 3 and st.last_seq == 5


def test_heartbeat_reports_drops_and_trailing_gap() -> None:
    st = RunState()
    st.apply_many([metrics(i, i, loss=1.0) for i in range(1, 4)])
    assert st.apply(heartbeat(7, dropped=2, queued=5, step=40))
    assert (st.heartbeat_seq, st.behind, st.dropped, st.queued, st.step) == (7, 4, 2, 5, 40)
    assert st.received == 3 and st.last_seq == 3 and st.heartbeats == 1 and st.heartbeat_ts == 200.0
    st.apply_many([metrics(i, 40 + i, loss=1.0) for i in range(4, 9)])
    assert st.behind == 0 and st.gaps == 0


def test_end_record() -> None:
    st = RunState()
    st.apply(metrics(1, 1, loss=1.0))
    st.apply(
        wire(protocol.Record(protocol.END, 2, 1, 0.0, {"reason": "exception", "dropped": 17, "steps": 1}))
    )
    assert st.ended and st.end_reason == "exception" and st.dropped == 17 and st.end_steps == 1


def test_events_are_bounded_and_keep_the_latest() -> None:
    st = RunState()
    n = EVENTS_KEPT + 50
    st.apply_many(
        wire(
            protocol.Record(
                protocol.EVENT, i, i * 10, 0.0, {"what": "agent_error", "message": f"m{i}", "x": 1}
            )
        )
        for i in range(1, n + 1)
    )
    assert len(st.events) == EVENTS_KEPT
    assert st.events[-1] == {"what": "agent_error", "message": f"m{n}", "x": 1, "step": n * 10, "ts": 0.0}
    assert st.events[0]["message"] == f"m{n - EVENTS_KEPT + 1}"


def test_new_run_detection_and_reset() -> None:
    st = RunState()
    st.apply_many([hello(1, "r1"), metrics(2, 1, loss=1.0)])
    assert not st.is_new_run(hello(1, "r1"))
    new = hello(1, "r2")
    assert st.is_new_run(new)
    version = st.version
    st.reset()
    assert st.version > version and st.last_seq == 0 and not st.train and st.hello == {}
    assert st.apply(new) and st.run_id == "r2" and st.last_seq == 1


def test_malformed_bodies_are_counted() -> None:
    st = RunState()
    bodies = [
        protocol.encode(protocol.Record(protocol.METRICS, i, i, 0.0, {"values": {"loss": 1.0}}))
        for i in (1, 2)
    ]
    assert st.apply_encoded([bodies[0], b"\xc1garbage", bodies[1][:5], bodies[1]]) == 2
    assert st.malformed == 2 and st.train["loss"].count == 2
    st.note_malformed(3)
    assert st.malformed == 5


def test_non_numeric_values_are_skipped() -> None:
    st = RunState()
    st.apply(
        wire(
            protocol.Record(protocol.METRICS, 1, 1, 0.0, {"values": {"a": 1, "b": True, "c": "x", "d": 2.5}})
        )
    )
    st.apply(wire(protocol.Record(protocol.METRICS, 2, 2, 0.0, {"values": [1, 2]})))
    assert list(st.train) == ["a", "d"] and st.train["a"].last_value == 1.0


# -- RunState: derived figures ----------------------------------------------------------------------------------------


def test_steps_per_second_and_elapsed_use_agent_time() -> None:
    st = RunState()
    assert st.steps_per_second() is None and st.elapsed() == 0.0
    # 50 steps a second for 20 s, then 200 steps a second for the last 15 s (the ~10 s window sees only that).
    ts, step, seq = 1000.0, 0, 0
    for rate, seconds in ((50, 20), (200, 15)):
        for _ in range(rate * seconds):
            seq += 1
            step += 1
            ts += 1.0 / rate
            st.apply(metrics(seq, step, ts, loss=1.0))
    assert st.steps_per_second() == pytest.approx(200.0, rel=0.02)
    assert st.elapsed() == pytest.approx(35.0 - 1 / 50, abs=1e-6)


def test_speed_is_unknown_until_a_second_of_records() -> None:
    """Issue 14: ``204 it/s`` at step 2 of a run paced at 20 it/s (a quick first step). No speed until 1 s."""
    st = RunState()
    st.apply(metrics(1, 1, 1000.0, loss=1.0))
    st.apply(metrics(2, 2, 1000.0049, loss=1.0))  # the first step was fast
    assert st.steps_per_second() is None
    ts = 1000.0049
    for i in range(3, 30):
        ts += 0.05  # then 20 steps a second
        st.apply(metrics(i, i, ts, loss=1.0))
        if ts - 1000.0 < 1.0:
            assert st.steps_per_second() is None, i
    assert st.steps_per_second() == pytest.approx(20.0, rel=0.05)


def test_lr_is_the_latest_opt_lr() -> None:
    st = RunState()
    assert st.lr() is None
    st.apply_many([metrics(1, 1, loss=1.0, **{"opt/lr": 0.1}), metrics(2, 2, loss=1.0, **{"opt/lr": 0.01})])
    assert st.lr() == pytest.approx(0.01)


def test_eval_pairing_and_metric_names() -> None:
    st = RunState()
    st.apply(metrics(1, 1, loss=1.0, acc=0.5, **{"opt/lr": 0.1, "train/ppl": 3.0}, f1=0.2))
    st.apply(evals(2, 1, val_loss=1.2, acc=0.4, **{"eval/ppl": 4.0}, bleu=10.0))
    assert st.eval_for("loss") is st.eval["val_loss"]
    assert st.eval_for("acc") is st.eval["acc"]
    assert st.eval_for("train/ppl") is st.eval["eval/ppl"]
    assert st.eval_for("f1") is None
    assert st.metric_names() == ["loss", "acc", "train/ppl", "f1", "bleu", "opt/lr"]
    assert st.series("bleu") is st.eval["bleu"] and st.series("loss") is st.train["loss"]
    for prefix in ("eval_", "valid_"):
        other = RunState()
        other.apply(evals(1, 1, **{prefix + "loss": 1.0}))
        assert other.eval_for("loss") is other.eval[prefix + "loss"]


# -- Series -----------------------------------------------------------------------------------------------------------


def test_downsample_keeps_a_single_spike_and_spans_the_whole_run() -> None:
    s = Series("loss")
    n = 1_000_000
    steps = np.arange(100, 100 + n)
    vals = np.full(n, 0.5)
    vals[123_457] = 99.0  # one spike somewhere in the middle
    s.extend(steps, vals)
    xs, lo, hi, mean = s.downsample(80)
    assert 0 < len(xs) <= 80
    assert xs[0] == 100  # the first column starts at the first step, not at the start of some recent window
    assert np.all(np.diff(xs) > 0) and xs[-1] > 100 + n - n // 40
    assert hi.max() == 99.0 and np.count_nonzero(hi == 99.0) == 1
    assert lo.min() == 0.5 and np.all(mean >= 0.5) and s.max() == 99.0 and s.min() == 0.5


def test_buckets_match_a_brute_force_reduction() -> None:
    rng = np.random.default_rng(0)
    s = Series("x", capacity=8, tail=4)
    steps = np.arange(0, 100)
    vals = rng.normal(size=100)
    vals[[3, 40, 41]] = [np.nan, np.inf, -np.inf]
    for st, v in zip(steps, vals, strict=True):
        s.add(int(st), float(v))
    assert s.bucket_width == 16  # 100 steps in 8 buckets: the width doubled from 1 to 16
    xs, lo, hi, mean = s.downsample(8)
    assert len(xs) == 7  # steps 0..99 fill buckets 0..6
    for i, x in enumerate(xs):
        group = vals[(steps // 16) == i]
        group = group[np.isfinite(group)]
        assert x == 16 * i
        assert (lo[i], hi[i]) == (group.min(), group.max())
        assert mean[i] == pytest.approx(group.mean())
    assert s.nonfinite == 3 and s.count == 100
    xs2, lo2, hi2, _ = s.downsample(3)  # merged into equal step spans, spikes kept
    assert len(xs2) <= 3 and xs2[0] == 0
    assert hi2.max() == np.nanmax(np.where(np.isfinite(vals), vals, np.nan))


def test_downsample_returns_held_points_exactly_when_they_fit() -> None:
    s = Series("x")
    for i in range(100):
        s.add(i * 3, float(i * i))
    xs, lo, hi, mean = s.downsample(100)
    assert np.array_equal(xs, np.arange(100) * 3)
    assert np.array_equal(lo, np.arange(100.0) ** 2) and np.array_equal(hi, lo) and np.array_equal(mean, lo)
    assert len(s.downsample(10)[0]) <= 10
    assert [len(a) for a in Series("empty").downsample(10)] == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="width=0"):
        s.downsample(0)


def test_nan_is_excluded_and_an_all_nan_bucket_is_nan() -> None:
    s = Series("x", capacity=4, tail=2)
    for step, v in enumerate([1.0, math.nan, 3.0, math.inf, math.nan, math.nan, math.nan, math.nan]):
        s.add(step, v)
    assert s.bucket_width == 2
    xs, lo, hi, mean = s.downsample(10)
    assert np.array_equal(xs, [0, 2, 4, 6])
    assert np.array_equal(lo[:2], [1.0, 3.0]) and np.array_equal(hi[:2], [1.0, 3.0])
    assert np.array_equal(mean[:2], [1.0, 3.0])
    assert np.isnan(lo[2:]).all() and np.isnan(hi[2:]).all() and np.isnan(mean[2:]).all()
    assert s.nonfinite == 6 and s.min() == 1.0 and s.max() == 3.0 and math.isnan(s.last_value)
    only_nan = Series("y")
    only_nan.add(0, math.nan)
    assert np.isnan(only_nan.downsample(5)[1]).all() and only_nan.min() is None and only_nan.max() is None


def test_out_of_order_steps_land_in_their_buckets() -> None:
    s = Series("x", capacity=4)
    for step in (10, 11, 9, 30, 12, 5):  # 9 and 5 are before the first step: they go to bucket 0
        s.add(step, float(step))
    xs, lo, hi, _ = s.downsample(4)
    assert xs[0] == 5 and lo[0] == 5.0 and hi.max() == 30.0 and s.first_step == 5
    xs, lo, _, _ = s.downsample(100)  # the raw points, sorted by step
    assert np.array_equal(xs, [5, 9, 10, 11, 12, 30]) and np.array_equal(lo, xs.astype(float))


def test_add_and_extend_agree() -> None:
    rng = np.random.default_rng(1)
    steps = np.sort(rng.integers(0, 50_000, size=5000))
    vals = rng.normal(size=5000)
    a, b = Series("a", capacity=64, tail=16), Series("b", capacity=64, tail=16)
    for st, v in zip(steps.tolist(), vals.tolist(), strict=True):
        a.add(st, v)
    b.extend(steps, vals)
    for x, y in zip(a.downsample(40), b.downsample(40), strict=True):
        assert np.allclose(x, y, equal_nan=True)
    assert np.array_equal(a.tail_values(100), vals[-16:])
    assert (a.count, a.last_step, a.last_value) == (b.count, b.last_step, b.last_value)


def test_trend_sign() -> None:
    rising, falling, flat, noisy = Series("r"), Series("f"), Series("c"), Series("n")
    rng = np.random.default_rng(2)
    for i in range(300):
        rising.add(i, 1.0 + 0.01 * i)
        falling.add(i, 5.0 * math.exp(-i / 100) + 0.05 * rng.normal())
        flat.add(i, 2.0)
    noisy.add(0, 1.0)
    noisy.add(1, 2.0)
    assert rising.trend() > 0 > falling.trend()
    assert flat.trend() == 0.0 and noisy.trend() == 0.0 and Series("e").trend() == 0.0


def test_series_memory_is_bounded_over_ten_million_steps() -> None:
    s = Series("loss", capacity=2048, tail=512)
    start = s.nbytes()
    chunk = 500_000
    widths = []
    for i in range(20):  # 10M points
        steps = np.arange(i * chunk, (i + 1) * chunk)
        s.extend(steps, np.sin(steps * 1e-4))
        widths.append(s.bucket_width)
        assert s.nbytes() == start
    assert s.count == 10_000_000 and s.last_step == 9_999_999
    assert widths == sorted(widths) and s.bucket_width * s.capacity >= 10_000_000
    xs, lo, hi, _ = s.downsample(200)
    assert (
        xs[0] == 0 and len(xs) <= 200 and hi.max() == pytest.approx(1.0) and lo.min() == pytest.approx(-1.0)
    )


def test_run_state_memory_is_bounded_via_apply_many() -> None:
    st = RunState(capacity=512, tail=128)

    def records(first: int, n: int):
        for i in range(first, first + n):
            yield protocol.Record(
                protocol.METRICS, i, i, 1000.0 + i * 1e-3, {"values": {"loss": 1.0 / i, "acc": 0.5}}
            )

    bound = Series("probe", capacity=512, tail=128).nbytes() + 16 * CHUNK  # buffers plus a full pending chunk
    st.apply_many(records(1, 50_000))
    assert all(s.nbytes() <= bound for s in st.train.values())
    st.apply_many(records(50_001, 450_000))
    assert all(s.nbytes() <= bound for s in st.train.values())
    assert st.train["loss"].count == 500_000 and st.received == 500_000 and st.step == 500_000
    assert st.train["loss"].downsample(100)[0][0] == 1


def test_a_missing_or_absurd_step_uses_the_current_step() -> None:
    st = RunState()
    st.apply(metrics(1, 10, loss=1.0))
    st.apply(wire(protocol.Record(protocol.METRICS, 2, None, 0.0, {"values": {"loss": 2.0}})))
    st.apply(wire(protocol.Record(protocol.METRICS, 3, 2**63, 0.0, {"values": {"loss": 3.0}})))
    assert st.step == 10 and st.train["loss"].last_step == 10 and st.train["loss"].count == 3
    assert st.train["loss"].max() == 3.0
