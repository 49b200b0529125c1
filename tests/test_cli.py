"""The tuimon command's printing subcommands and its error messages, on real runs."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tuimon_agent
from tuimon import cli
from tuimon_agent import protocol
from tuimon_agent.runfile import RunFileReader


def _record_run(tmp_path: Path, name: str = "cli-run", steps: int = 30) -> Path:
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with tuimon_agent.watch(model, opt, run=name, dir=tmp_path) as mon:
        for _ in range(steps):
            loss = model(torch.randn(4, 3)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.log(loss=loss)
            if mon.step % 10 == 0:
                mon.log_eval(val_loss=float("nan") if mon.step == 20 else 0.5)
    assert mon.run_file is not None
    return mon.run_file


def test_list_shows_live_and_ended_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # `tuimon list` also looks in ./tuimon-runs
    done = _record_run(tmp_path, "finished")
    with tuimon_agent.watch(run="running", dir=tmp_path) as live:
        assert cli.main(["list", "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert [(r["name"], r["state"]) for r in rows] == [("running", "live"), ("finished", "ended")]
        assert rows[0]["pid"] > 0 and rows[0]["run_id"] == live.run_id and rows[1]["run_file"] == str(done)
        assert cli.main(["list"]) == 0
        out = capsys.readouterr().out
        assert (
            out.splitlines()[0].split()[:3] == ["RUN", "ID", "NAME"]
            and "running" in out
            and "finished" in out
        )


def test_tail_and_export_of_a_finished_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _record_run(tmp_path)
    assert cli.main(["tail", str(path), "--count", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and "eval" in lines[1] and lines[2].split()[1] == "end"
    assert cli.main(["tail", str(path.parent), "--json", "-n", "2"]) == 0
    objs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert objs[-1]["kind"] == "end" and objs[-1]["reason"] == "closed"

    assert cli.main(["export", "cli-run", "--format", "csv"]) == 0  # by name, through TUIMON_DIR
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    losses = [r for r in rows if r["name"] == "loss"]
    assert len(losses) == 30 and float(losses[0]["value"]) > 0
    assert [r["value"] for r in rows if r["name"] == "val_loss"] == ["0.5", "nan", "0.5"]
    out = tmp_path / "all.jsonl"
    assert cli.main(["export", str(path), "--format", "jsonl", "-o", str(out)]) == 0
    with RunFileReader(path) as r:
        assert len(out.read_text().splitlines()) == r.count()
    first = json.loads(out.read_text().splitlines()[0])
    assert first["kind"] == protocol.HELLO and first["name"] == "cli-run"


def test_tail_summarises_bulky_records_and_filters_by_kind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with tuimon_agent.watch(model, opt, run="bulky", dir=tmp_path, stats_every=2, hist_every=2) as mon:
        for _ in range(6):
            loss = model(torch.randn(8, 64)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.log(loss=loss)
    assert mon.run_file is not None
    assert cli.main(["tail", str(mon.run_file), "-n", "1000"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(" histograms " in line for line in lines) and any(" param_stats " in line for line in lines)
    assert max(len(line) for line in lines) < 400  # histograms and statistics summarised, not kilobytes
    assert cli.main(["tail", str(mon.run_file), "--kind", "histograms", "-n", "2"]) == 0
    hist_lines = capsys.readouterr().out.splitlines()
    assert len(hist_lines) == 2 and all(line.split()[1] == "histograms" for line in hist_lines)
    assert cli.main(["tail", str(mon.run_file), "--kind", "metrics,end", "-n", "100"]) == 0
    kinds = {line.split()[1] for line in capsys.readouterr().out.splitlines()}
    assert kinds == {"metrics", "end"}
    assert cli.main(["tail", str(mon.run_file), "--kind", "histograms", "-n", "1", "--full"]) == 0
    assert len(capsys.readouterr().out) > 1000  # --full prints every bin


def test_clear_messages_for_what_is_not_there(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 1
    assert "no live tuimon run on this machine" in capsys.readouterr().err
    assert cli.main(["attach", "nope"]) == 1
    assert "no run matches 'nope'" in capsys.readouterr().err
    bad = tmp_path / "bad.sqlite"
    bad.write_text("not a database")
    assert cli.main(["replay", str(bad)]) == 1
    assert "is not a tuimon run file" in capsys.readouterr().err
    assert cli.main(["replay", str(tmp_path / "missing")]) == 1
    assert "no run file at" in capsys.readouterr().err
    assert cli.main(["tail", "tcp://127.0.0.1:notaport"]) == 1
    assert "invalid endpoint" in capsys.readouterr().err


def test_no_live_run_message_points_at_recent_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _record_run(tmp_path, "earlier")
    assert cli.main([]) == 1
    err = capsys.readouterr().err
    assert "tuimon demo" in err and f"tuimon replay {path}" in err


def test_the_command_runs_as_a_module_and_prints_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tuimon", "--help"], capture_output=True, text=True, check=True
    )
    for sub in ("list", "attach", "replay", "tail", "export", "demo"):
        assert sub in out.stdout
    assert "textual" not in subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, tuimon.cli; print(sorted(m for m in sys.modules if 'textual' in m))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.replace("[]", "")
