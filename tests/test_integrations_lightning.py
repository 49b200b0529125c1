"""tuimon_agent.integrations.lightning.TuimonCallback in a real lightning.Trainer fit (a tiny module on CPU, no
network): metrics at each global step with param_stats, validation metrics as eval, a real signed stop command
that ends the fit early, and the run closed at fit end."""

from __future__ import annotations

from pathlib import Path

import pytest

lightning = pytest.importorskip("lightning")

import torch  # noqa: E402
from helpers import CommandClient, wait_live  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from tuimon_agent import protocol  # noqa: E402
from tuimon_agent.integrations.lightning import TuimonCallback  # noqa: E402
from tuimon_agent.runfile import RunFileReader  # noqa: E402

pytestmark = pytest.mark.slow


class Regressor(lightning.LightningModule):
    """A two-layer MLP that logs ``train_loss`` on step, ``train_mae`` on epoch and ``val_loss`` in validation."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        self.log("train_mae", (self.net(x) - y).abs().mean(), on_step=False, on_epoch=True)
        self.log("both", loss * 2, on_step=True, on_epoch=True)
        if batch_idx % 3 == 0:
            self.log("sparse", float(batch_idx))
        return loss

    def validation_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def _loaders() -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(640, 4, generator=g)  # 20 batches: one epoch is the 20 steps
    y = x.sum(1, keepdim=True)
    train = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=g)
    val = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=32)
    return train, val


def _trainer(callbacks: list, **kw) -> lightning.Trainer:  # type: ignore[type-arg, no-untyped-def]
    return lightning.Trainer(
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
        callbacks=callbacks,
        **kw,
    )


def _records(path: Path | str) -> list[protocol.Record]:
    with RunFileReader(path) as r:
        return list(r.records())


def test_a_lightning_fit_streams_metrics_stats_and_eval(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cb = TuimonCallback(run="pl-fit", dir=tmp_path, publish=False, stats_every=5)
    trainer = _trainer([cb], max_steps=30, limit_val_batches=2, val_check_interval=5, num_sanity_val_steps=2)
    train, val = _loaders()
    trainer.fit(Regressor(), train, val)
    assert trainer.global_step == 30
    runs = list(tmp_path.glob("*/run.sqlite"))
    assert len(runs) == 1
    recs = _records(runs[0])
    hello = next(r for r in recs if r.kind == protocol.HELLO)
    assert hello.data["name"] == "pl-fit" and hello.data["optimizer"]["type"] == "SGD"
    assert hello.data["model"]["type"] == "Regressor"

    def train_series(name: str) -> dict[int, float]:
        out: dict[int, float] = {}
        for r in recs:
            if r.kind == protocol.METRICS and name in protocol.values_of(r):
                assert r.step not in out, (name, r.step)  # never twice at a step
                out[r.step] = protocol.values_of(r)[name]
        return out

    # one value per global step (20 batches an epoch, so steps 1-20 are epoch 0 and 21-30 epoch 1)
    for name in ("loss", "train_loss", "both", "opt/lr"):
        assert sorted(train_series(name)) == list(range(1, 31)), name
    loss, both = train_series("loss"), train_series("both")
    assert all(loss[s] == pytest.approx(train_series("train_loss")[s]) for s in loss)
    assert all(both[s] == pytest.approx(2 * loss[s], rel=1e-5) for s in loss)
    # logged on some steps only: recorded at those steps, not repeated in between
    assert sorted(train_series("sparse")) == [1, 4, 7, 10, 13, 16, 19, 21, 24, 27, 30]
    # epoch aggregates at each epoch's last global step (max_steps ends the second one at 30), under Lightning's
    # names, once each
    assert sorted(train_series("train_mae")) == [20, 30]
    assert sorted(train_series("both_epoch")) == [20, 30]
    assert train_series("both_epoch")[20] == pytest.approx(sum(both[s] for s in range(1, 21)) / 20, rel=1e-4)
    assert not [r for r in recs if r.kind == protocol.METRICS and "val_loss" in protocol.values_of(r)]

    # param_stats every 5 global steps, each with gradients
    stats = [r for r in recs if r.kind == protocol.PARAM_STATS]
    assert [r.step for r in stats] == [5, 10, 15, 20, 25, 30]
    assert all(r.data["has_grad"].all() for r in stats)

    evals = [r for r in recs if r.kind == protocol.EVAL]
    assert [r.step for r in evals] == [5, 10, 15, 20, 25, 30]  # every 5 batches; the sanity check left out
    assert all(set(protocol.values_of(r)) == {"val_loss"} for r in evals)
    assert protocol.values_of(evals[-1])["val_loss"] < protocol.values_of(evals[0])["val_loss"]
    end = [r for r in recs if r.kind == protocol.END]
    assert len(end) == 1 and end[0].data["reason"] == "closed"


class _StopSender(lightning.Callback):
    """At global step 5, a real DEALER signs a ``stop`` with the run's key and waits until the agent queued it."""

    def __init__(self) -> None:
        self.acks: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
        if trainer.global_step == 5 and not self.acks:
            import os

            client = CommandClient(wait_live(os.getpid()), sender="pl-test")
            cmd = client.send("stop", {"reason": "from the lightning test"})
            self.acks.append(client.wait(cmd["id"], "queued"))
            client.close()


def test_a_stop_command_ends_the_fit(tmp_path: Path) -> None:
    torch.manual_seed(0)
    sender = _StopSender()
    cb = TuimonCallback(run="pl-stop", dir=tmp_path, endpoint="ipc")
    trainer = _trainer([cb, sender], max_steps=100_000, limit_val_batches=0)
    train, _ = _loaders()
    trainer.fit(Regressor(), train)
    assert sender.acks and sender.acks[0]["status"] == "queued"
    assert trainer.should_stop
    assert trainer.global_step == 6  # applied at the next optimizer step, the fit ends after that batch
    recs = _records(next(tmp_path.glob("*/run.sqlite")))
    acks = [r for r in recs if r.kind == protocol.ACK]
    # applied at step 6, then the follow-up: the framework's loop read the stop and ended ("held")
    assert [(a.data["status"], a.step) for a in acks] == [("applied", 6), ("held", 6)]
    end = [r for r in recs if r.kind == protocol.END]
    assert end[0].data["reason"] == "stopped" and end[0].data["stop_reason"] == "from the lightning test"


class _Breaks(Regressor):
    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        if self.trainer.global_step == 3:
            raise RuntimeError("bad batch")
        return super().training_step(batch, batch_idx)


def test_an_exception_in_the_fit_closes_the_run_with_its_reason(tmp_path: Path) -> None:
    cb = TuimonCallback(run="pl-breaks", dir=tmp_path, publish=False)
    trainer = _trainer([cb], max_steps=20, limit_val_batches=0)
    train, _ = _loaders()
    with pytest.raises(RuntimeError, match="bad batch"):
        trainer.fit(_Breaks(), train)
    assert cb.monitor is None  # closed by on_exception, not left to the interpreter's exit
    recs = _records(next(tmp_path.glob("*/run.sqlite")))
    assert [r.step for r in recs if r.kind == protocol.METRICS] == [1, 2, 3]
    end = [r for r in recs if r.kind == protocol.END]
    assert len(end) == 1 and end[0].data["reason"] == "exception"
