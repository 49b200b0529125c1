"""Run names a resolver must handle: one longer than any file name, and one that two live runs share."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

import tuimon_agent
from tuimon import cli
from tuimon.runs import RunNotFound, resolve


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_a_name_longer_than_the_file_system_allows(private_runtime_dir: Path, tmp_path: Path) -> None:
    name = "n" * 400  # NAME_MAX is 255 bytes on Linux file systems
    with tuimon_agent.watch(run=name, dir=tmp_path) as mon:
        mon.log(loss=1.5)
        assert resolve(name) is not None
    code, out, err = _cli("export", name)
    assert code == 0, err
    assert "loss" in out and "1.5" in out
    code, out, err = _cli("tail", "--no-follow", name)
    assert code == 0 and "loss=1.5" in out, err


def test_two_live_runs_with_one_name_are_ambiguous(private_runtime_dir: Path, tmp_path: Path) -> None:
    with tuimon_agent.watch(run="same", dir=tmp_path) as a, tuimon_agent.watch(run="same", dir=tmp_path) as b:
        with pytest.raises(RunNotFound) as exc:
            resolve("same")
        message = str(exc.value)
        assert "ambiguous" in message and a.run_id in message and b.run_id in message
        assert resolve(a.run_id).run_id == a.run_id  # an id still names one  # type: ignore[union-attr]
        code, _out, err = _cli("send", "same", "pause")
        assert code != 0 and "ambiguous" in err and a.run_id in err and b.run_id in err
        prefix = a.run_id[:9]  # the date part both ids share
        with pytest.raises(RunNotFound, match="ambiguous"):
            resolve(prefix)
