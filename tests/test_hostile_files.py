"""Files an attacker on the same machine could plant, and files a crash or a bad disk could leave behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tuimon_agent import discovery

pytestmark = pytest.mark.slow


def _info(run_id: str) -> discovery.ConnectionInfo:
    return discovery.ConnectionInfo(
        run_id=run_id,
        name="r",
        pub="ipc:///nowhere.pub",
        router="ipc:///nowhere.req",
        key="ab" * 32,
        pid=os.getpid(),
        host="",
        started=0.0,
        run_file=None,
    )


def test_a_symlink_at_the_temporary_name_is_never_written_through(
    private_runtime_dir: Path, tmp_path: Path
) -> None:
    target = tmp_path / "victim.txt"
    target.write_text("untouched")
    target.chmod(0o644)
    run_id = "20260101-000000-aaaaaa"
    (private_runtime_dir / f".{run_id}.json.tmp").symlink_to(target)
    path = discovery.write_connection_file(_info(run_id), private_runtime_dir)
    assert target.read_text() == "untouched"
    st = path.lstat()
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert discovery.ConnectionInfo.load(path).key == "ab" * 32


def test_a_stale_world_readable_temporary_file_is_not_reused(private_runtime_dir: Path) -> None:
    run_id = "20260101-000000-bbbbbb"
    stale = private_runtime_dir / f".{run_id}.json.tmp"
    stale.write_text("{}")
    stale.chmod(0o644)
    old = os.umask(0)
    try:
        path = discovery.write_connection_file(_info(run_id), private_runtime_dir)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    leftovers = [p.name for p in private_runtime_dir.iterdir() if p.name.endswith(".tmp") and p != stale]
    assert leftovers == []
