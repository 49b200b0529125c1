"""mon.sanity_check, run_checks and `tuimon check`: on the demo's real CNN, through the real run file and viewer."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import tuimon_agent
from tuimon_agent import protocol
from tuimon_agent.checks import CheckResult
from tuimon_agent.checks.suite import ALL_CHECKS, run_checks
from tuimon_agent.runfile import RunFileReader

# Real trainers in subprocesses or long real runs: in the full suite, not in -m "not slow".
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


def _demo():  # noqa: ANN202
    from tuimon.demo import digits  # needs scikit-learn, like the demo

    return digits


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    """Every test here runs on one torch thread (see conftest)."""


def test_sanity_check_on_the_demo_cnn_records_every_check(tmp_path: Path) -> None:
    made = _demo().checks()
    model = made["model"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with tuimon_agent.watch(model, run="checks", dir=tmp_path, publish=False) as mon:
        results = mon.sanity_check(made["batch"], made["loss_fn"], val=made["val"], num_classes=10)
    assert [r.name for r in results] == list(ALL_CHECKS)
    assert all(r.ok for r in results), "\n\n".join(r.report() for r in results)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    with RunFileReader(mon.run_file) as reader:
        checks = [r for r in reader.records() if r.kind == protocol.CHECK]
    assert [c.data["name"] for c in checks] == list(ALL_CHECKS)
    assert [CheckResult.from_data(c.data).verdict for c in checks] == [r.verdict for r in results]


def test_the_unnormalized_demo_fails_the_data_check() -> None:
    made = _demo().checks("unnormalized")
    results = run_checks(made["model"], made["batch"], made["loss_fn"], checks=["data_check", "initial_loss"])
    data = results[0]
    assert data.name == "data_check" and data.verdict == "fail" and "255" in data.explanation


def test_a_check_that_raises_is_an_error_result_not_an_exception() -> None:
    model = torch.nn.Linear(4, 3)

    def broken_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the loss is broken")

    results = run_checks(
        model, (torch.randn(8, 4), torch.randint(0, 3, (8,))), broken_loss, checks=["overfit_one_batch"]
    )
    assert results[0].verdict in ("error", "fail") and "broken" in results[0].report()


def test_invalid_arguments_say_what_is_wrong(tmp_path: Path) -> None:
    model = torch.nn.Linear(4, 3)
    batch = (torch.randn(8, 4), torch.randint(0, 3, (8,)))
    with pytest.raises(ValueError, match="must be \\(inputs, targets\\)"):
        run_checks(model, torch.randn(8, 4), torch.nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="invalid checks=\\['gradcheck'\\]"):
        run_checks(model, batch, torch.nn.CrossEntropyLoss(), checks=["gradcheck"])
    with (
        tuimon_agent.watch(dir=tmp_path, publish=False) as mon,
        pytest.raises(ValueError, match="needs a model"),
    ):
        mon.sanity_check(batch, torch.nn.CrossEntropyLoss())


def _tuimon(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tuimon", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_tuimon_check_on_the_demo_passes_with_a_report() -> None:
    out = _tuimon("check", "tuimon.demo.digits:checks")  # the module form, as the README says
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ALL_CHECKS:
        assert f"] {name}:" in out.stdout
    assert out.stdout.rstrip().splitlines()[-1].startswith("checks: ")


def test_tuimon_check_fails_on_a_planted_bug_and_reports_json(tmp_path: Path) -> None:
    script = tmp_path / "buggy.py"
    script.write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            def factory():
                torch.manual_seed(0)
                model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4), nn.Softmax(dim=1))
                x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
                return model, (x, y), nn.CrossEntropyLoss()
            """
        )
    )
    out = _tuimon("check", f"{script}:factory", "--checks", "shape_trace,initial_loss")
    assert out.returncode == 1 and "softmax" in out.stdout.lower()
    out = _tuimon("check", f"{script}:factory", "--checks", "shape_trace", "--json")
    rows = json.loads(out.stdout)
    assert out.returncode == 1 and rows[0]["name"] == "shape_trace" and rows[0]["verdict"] == "fail"


def test_tuimon_check_usage_errors(tmp_path: Path) -> None:
    assert "expected SCRIPT.py:FACTORY" in _tuimon("check", "nonsense").stderr
    out = _tuimon("check", "tuimon/demo/digits.py:nope")  # the script form
    assert out.returncode == 2 and "has no 'nope'" in out.stderr
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    return 42\n")
    out = _tuimon("check", f"{bad}:f")
    assert out.returncode == 2 and "must return (model, (inputs, targets), loss_fn)" in out.stderr


async def test_the_demo_sanity_check_shows_in_the_checks_panel(tmp_path: Path) -> None:
    """The demo calls mon.sanity_check before training; replaying its run file, `c` lists every check."""
    from test_app import wait_loaded

    from tuimon.app import make_app
    from tuimon.screens import ChecksScreen
    from tuimon.source import FileSource
    from tuimon.widgets import ChecksTable

    demo = _demo()
    demo.train(
        demo.parse_args(["--bug", "unnormalized", "--steps", "20", "--pace", "0", "--dir", str(tmp_path)])
    )
    (run_file,) = tmp_path.glob("*/run.sqlite")
    app = make_app(FileSource(run_file))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_loaded(pilot)
        await pilot.press("C")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ChecksScreen)
        table = screen.query_one(ChecksTable)
        assert table.names == list(ALL_CHECKS)
        verdicts = {name: app.state.checks[name]["verdict"] for name in ALL_CHECKS}
        assert verdicts["data_check"] == "fail"  # 0-255 pixels
        row = [str(c) for c in table.get_row_at(0)]
        assert row[0] == "✗ fail" and row[1] == "data_check" and "0 to 255" in row[2]


def test_tuimon_check_takes_a_module_path(tmp_path: Path) -> None:
    pkg = tmp_path / "mymodels"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "factories.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            def small():
                torch.manual_seed(0)
                model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))
                x = torch.randn(48, 6)
                return {"model": model, "batch": (x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()),
                        "loss_fn": nn.CrossEntropyLoss(), "num_classes": 3}
            """
        )
    )
    out = _tuimon(
        "check", "mymodels.factories:small", "--checks", "initial_loss,overfit_one_batch", cwd=tmp_path
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "] initial_loss:" in out.stdout and "] overfit_one_batch:" in out.stdout
