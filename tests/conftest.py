"""Shared pytest fixtures.

Fixtures here are named after what they give; add new ones below with a docstring that says what they hold.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tuimon_agent import protocol

FIXTURE_RUN_NAME = "fixture"
"""The ``run=`` name of the :func:`recorded_run` run."""
FIXTURE_RUN_ID = "20240101-000000-f1x7e0"
"""The run id :func:`recorded_run` rewrites the random one to."""
FIXTURE_T0 = 1_704_067_200.0
"""2024-01-01 00:00:00 UTC: the start time :func:`recorded_run` rewrites the run to."""
FIXTURE_STEPS = 300
FIXTURE_EVAL_EVERY = 50
FIXTURE_SECONDS_PER_STEP = 0.05
"""Rewritten timestamps put step ``s`` at ``FIXTURE_T0 + s * 0.05``: 20 steps/s, 0:00:15 for the run."""


def _train_fixture_run(run_dir: Path) -> Path:
    """A small seeded torch training loop with the real agent; returns the run file it wrote."""
    import torch

    import tuimon_agent

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same reduction order, so the same floats, on any machine size
    try:
        return _fixture_training_loop(torch, tuimon_agent, run_dir)
    finally:
        torch.set_num_threads(threads)


def _fixture_training_loop(torch: Any, tuimon_agent: Any, run_dir: Path) -> Path:
    """The loop itself: an MLP learning the XOR of two signs, SGD with momentum and a step LR schedule."""
    torch.manual_seed(0)
    n = 512
    x = torch.randn(n, 2)
    y = ((x[:, 0] * x[:, 1]) > 0).long()  # XOR of signs: needs a hidden layer, so the loss curve has shape
    x_val = torch.randn(128, 2)
    y_val = ((x_val[:, 0] * x_val[:, 1]) > 0).long()
    model = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=0.5)
    loss_fn = torch.nn.CrossEntropyLoss()
    mon = tuimon_agent.watch(model, opt, run=FIXTURE_RUN_NAME, dir=run_dir, publish=False)
    try:
        for step in range(1, FIXTURE_STEPS + 1):
            idx = torch.randint(0, n, (64,))
            out = model(x[idx])
            loss = loss_fn(out, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            acc = (out.argmax(1) == y[idx]).float().mean()
            mon.log(loss=loss.item(), acc=acc.item())
            if step % FIXTURE_EVAL_EVERY == 0:
                with torch.no_grad():
                    out_val = model(x_val)
                    mon.log_eval(
                        val_loss=loss_fn(out_val, y_val).item(),
                        val_acc=(out_val.argmax(1) == y_val).float().mean().item(),
                    )
    finally:
        mon.close()
    assert mon.run_file is not None
    return mon.run_file


def _make_deterministic(path: Path) -> None:
    """Rewrite what differs between recordings (time, run id, pid, host, paths) to fixed values, in place."""
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT seq, body FROM records ORDER BY seq").fetchall()
        updates = []
        for seq, body in rows:
            rec = protocol.decode(body)
            rec.ts = FIXTURE_T0 + (rec.step or 0) * FIXTURE_SECONDS_PER_STEP
            if rec.kind == protocol.HELLO:
                rec.data.update(
                    run_id=FIXTURE_RUN_ID,
                    pid=4242,
                    host="fixture-host",
                    argv=["train.py"],
                    cwd="/fixture",
                    started=FIXTURE_T0,
                    run_file="/fixture/run.sqlite",
                    python="3.x",
                    torch="2.x",
                )
                hello = rec.data
            updates.append((rec.ts, protocol.encode(rec), seq))
        with db:
            db.executemany("UPDATE records SET ts = ?, body = ? WHERE seq = ?", updates)
            db.executemany(
                "UPDATE meta SET value = ? WHERE key = ?",
                [
                    (FIXTURE_RUN_ID, "run_id"),
                    (json.dumps(FIXTURE_T0), "created"),
                    (json.dumps(hello), "hello"),
                ],
            )
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()


@pytest.fixture(scope="session")
def recorded_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run file: a seeded torch training loop (300 steps, eval every 50) recorded by the real agent.

    Deterministic, so that snapshot tests can show it. ``torch.manual_seed(0)`` fixes the data, the weights and the
    batches, and one intra-op thread fixes the order of float reductions, so losses and accuracies are the same on
    every recording with the same torch build. What a seed cannot fix (wall-clock timestamps, the random run id,
    pid, host, paths, versions) the fixture rewrites after recording: every record's ``ts`` becomes
    ``FIXTURE_T0 + step * 0.05`` (in both the ``ts`` column and the encoded body, through ``protocol.encode``), so
    elapsed time (0:00:15) and steps/s (20.0) are fixed too. The viewer code is not patched or frozen.

    Returns:
        The ``run.sqlite`` path.
    """
    path = _train_fixture_run(tmp_path_factory.mktemp("runs"))
    _make_deterministic(path)
    return path


@pytest.fixture(autouse=True)
def private_runtime_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own runtime directory (mode 0700) for connection files and ipc sockets, and its own
    ``TUIMON_DIR``, so tests never see each other's runs, nor the user's."""
    d = tmp_path_factory.mktemp("rt")
    d.chmod(0o700)
    monkeypatch.setenv("TUIMON_RUNTIME_DIR", str(d))
    monkeypatch.setenv("TUIMON_DIR", str(tmp_path_factory.mktemp("runs")))
    monkeypatch.delenv("TUIMON_DISABLE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    return d


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One torch thread for the test: small tensors run faster so on 2 shared cores, and float sums come out the
    same on any machine; the previous setting is restored."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
