"""``tuimon.demo.digits``: every ``--bug`` shows its pathology in the numbers of a real (short) training run.

The runs use ``--no-monitor`` and ``--pace 0``; each check reads the figures that ``train()`` returns. The
last tests check the CLI, the pacing, that a monitored run calls the agent API as documented, and that a real
``stop`` command ends a real demo process early.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from tuimon.demo import digits  # noqa: E402 (after the importorskips)

# Real trainers in subprocesses or long real runs: in the full suite, not in -m "not slow".
pytestmark = pytest.mark.slow

LN10 = math.log(10)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Train on one CPU thread, as ``main()`` does: faster here, and the same floats on any machine size."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _args(bug: str, steps: int, *extra: str) -> Any:
    return digits.parse_args(["--bug", bug, "--steps", str(steps), "--pace", "0", *extra])


@cache
def run(bug: str, steps: int = 300, eval_every: int = 50) -> dict[str, Any]:
    """The figures of one bare (``--no-monitor``) run, cached: several checks read the healthy one."""
    return digits.train(_args(bug, steps, "--eval-every", str(eval_every), "--no-monitor"))


def check_none(r: dict[str, Any]) -> None:
    assert r["loss_first"] == pytest.approx(LN10, abs=0.05)
    assert r["loss_final"] < 0.3
    assert r["val_acc"] > 0.9


def check_exploding(r: dict[str, Any]) -> None:
    assert r["grad_norm_max"] >= 100 * r["grad_norm_first"]
    assert r["first_nan_step"] is None  # grows by orders of magnitude without going non-finite


def check_vanishing(r: dict[str, Any]) -> None:
    assert (
        r["grad_ratio_first_last"] <= 1e-2
    )  # at every probe, the first conv gets < 1% of the head's grad norm
    assert r["loss_final"] == pytest.approx(LN10, abs=0.1)


def check_nan(r: dict[str, Any]) -> None:
    nan_step = r["steps"] // 3
    assert r["first_nan_step"] == nan_step
    healthy = r["losses"][: nan_step - 1]
    assert all(math.isfinite(x) for x in healthy) and min(healthy) < 0.5  # it was learning first
    assert math.isnan(r["loss_final"]) and math.isnan(r["val_loss"])  # and the NaN stays


def check_overfit(r: dict[str, Any]) -> None:
    assert r["loss_final"] < 0.1
    assert r["val_loss"] > r["val_loss_min"] + 0.2
    best = min(r["evals"], key=lambda e: e["val_loss"])
    assert best["step"] < r["steps"] / 2  # val loss turned up early and kept rising


def check_underfit(r: dict[str, Any]) -> None:
    assert r["loss_final"] > 1.5 and r["val_loss"] > 1.5
    assert abs(r["val_loss"] - r["loss_final"]) < 0.3  # no generalisation gap: capacity is the problem


def check_plateau(r: dict[str, Any]) -> None:
    assert r["loss_final"] == pytest.approx(LN10, abs=0.1)
    assert r["val_loss"] == pytest.approx(LN10, abs=0.1)


def check_diverge(r: dict[str, Any]) -> None:
    assert max(r["losses"]) > 100
    assert r["loss_final"] > 5 * LN10  # and it stays far above where it started


def check_dead_relu(r: dict[str, Any]) -> None:
    assert r["dead_fraction"] > 0.5


def check_saturation(r: dict[str, Any]) -> None:
    assert r["saturated_fraction"] > 0.5


def check_unnormalized(r: dict[str, Any]) -> None:
    assert r["input_max"] > 100
    assert r["grad_norm_first"] > 10 * run("none")["grad_norm_first"]
    assert r["dead_fraction"] > 0.5  # the huge first step killed the ReLUs


CHECKS: dict[str, tuple[Callable[[dict[str, Any]], None], dict[str, int]]] = {
    "none": (check_none, {}),
    "exploding": (check_exploding, {}),
    "vanishing": (check_vanishing, {}),
    "nan": (check_nan, {}),
    "overfit": (check_overfit, {"eval_every": 10}),
    "underfit": (check_underfit, {}),
    "plateau": (check_plateau, {}),
    "diverge": (check_diverge, {}),
    "dead-relu": (check_dead_relu, {}),
    "saturation": (check_saturation, {}),
    "unnormalized": (check_unnormalized, {}),
}


def test_every_bug_has_a_check() -> None:
    assert set(CHECKS) == set(digits.BUGS)


@pytest.mark.parametrize("bug", list(CHECKS))
def test_bug_shows_its_pathology(bug: str) -> None:
    check, options = CHECKS[bug]
    check(run(bug, **options))


def test_the_healthy_run_shows_none_of_them() -> None:
    r = run("none")
    assert r["grad_norm_max"] < 20 * r["grad_norm_first"]
    assert r["grad_ratio_first_last"] > 0.1
    assert r["first_nan_step"] is None
    assert r["dead_fraction"] < 0.2 and r["saturated_fraction"] == 0.0
    assert r["input_max"] < 10
    assert r["val_loss"] < r["val_loss_min"] + 0.05


def test_cli_defaults() -> None:
    a = digits.parse_args([])
    assert (a.bug, a.steps, a.pace, a.run, a.dir, a.seed, a.eval_every) == (
        "none",
        12000,  # 10 minutes at the default pace: time to try live commands on it
        0.05,
        "digits-none",
        None,
        0,
        50,
    )
    assert not a.no_monitor
    assert digits.parse_args(["--bug", "dead-relu"]).run == "digits-dead-relu"
    assert digits.parse_args(["--bug", "nan", "--run", "x"]).run == "x"
    with pytest.raises(SystemExit):
        digits.parse_args(["--bug", "no-such-bug"])


def test_main_trains_and_prints(capsys: pytest.CaptureFixture[str]) -> None:
    assert digits.main(["--steps", "20", "--pace", "0", "--eval-every", "10", "--no-monitor"]) == 0
    assert capsys.readouterr().out.startswith("none: 20 steps in ")


def test_pace_spreads_the_steps_out() -> None:
    t0 = time.perf_counter()
    r = digits.train(_args("none", 10, "--pace", "0.03", "--no-monitor"))
    assert r["seconds"] >= 0.3 and time.perf_counter() - t0 >= 0.3


def test_no_monitor_needs_no_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tuimon_agent", None)  # makes `import tuimon_agent` raise ImportError
    assert len(digits.train(_args("none", 5, "--no-monitor"))["losses"]) == 5
    with pytest.raises(ImportError):
        digits.train(_args("none", 5))


def test_a_monitored_run_lands_in_the_run_file(tmp_path: Path) -> None:
    """The real agent, not a stand-in: what the loop hands to it is read back from the run file."""
    from tuimon_agent import protocol
    from tuimon_agent.checks.suite import ALL_CHECKS
    from tuimon_agent.runfile import RunFileReader

    digits.train(_args("none", 25, "--eval-every", "10", "--run", "r1", "--dir", str(tmp_path)))
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    with RunFileReader(run_dir) as reader:
        records = list(reader.records())
        assert reader.meta["name"] == "r1"
    hello = records[0].data
    assert hello["model"]["type"] == "DigitsNet" and hello["optimizer"]["type"] == "SGD"
    checks = [r for r in records if r.kind == protocol.CHECK]
    assert [c.data["name"] for c in checks] == list(ALL_CHECKS)  # mon.sanity_check ran before the first step
    assert all(c.step == 0 for c in checks)
    metrics = [r for r in records if r.kind == protocol.METRICS]
    evals = [r for r in records if r.kind == protocol.EVAL]
    assert [r.step for r in metrics] == list(range(1, 26))
    assert all({"loss", "acc", "opt/lr"} <= set(r.data["values"]) for r in metrics)
    assert [r.step for r in evals] == [10, 20, 25]  # every --eval-every steps, and once at the end
    assert all(set(r.data["values"]) == {"val_loss", "val_acc"} for r in evals)
    assert all(0.0 <= r.data["values"]["val_acc"] <= 1.0 for r in evals)
    assert records[-1].kind == protocol.END and records[-1].data["reason"] == "closed"


def test_no_checks_skips_the_sanity_check(tmp_path: Path) -> None:
    from tuimon_agent import protocol
    from tuimon_agent.runfile import RunFileReader

    digits.train(_args("none", 5, "--no-checks", "--dir", str(tmp_path)))
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    with RunFileReader(run_dir) as reader:
        assert not [r for r in reader.records() if r.kind == protocol.CHECK]


def test_a_stop_command_ends_a_real_demo_process_early(tmp_path: Path) -> None:
    """``python -m tuimon.demo.digits`` at its defaults (10 minutes) reads ``mon.should_stop``: a real ``stop``
    sent with ``tuimon send`` ends its loop at the step the command was applied at, and the run file says why."""
    import re

    from helpers import wait_live

    from tuimon_agent import protocol
    from tuimon_agent.runfile import RunFileReader

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tuimon.demo.digits",
            "--dir",
            str(tmp_path),
            "--run",
            f"stop-{tmp_path.name}",
            "--no-checks",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:
        info = wait_live(proc.pid, timeout=60.0)
        sent = subprocess.run(
            [sys.executable, "-m", "tuimon", "send", info.run_id, "stop", "--reason", "seen enough"],
            capture_output=True,
            text=True,
            timeout=60,
            env=os.environ.copy(),
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    applied = re.search(r"applied at step (\d+)", sent.stdout + sent.stderr)
    assert applied is not None, sent.stdout + sent.stderr
    step = int(applied.group(1))
    assert f"none: {step} steps (stopped by a stop command at step {step}) in " in out
    assert step < 12000
    assert info.run_file is not None
    with RunFileReader(info.run_file) as reader:
        records = list(reader.records())
    assert max(r.step for r in records if r.kind == protocol.METRICS) == step
    evals = [r.step for r in records if r.kind == protocol.EVAL]
    assert evals[-1] == step  # validated once more on the way out
    end = records[-1]
    assert end.kind == protocol.END
    assert end.data["reason"] == "stopped" and end.data["stop_reason"] == "seen enough"
