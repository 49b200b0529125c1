"""The SQLite run file: written in batches, readable while written, queryable, and honest about failures."""

from __future__ import annotations

import contextlib
import math
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tuimon_agent import protocol
from tuimon_agent.runfile import PersistenceError, RunFileReader, RunFileWriter


def _write(path: Path, n: int, *, commit_every: int = 50) -> RunFileWriter:
    w = RunFileWriter(path, meta={"run_id": "rid", "name": "test"})
    for i in range(1, n + 1):
        rec = protocol.Record(
            protocol.METRICS, i, i, float(i), {"values": {"loss": 1.0 / i, "nan": float("nan")}}
        )
        w.add(rec, protocol.encode(rec))
        if i % commit_every == 0:
            w.commit()
    return w


def test_round_trip_and_scalars_table(tmp_path: Path) -> None:
    path = tmp_path / "r" / "run.sqlite"
    w = _write(path, 120)
    w.close()
    w.close()  # twice is fine
    with RunFileReader(path.parent) as r:
        assert r.run_id == "rid" and r.meta["name"] == "test"
        assert r.meta["schema_version"] == 1
        assert r.count() == 120 and r.last_seq() == 120
        recs = list(r.records(100))
        assert [x.seq for x in recs] == list(range(101, 121))
    db = sqlite3.connect(path)
    rows = db.execute("SELECT step, value FROM scalars WHERE name = 'loss' ORDER BY step").fetchall()
    assert len(rows) == 120 and rows[3] == (4, 0.25)
    assert (
        db.execute("SELECT COUNT(*) FROM scalars WHERE name = 'nan' AND value IS NULL").fetchone()[0] == 120
    )


def test_reader_sees_only_committed_batches_while_the_writer_is_open(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    w = _write(path, 75, commit_every=50)
    with RunFileReader(path) as r:
        assert r.last_seq() == 50
        w.commit()
        assert r.last_seq() == 75
    w.close()


def test_the_sqlite3_shell_can_query_it(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    _write(path, 10).close()
    try:
        out = subprocess.run(
            ["sqlite3", str(path), "SELECT MAX(step) FROM scalars WHERE name='loss'"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except FileNotFoundError:
        pytest.skip("the sqlite3 shell is not installed")
    assert out.strip() == "10"


def test_not_a_run_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.sqlite"
    bad.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(ValueError, match="not a tuimon run file"):
        RunFileReader(bad)
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE meta (key TEXT, value TEXT)").connection.commit()
    with pytest.raises(ValueError, match="no run_id"):
        RunFileReader(other)
    with pytest.raises(FileNotFoundError):
        RunFileReader(tmp_path / "missing")


def test_unwritable_location_is_a_persistence_error() -> None:
    with pytest.raises(PersistenceError, match="cannot create run file"):
        RunFileWriter("/proc/tuimon-test/run.sqlite", meta={"run_id": "x"})


def test_full_disk_is_a_persistence_error_and_keeps_what_was_committed(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    w = _write(path, 10)
    w.commit()
    w._db.execute("PRAGMA max_page_count = 8")  # SQLite's own "database or disk is full", as on a full disk
    for i in range(11, 3000):
        rec = protocol.Record(protocol.METRICS, i, i, 0.0, {"values": {"loss": math.pi}})
        w.add(rec, protocol.encode(rec))
    with pytest.raises(PersistenceError, match="full"):
        w.commit()
    with contextlib.suppress(PersistenceError):
        w.close()
    with RunFileReader(path) as r:
        assert r.last_seq() == 10
