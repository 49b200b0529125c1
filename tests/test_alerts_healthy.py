"""The per-layer rules stay quiet on real, healthy training runs of varied shapes, and speak on a broken one.

Each run is a short real torch loop watched by the real agent (``stats_every=1``: every step sampled, the most
chances for a false alarm), written to a real run file; the alert records the agent thread emitted are read back
from it. The models cover what trips naive rules: a regression MLP with MSE, a GRU on float sequences, an LSTM on
token ids (an embedding with sparse gradients), a tiny causal transformer with tied weights, AdamW and
warmup+cosine to zero, a CNN with BatchNorm and OneCycle, tanh and sigmoid networks, batches from 8 to 256.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import tuimon_agent  # noqa: E402
from tuimon_agent import protocol  # noqa: E402
from tuimon_agent.runfile import RunFileReader  # noqa: E402

LAYER_RULES = {
    "nonfinite",
    "exploding_gradients",
    "vanishing_gradients",
    "update_ratio",
    "dead_units",
    "saturation",
    "unnormalized_input",
}
STEPS = 150

Batch = Callable[[int], tuple[Any, Any]]


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> Iterator[None]:
    yield


def train(
    tmp_path: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    batch: Batch,
    loss_fn: Callable[[Any, Any], Any],
    *,
    sched: Any = None,
    clip: float | None = None,
    steps: int = STEPS,
) -> tuple[list[protocol.Record], list[float]]:
    """Train with the real agent; return the run file's records and the losses."""
    losses = []
    with tuimon_agent.watch(model, opt, run="healthy", dir=tmp_path, stats_every=1, publish=False) as mon:
        for step in range(steps):
            x, y = batch(step)
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            if sched is not None:
                sched.step()
            losses.append(loss.item())
            mon.log(loss=losses[-1])
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    with RunFileReader(run_dir) as reader:
        return list(reader.records()), losses


def loud_layer_alerts(records: list[protocol.Record]) -> list[str]:
    """``id severity: message`` of every warning or critical alert record of the per-layer rules."""
    return [
        f"{r.data['id']} {r.data['severity']}: {r.data['message']}"
        for r in records
        if r.kind == protocol.ALERT
        and r.data.get("rule") in LAYER_RULES
        and r.data.get("severity") in ("warning", "critical")
    ]


def assert_diagnosed_and_quiet(records: list[protocol.Record]) -> None:
    kinds = {r.kind for r in records}
    assert {
        protocol.PARAM_STATS,
        protocol.ACT_STATS,
        protocol.INPUT_STATS,
    } <= kinds  # the rules had their inputs
    failures = [
        r.data
        for r in records
        if r.kind == protocol.EVENT and r.data.get("what") in ("rule_error", "diagnosis_off")
    ]
    assert failures == []
    assert loud_layer_alerts(records) == []


def _mlp_regression(bs: int) -> tuple[nn.Module, torch.optim.Optimizer, Batch, Any]:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(20, 1, generator=g)

    def batch(_: int) -> tuple[Any, Any]:
        x = torch.randn(bs, 20, generator=g)
        return x, torch.sin(x @ w / 4) + 0.1 * torch.randn(bs, 1, generator=g)

    model = nn.Sequential(nn.Linear(20, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 1))
    return model, torch.optim.Adam(model.parameters(), 1e-3), batch, F.mse_loss


@pytest.mark.parametrize("bs", [8, 256])
def test_relu_mlp_regression_with_mse(tmp_path: Path, bs: int) -> None:
    torch.manual_seed(0)
    model, opt, batch, loss_fn = _mlp_regression(bs)
    records, _ = train(tmp_path, model, opt, batch, loss_fn)
    assert_diagnosed_and_quiet(records)


class Seq(nn.Module):
    """An optional embedding, a 2-layer recurrent network and a linear head per position."""

    def __init__(self, cell: type[nn.RNNBase], vocab: int | None = None) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, 32) if vocab else None
        self.rnn = cell(32 if vocab else 4, 64, num_layers=2, batch_first=True)
        self.head = nn.Linear(64, vocab or 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(N, T)`` token ids or ``(N, T, 4)`` features to per-position outputs."""
        h, _ = self.rnn(self.emb(x) if self.emb is not None else x)
        return self.head(h)


def test_gru_on_float_sequences(tmp_path: Path) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)

    def batch(_: int) -> tuple[Any, Any]:
        x = torch.randn(16, 20, 4, generator=g)
        return x, x[..., :1].cumsum(1) / 4

    model = Seq(nn.GRU)
    records, losses = train(
        tmp_path, model, torch.optim.Adam(model.parameters(), 3e-3), batch, F.mse_loss, clip=1.0
    )
    assert sum(losses[-10:]) < sum(losses[:10])  # it learns
    assert_diagnosed_and_quiet(records)


def test_lstm_on_token_ids_with_an_embedding(tmp_path: Path) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    vocab = 30

    def batch(_: int) -> tuple[Any, Any]:
        x = torch.randint(0, vocab, (16, 12), generator=g)
        return x, torch.roll(x, 1, 1)  # predict the previous token

    def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out.reshape(-1, vocab), y.reshape(-1))

    model = Seq(nn.LSTM, vocab)
    records, _ = train(tmp_path, model, torch.optim.SGD(model.parameters(), 1.0), batch, loss_fn, clip=5.0)
    inputs = [r for r in records if r.kind == protocol.INPUT_STATS]
    assert inputs and float(inputs[0].data["max"].max()) >= 20  # token ids: large, but not "unnormalized"
    assert_diagnosed_and_quiet(records)


class TinyTransformer(nn.Module):
    """A causal 2-layer pre-norm transformer with GELU, dropout and an output layer tied to the embedding."""

    def __init__(self, vocab: int = 40, d: int = 64) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(16, d))
        layer = nn.TransformerEncoderLayer(
            d, 4, 128, dropout=0.1, batch_first=True, norm_first=True, activation="gelu"
        )
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Next-token logits for ``(N, T)`` token ids."""
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
        return self.head(self.norm(self.enc(self.emb(x) + self.pos[: x.shape[1]], mask=mask, is_causal=True)))


def test_tiny_transformer_with_adamw_warmup_and_cosine_to_zero(tmp_path: Path) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(4)
    vocab = 40

    def batch(_: int) -> tuple[Any, Any]:
        seq = (torch.randint(0, vocab, (8, 1), generator=g) + torch.arange(17)) % vocab  # a counting task
        return seq[:, :-1], seq[:, 1:]

    def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out.reshape(-1, vocab), y.reshape(-1))

    model = TinyTransformer(vocab)
    opt = torch.optim.AdamW(model.parameters(), 1e-3, weight_decay=0.01)
    warm = 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: min(1.0, (t + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, t / STEPS)))
    )
    records, losses = train(tmp_path, model, opt, batch, loss_fn, sched=sched)
    assert losses[-1] < losses[0] / 2
    assert_diagnosed_and_quiet(records)


def test_cnn_with_batchnorm_onecycle_and_small_batches(tmp_path: Path) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(5)
    protos = torch.randn(10, 1, 8, 8, generator=g)

    def batch(_: int) -> tuple[Any, Any]:
        y = torch.randint(0, 10, (16,), generator=g)
        return protos[y] + 0.5 * torch.randn(16, 1, 8, 8, generator=g), y

    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(128, 10),
    )
    opt = torch.optim.SGD(model.parameters(), 0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.2, total_steps=STEPS)
    records, _ = train(tmp_path, model, opt, batch, F.cross_entropy, sched=sched)
    assert_diagnosed_and_quiet(records)


@pytest.mark.parametrize("act", [nn.Tanh, nn.Sigmoid])
def test_tanh_and_sigmoid_networks_with_plain_sgd(tmp_path: Path, act: type[nn.Module]) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(6)

    def batch(_: int) -> tuple[Any, Any]:
        x = torch.randn(8, 10, generator=g)
        return x, (x[:, 0] * x[:, 1] > 0).long()

    model = nn.Sequential(nn.Linear(10, 64), act(), nn.Linear(64, 64), act(), nn.Linear(64, 2))
    records, _ = train(tmp_path, model, torch.optim.SGD(model.parameters(), 0.1), batch, F.cross_entropy)
    assert_diagnosed_and_quiet(records)


def test_a_confident_classifier_with_an_output_sigmoid(tmp_path: Path) -> None:
    """A separable binary task learned to near-certainty: the output sigmoid sits at 0 or 1, as it should."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(8)

    def batch(_: int) -> tuple[Any, Any]:
        x = torch.randn(64, 10, generator=g)
        return x, (x[:, 0] > 0).float().unsqueeze(1)

    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1), nn.Sigmoid())
    records, losses = train(
        tmp_path, model, torch.optim.Adam(model.parameters(), 3e-2), batch, F.binary_cross_entropy
    )
    acts = [r for r in records if r.kind == protocol.ACT_STATS]
    assert float(acts[-1].data["saturated"][-1]) > 0.5  # the output really is saturated
    assert_diagnosed_and_quiet(records)


class Rescaling(nn.Module):
    """A CNN that takes 0-255 pixels and rescales them itself, as Atari agents do: ``x / 255`` in ``forward``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.head = nn.Linear(512, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for ``(N, 1, 8, 8)`` pixels in 0..255."""
        return self.head(F.relu(self.conv(x / 255.0)).flatten(1))


def test_raw_pixels_into_a_model_that_rescales_them_itself(tmp_path: Path) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(9)
    protos = torch.rand(10, 1, 8, 8, generator=g)

    def batch(_: int) -> tuple[Any, Any]:
        y = torch.randint(0, 10, (32,), generator=g)
        return (protos[y] * 255).round(), y

    model = Rescaling()
    records, _ = train(
        tmp_path, model, torch.optim.Adam(model.parameters(), 1e-3), batch, F.cross_entropy, steps=60
    )
    alerts = [r.data for r in records if r.kind == protocol.ALERT and r.data["rule"] == "unnormalized_input"]
    assert alerts and alerts[0]["severity"] == "info" and alerts[0]["evidence"]["absorbed_by"] == "conv"
    assert_diagnosed_and_quiet(records)


def test_the_same_pipeline_speaks_on_raw_pixels(tmp_path: Path) -> None:
    """The control: the same loop with 0-255 inputs raises unnormalized_input at the first sample, so the quiet
    runs above are quiet because they are healthy, not because nothing was diagnosed."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(7)
    protos = torch.rand(10, 1, 8, 8, generator=g)

    def batch(_: int) -> tuple[Any, Any]:
        y = torch.randint(0, 10, (32,), generator=g)
        return (protos[y] * 255).round(), y

    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(512, 10))
    records, _ = train(
        tmp_path, model, torch.optim.SGD(model.parameters(), 0.01), batch, F.cross_entropy, steps=20
    )
    loud = loud_layer_alerts(records)
    assert loud and loud[0].startswith("unnormalized_input:global critical")
    (first,) = [r for r in records if r.kind == protocol.ALERT and r.data["rule"] == "unnormalized_input"][:1]
    assert first.data["first_step"] == 1 and "not normalized since step 1" in first.data["message"]
