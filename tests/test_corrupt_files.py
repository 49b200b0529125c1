"""Damaged run files: every reader gives one clear line (and what it could read), never a traceback.

A real run file is written by a real training, then damaged as disks, crashes and copies damage files: random bit
flips, truncations, a zero-byte file, a file with only the ``meta`` table, and records whose arrays are malformed
inside an otherwise valid file. ``export``, ``diagnose``, ``tail`` and the replay source read each one.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import random
import shutil
import sqlite3
from pathlib import Path

import msgpack
import pytest

from tuimon import cli
from tuimon.source import FileSource, SourceUpdate
from tuimon_agent import protocol

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def good_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    import tuimon_agent

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    d = tmp_path_factory.mktemp("good")
    with tuimon_agent.watch(model, opt, dir=d, publish=False, stats_every=5, hist_every=10) as mon:
        for _ in range(60):
            x = torch.randn(32, 8)
            loss = torch.nn.functional.cross_entropy(model(x), (x[:, 0] > 0).long())
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.log(loss=loss.detach())
    assert mon.run_file is not None
    return mon.run_file


def _bad_array(shape: list[int], dtype: str, raw: bytes) -> bytes:
    payload = msgpack.packb([dtype, shape, raw], use_bin_type=True)
    return msgpack.packb(
        {
            "v": protocol.PROTOCOL_VERSION,
            "k": "histograms",
            "q": 0,
            "s": 1,
            "t": 0.0,
            "d": {"x": msgpack.ExtType(1, payload)},
        },
        use_bin_type=True,
    )


def _variants(good: Path, root: Path) -> list[Path]:
    data = good.read_bytes()
    out: list[Path] = []

    def put(name: str, content: bytes) -> None:
        p = root / name / "run.sqlite"
        p.parent.mkdir()
        p.write_bytes(content)
        out.append(p)

    put("zero-bytes", b"")
    for frac in (0.05, 0.2, 0.5, 0.8, 0.97):
        put(f"truncated-{frac}", data[: int(len(data) * frac)])
    rng = random.Random(1234)
    for i in range(32):
        b = bytearray(data)
        for _ in range(rng.choice((1, 8, 64, 512))):
            pos = rng.randrange(100 if i % 4 else 0, len(b))
            b[pos] ^= 1 << rng.randrange(8)
        put(f"flipped-{i}", bytes(b))
    meta_only = root / "meta-only" / "run.sqlite"
    meta_only.parent.mkdir()
    db = sqlite3.connect(meta_only)
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    db.execute("INSERT INTO meta VALUES ('run_id', '\"x\"')")
    db.commit()
    db.close()
    out.append(meta_only)
    bad_arrays = root / "bad-arrays" / "run.sqlite"
    bad_arrays.parent.mkdir()
    shutil.copy(good, bad_arrays)
    db = sqlite3.connect(bad_arrays)
    top = db.execute("SELECT MAX(seq) FROM records").fetchone()[0]
    for i, body in enumerate(
        (
            _bad_array([10**12], "V0", b""),  # zero-size items: "10^12 elements" in no bytes
            _bad_array([-4, -2], "<f4", b"\0" * 32),
            _bad_array([2**40, 0], "<f4", b""),
            _bad_array(["a"], "<f4", b"\0" * 4),
            _bad_array([4], "<U8", b"\0" * 128),
        )
    ):
        db.execute(
            "INSERT INTO records (seq, kind, step, ts, body) VALUES (?, 'histograms', 1, 0.0, ?)",
            (top + 1 + i, body),
        )
    db.commit()
    db.close()
    out.append(bad_arrays)
    return out


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _replay(path: Path) -> list[SourceUpdate]:
    updates: list[SourceUpdate] = []
    asyncio.run(FileSource(path).run(updates.append))
    return updates


def test_every_reader_survives_every_damage(good_file: Path, tmp_path: Path) -> None:
    variants = _variants(good_file, tmp_path)
    failed_cleanly = 0
    for path in variants:
        name = path.parent.name
        for argv in (
            ("export", "--format", "jsonl", str(path)),
            ("export", str(path)),
            ("diagnose", str(path)),
            ("tail", "--no-follow", "-n", "1000", str(path)),
        ):
            code, _out, err = _cli(*argv)  # an exception here fails the test with its traceback
            assert code in (0, 1), (name, argv, code)
            if code:
                failed_cleanly += 1
                lines = err.strip().splitlines()
                assert len(lines) == 1 and lines[0].startswith("tuimon: "), (name, argv, err)
                assert "Traceback" not in err
        updates = _replay(path)
        assert updates and updates[-1].status in ("ended", "replay"), name
    assert failed_cleanly > 0  # the damage was real: some files cannot be read to the end


def test_malformed_arrays_are_skipped_and_the_rest_is_exported(good_file: Path, tmp_path: Path) -> None:
    path = next(p for p in _variants(good_file, tmp_path) if p.parent.name == "bad-arrays")
    code, out, err = _cli("export", "--format", "jsonl", str(path))
    assert code == 0, err
    good_code, good_out, _ = _cli("export", "--format", "jsonl", str(good_file))
    assert out == good_out  # every good record, none of the five malformed ones
    code, out, err = _cli("tail", "--no-follow", "-n", "3", str(path))
    assert code == 0 and len(out.splitlines()) <= 3


def test_list_json_into_a_closed_pipe_ends_quietly(private_runtime_dir: Path, tmp_path: Path) -> None:
    """``tuimon list --json | head -1``: the reader closes the pipe early; no BrokenPipeError traceback."""
    import os
    import subprocess
    import sys

    from tuimon_agent.runfile import RunFileWriter

    runs = Path(os.environ["TUIMON_DIR"])
    for i in range(400):  # enough JSON to overflow a pipe's buffer
        w = RunFileWriter(
            runs / f"20260101-000000-{i:06x}" / "run.sqlite", meta={"run_id": f"r{i}", "name": f"n{i}"}
        )
        w.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuimon", "list", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=os.environ.copy(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(60)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
