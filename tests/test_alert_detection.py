"""End to end: every ``python -m tuimon.demo.digits --bug`` run, monitored by the real agent, raises its matching alert on the
agent thread (read back from the run file), soon after the pathology is present, and nothing else at warning or
above; the healthy run raises nothing at warning or above. ``tuimon diagnose`` recomputes the same verdicts.

Each bug is trained once per session (a module-scoped fixture) with the fewest steps that show its pathology, on
one CPU thread. The detection table (rule x run) is printed; run with ``-s`` to see it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from tuimon.diagnose import Diagnosis, diagnose_file, format_table  # noqa: E402
from tuimon_agent import protocol  # noqa: E402
from tuimon_agent.alerts.base import SEVERITY_RANK  # noqa: E402
from tuimon_agent.runfile import RunFileReader  # noqa: E402

# Real trainers in subprocesses or long real runs: in the full suite, not in -m "not slow".
pytestmark = pytest.mark.slow

EXPECTED: dict[str, tuple[str | None, int, int]] = {
    # bug: (the rule that must fire at warning+, training steps, the step by which it must have fired)
    "none": (None, 600, 0),
    "exploding": ("exploding_gradients", 300, 200),  # grad norm x300 by step 100
    "vanishing": ("vanishing_gradients", 200, 100),  # present from the first step
    "nan": ("nonfinite", 300, 150),  # NaN at step 100 (a third of the run)
    "overfit": ("overfitting", 500, 400),  # val loss up from step 50 while train -> 0
    "underfit": ("underfitting", 2000, 1900),  # train and val converge slowly near 1.7: converged by ~1700
    "plateau": ("loss_plateau", 400, 300),  # flat at ln 10 from step 1
    "diverge": ("loss_divergence", 200, 60),  # loss x25 from step 3
    "dead-relu": ("dead_units", 200, 100),  # dead from step 1
    "saturation": ("saturation", 200, 100),  # saturated from step 1
    "unnormalized": ("unnormalized_input", 200, 100),  # raw 0-255 input from step 1
}


def _alerts_in(run_file: Path) -> list[protocol.Record]:
    with RunFileReader(run_file) as reader:
        return [r for r in reader.records() if r.kind == protocol.ALERT]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every demo bug trained once with the agent attached (its alerts computed live); bug → run file."""
    from tuimon.demo import digits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out: dict[str, Path] = {}
    try:
        for bug, (_, steps, _) in EXPECTED.items():
            d = tmp_path_factory.mktemp(bug)
            args: argparse.Namespace = digits.parse_args(
                ["--bug", bug, "--steps", str(steps), "--pace", "0", "--no-checks", "--dir", str(d)]
            )
            digits.train(args)
            (run_dir,) = [p for p in d.iterdir() if p.is_dir()]
            out[bug] = run_dir / "run.sqlite"
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def diagnoses(runs: dict[str, Path]) -> dict[str, Diagnosis]:
    """``tuimon diagnose`` over every run; the detection table is printed."""
    out = {bug: diagnose_file(path) for bug, path in runs.items()}
    for bug, d in out.items():
        d.name = bug
    print("\n" + format_table(list(out.values())))
    return out


def _loud(alerts: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Alert payloads at warning or above, by rule."""
    by_rule: dict[str, list[dict[str, Any]]] = {}
    for a in alerts:
        if a["state"] == "active" and SEVERITY_RANK[a["severity"]] >= SEVERITY_RANK["warning"]:
            by_rule.setdefault(a["rule"], []).append(a)
    return by_rule


@pytest.mark.parametrize("bug", list(EXPECTED))
def test_the_agent_raises_the_matching_alert_and_nothing_else(bug: str, runs: dict[str, Path]) -> None:
    rule, steps, by_step = EXPECTED[bug]
    records = _alerts_in(runs[bug])
    loud = _loud([r.data for r in records])
    expected = {rule} if rule else set()
    assert set(loud) == expected, f"{bug}: { ({k: [a['message'] for a in v] for k, v in loud.items()}) }"
    if rule is None:
        return
    first = loud[rule][0]
    assert first["first_step"] <= by_step and first["last_step"] <= by_step + 50, first
    assert first["message"] and first["remedies"] and first["evidence"]
    for r in records:  # every alert record carries the spec's fields
        assert set(r.data) >= {
            "id",
            "rule",
            "state",
            "severity",
            "first_step",
            "last_step",
            "layers",
            "metric",
            "confidence",
            "evidence",
            "message",
            "remedies",
            "actions",
        }


@pytest.mark.parametrize("bug", list(EXPECTED))
def test_tuimon_diagnose_recomputes_the_same_verdict(bug: str, diagnoses: dict[str, Diagnosis]) -> None:
    rule = EXPECTED[bug][0]
    d = diagnoses[bug]
    loud = {r for r in {a["rule"] for a in d.alerts} if SEVERITY_RANK[d.max_severity(r) or "info"] >= 1}
    assert loud == ({rule} if rule else set())
