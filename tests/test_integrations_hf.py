"""tuimon_agent.integrations.hf.TuimonCallback in a real transformers.Trainer run (a tiny GPT-2 built from a config,
a synthetic dataset, CPU, no downloads): HF's metric names at their global steps, eval_* as eval, param_stats
present (the AcceleratedOptimizer the Trainer hands callbacks is unwrapped, so the monitor stays on), and a real
signed stop command that ends training early."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import torch  # noqa: E402
from helpers import CommandClient, wait_live  # noqa: E402

from tuimon.state import RunState  # noqa: E402
from tuimon_agent import protocol  # noqa: E402
from tuimon_agent.integrations.hf import TuimonCallback  # noqa: E402
from tuimon_agent.runfile import RunFileReader  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing may reach the network: the model is built from a config, the data made up here."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("WANDB_DISABLED", "true")


class Tokens(torch.utils.data.Dataset):
    """Sequences ``k, k+1, k+2, ...`` modulo the vocabulary: a pattern a one-layer GPT-2 learns in a few steps."""

    def __init__(self, n: int, length: int = 16, vocab: int = 64) -> None:
        self.n, self.length, self.vocab = n, length, vocab

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = (torch.arange(self.length) + i * 7) % self.vocab
        return {"input_ids": ids, "labels": ids.clone()}


def _trainer(tmp_path: Path, callbacks: list, **args) -> transformers.Trainer:  # type: ignore[type-arg, no-untyped-def]
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_positions=32)
    model = transformers.GPT2LMHeadModel(config)
    targs = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        learning_rate=5e-3,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
        **args,
    )
    return transformers.Trainer(
        model=model, args=targs, train_dataset=Tokens(256), eval_dataset=Tokens(16), callbacks=callbacks
    )


def _records(path: Path | str) -> list[protocol.Record]:
    with RunFileReader(path) as r:
        return list(r.records())


def test_a_hf_trainer_streams_metrics_stats_and_eval(tmp_path: Path) -> None:
    cb = TuimonCallback(run="hf-fit", dir=tmp_path / "runs", publish=False, stats_every=4)
    trainer = _trainer(tmp_path, [cb], max_steps=12, logging_steps=2, eval_strategy="steps", eval_steps=4)
    trainer.train()
    assert trainer.state.global_step == 12
    recs = _records(next((tmp_path / "runs").glob("*/run.sqlite")))
    hello = next(r for r in recs if r.kind == protocol.HELLO)
    assert hello.data["name"] == "hf-fit"
    assert hello.data["optimizer"]["type"] == "AdamW"  # the real optimizer, not accelerate's wrapper
    assert hello.data["model"]["type"] == "GPT2LMHeadModel"

    def train(name: str) -> dict[int, float]:
        return {
            r.step: protocol.values_of(r)[name]
            for r in recs
            if r.kind == protocol.METRICS and name in protocol.values_of(r)
        }

    # HF's own names at the steps it logs them
    for name in ("loss", "learning_rate", "grad_norm", "epoch"):
        assert sorted(train(name)) == [2, 4, 6, 8, 10, 12], name
    assert train("loss")[12] < train("loss")[2]
    assert sorted(train("train_loss")) == [12]  # the Trainer's end-of-training summary
    # the optimizer's own values on every step, each at its own step
    assert sorted(train("opt/lr")) == list(range(1, 13))
    # both are the LR that step used (a linear decay): stamped at the same step
    for step in (2, 4, 6, 8, 10, 12):
        assert train("opt/lr")[step] == pytest.approx(train("learning_rate")[step], rel=1e-6)
    # param_stats present: the monitor was not turned off by the AcceleratedOptimizer
    stats = [r for r in recs if r.kind == protocol.PARAM_STATS]
    assert [r.step for r in stats] == [4, 8, 12]
    assert all(r.data["has_grad"].any() and r.data["global_grad_norm"] > 0 for r in stats)
    assert not [r for r in recs if r.kind == protocol.EVENT and "disabled" in str(r.data.get("message"))]

    evals = [r for r in recs if r.kind == protocol.EVAL]
    assert [r.step for r in evals] == [4, 8, 12]
    for r in evals:
        v = protocol.values_of(r)
        assert {"eval_loss", "eval_runtime", "epoch"} <= set(v)
        assert not any(k in v for k in ("loss", "learning_rate"))
    assert all("eval_loss" not in protocol.values_of(r) for r in recs if r.kind == protocol.METRICS)
    state = RunState()
    state.apply_many(recs)
    assert state.eval_for("loss") is state.series("eval_loss")  # the viewer pairs them on one chart
    end = [r for r in recs if r.kind == protocol.END]
    assert len(end) == 1 and end[0].data["reason"] == "closed"


class _StopSender(transformers.TrainerCallback):
    """At global step 5, a real DEALER signs a ``stop`` with the run's key and waits until the agent queued it."""

    def __init__(self) -> None:
        self.acks: list[dict] = []

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if state.global_step == 5 and not self.acks:
            client = CommandClient(wait_live(os.getpid()), sender="hf-test")
            cmd = client.send("stop", {"reason": "from the hf test"})
            self.acks.append(client.wait(cmd["id"], "queued"))
            client.close()


def test_a_stop_command_ends_hf_training(tmp_path: Path) -> None:
    sender = _StopSender()
    cb = TuimonCallback(run="hf-stop", dir=tmp_path / "runs")
    trainer = _trainer(tmp_path, [cb, sender], max_steps=10_000, logging_steps=2)
    trainer.train()
    assert sender.acks and sender.acks[0]["status"] == "queued"
    assert trainer.state.global_step == 6  # applied at step 6's optimizer step, training ends after that step
    recs = _records(next((tmp_path / "runs").glob("*/run.sqlite")))
    acks = [r for r in recs if r.kind == protocol.ACK]
    # applied at step 6, then the follow-up: the framework's loop read the stop and ended ("held")
    assert [(a.data["status"], a.step) for a in acks] == [("applied", 6), ("held", 6)]
    end = [r for r in recs if r.kind == protocol.END]
    assert end[0].data["reason"] == "stopped" and end[0].data["stop_reason"] == "from the hf test"
