"""What the framework integrations cost: real Lightning and HuggingFace trainings with and without tuimon's
callback, and a TensorBoard-style loop with no writer, TensorBoard's ``SummaryWriter`` and tuimon's, side by side
in one process.

    python tests/benchmarks/bench_integrations.py [--pairs N] [--steps N]

Each pair runs the bare configuration and the instrumented one back to back (alternating which goes first), each a
fresh trainer on the same seed; the figure is the median over the pairs of (instrumented time / bare time), with
the bare time per step for scale. Training time is what the framework's own loop takes (``Trainer.fit`` /
``Trainer.train`` wall time), so the monitor's setup (one ``watch()``) is included. One torch thread.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _lightning(steps: int, tuimon: bool, workdir: str) -> float:
    import lightning

    from tuimon_agent.integrations.lightning import TuimonCallback

    class Net(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(64, 256),
                torch.nn.ReLU(),
                torch.nn.Linear(256, 256),
                torch.nn.ReLU(),
                torch.nn.Linear(256, 10),
            )

        def training_step(self, batch: Any, _i: int) -> torch.Tensor:
            x, y = batch
            loss = torch.nn.functional.cross_entropy(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64 * steps, 64), torch.randint(0, 10, (64 * steps,)))
    loader = torch.utils.data.DataLoader(data, batch_size=64)
    callbacks = [TuimonCallback(run="bench-lightning", dir=workdir, publish=True)] if tuimon else []
    trainer = lightning.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    t0 = time.perf_counter()
    trainer.fit(Net(), loader)
    return time.perf_counter() - t0


def _hf(steps: int, tuimon: bool, workdir: str) -> float:
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from tuimon_agent.integrations.hf import TuimonCallback

    class Tokens(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __init__(self, n: int) -> None:
            g = torch.Generator().manual_seed(0)
            self.ids = torch.randint(0, 128, (n, 32), generator=g)

        def __len__(self) -> int:
            return len(self.ids)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"input_ids": self.ids[i], "labels": self.ids[i]}

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=64, vocab_size=128, n_positions=32))
    args = TrainingArguments(
        output_dir=os.path.join(workdir, "hf"),
        max_steps=steps,
        per_device_train_batch_size=8,
        logging_steps=10,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    callbacks = [TuimonCallback(run="bench-hf", dir=workdir)] if tuimon else []
    trainer = Trainer(model=model, args=args, train_dataset=Tokens(8 * steps), callbacks=callbacks)
    t0 = time.perf_counter()
    trainer.train()
    return time.perf_counter() - t0


def _writer_loop(steps: int, kind: str, workdir: str) -> float:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(64, 64), torch.randint(0, 10, (64,))
    writer: Any = None
    if kind == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(os.path.join(workdir, "tb"))
    elif kind == "tuimon":
        from tuimon_agent import SummaryWriter as TuimonWriter

        writer = TuimonWriter(os.path.join(workdir, "tm"))
    t0 = time.perf_counter()
    for step in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if writer is not None:
            writer.add_scalar("Loss/train", loss.item(), step)
            writer.add_scalar("lr", opt.param_groups[0]["lr"], step)
    if writer is not None:
        writer.close()
    return time.perf_counter() - t0


def _pairs(pairs: int, bare: Callable[[], float], other: Callable[[], float]) -> tuple[float, float]:
    """Median bare time and median ratio other/bare over ``pairs`` alternating pairs."""
    bares, ratios = [], []
    for i in range(pairs):
        if i % 2:
            o = other()
            b = bare()
        else:
            b = bare()
            o = other()
        bares.append(b)
        ratios.append(o / b)
    return statistics.median(bares), statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        n = args.steps
        b, r = _pairs(args.pairs, lambda: _lightning(n, False, d), lambda: _lightning(n, True, d))
        rows.append(("Lightning Trainer.fit + TuimonCallback", b / n, r))
        b, r = _pairs(args.pairs, lambda: _hf(n, False, d), lambda: _hf(n, True, d))
        rows.append(("HF Trainer.train + TuimonCallback", b / n, r))
        n = args.steps * 5
        b, r = _pairs(
            args.pairs, lambda: _writer_loop(n, "none", d), lambda: _writer_loop(n, "tensorboard", d)
        )
        rows.append(("loop + TensorBoard SummaryWriter (2 add_scalar)", b / n, r))
        b, r = _pairs(args.pairs, lambda: _writer_loop(n, "none", d), lambda: _writer_loop(n, "tuimon", d))
        rows.append(("loop + tuimon_agent.SummaryWriter (2 add_scalar)", b / n, r))
    print(f"integrations: median of {args.pairs} alternating pairs, one torch thread")
    print(f"{'configuration':<52} {'bare step':>10} {'× bare':>8}")
    for name, per_step, ratio in rows:
        print(f"{name:<52} {per_step * 1e3:>8.2f}ms {ratio:>8.3f}")


if __name__ == "__main__":
    main()
