"""tuimon's demo: a small CNN on scikit-learn's 8x8 digits, with one real training pathology on demand.

Run ``python demo/digits.py --bug exploding`` in one terminal and watch it with tuimon in another.
Every ``--bug`` changes real settings (init, activations, learning rate, data); nothing fakes the numbers.
``train()`` also keeps its own sparse bookkeeping (grad norms, dead/saturated units) so the tests can
check that each bug really shows its pathology.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

SPLIT_SEED = 0  # the train/validation split never changes with --seed
VAL_FRACTION = 0.2
PROBE_EVERY = 10  # grad norms are sampled every this many steps (kept on device, read at the end)


@dataclass(frozen=True)
class Bug:
    """Training settings; each entry of ``BUGS`` overrides the few that make its pathology."""

    doc: str
    act: str = "relu"  # "relu" | "tanh" | "sigmoid", used after every conv and hidden layer
    channels: tuple[int, int] = (16, 32)
    depth: int = 0  # extra Linear+act layers between the convolutions and the head
    width: int = 64
    init_gain: float = 1.0  # multiplies the default init of conv and hidden weights
    bias: float | None = None  # constant initial bias of conv and hidden layers
    dropout: float = 0.0
    opt: str = "sgd"
    lr: float = 0.05
    weight_decay: float = 0.0
    train_size: int | None = None  # keep only this many training samples
    raw_pixels: bool = False  # skip normalisation and feed 0-256 "pixel" values
    temp_floor: float | None = None  # anneal the logit temperature 1 -> floor by a third of the run


BUGS: dict[str, Bug] = {
    "none": Bug("healthy: SGD+momentum on standardised inputs, loss falls from ln 10 to near 0"),
    "exploding": Bug("deep ReLU stack, 2x init gain, high LR, no clipping: grad norm grows without bound"),
    "vanishing": Bug(
        "8 sigmoid layers with tiny init: early-layer grads ~0, loss stuck", act="sigmoid", depth=8, init_gain=0.3
    ),
    "nan": Bug("logit temperature annealed to 0 with no floor: logits/0 gives NaN at 1/3 of the run", temp_floor=0.0),
    "overfit": Bug("60 training samples, wide model, no regularisation: val loss turns up", train_size=60),
    "underfit": Bug("one conv channel, heavy weight decay and dropout: loss stays high", channels=(1, 1)),
    "plateau": Bug("SGD with lr=1e-6: loss stays at ln 10", lr=1e-6),
    "diverge": Bug("SGD with lr=5: loss blows up", lr=5.0),
    "dead-relu": Bug("conv biases start at -3: most ReLU units output 0 for every input, forever", bias=-3.0),
    "saturation": Bug("tanh with 10x init gain: most activations pinned at +-1", act="tanh", init_gain=10.0),
    "unnormalized": Bug("raw 0-256 pixel values, no normalisation: huge first steps", raw_pixels=True),
}

_ACTS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class DigitsNet(nn.Module):
    """Two 3x3 convolutions, a 2x2 max-pool, ``depth`` hidden linear layers and a linear head."""

    def __init__(self, cfg: Bug) -> None:
        super().__init__()
        c1, c2 = cfg.channels
        act = _ACTS[cfg.act]
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), act(), nn.Conv2d(c1, c2, 3, padding=1), act(), nn.MaxPool2d(2)
        )
        layers: list[nn.Module] = [nn.Flatten(), nn.Dropout(cfg.dropout)]
        fan_in = c2 * 16
        for _ in range(cfg.depth):
            layers += [nn.Linear(fan_in, cfg.width), act()]
            fan_in = cfg.width
        self.hidden = nn.Sequential(*layers)
        self.head = nn.Linear(fan_in, 10)
        with torch.no_grad():
            for m in [*self.features, *self.hidden]:
                if isinstance(m, nn.Conv2d | nn.Linear):
                    m.weight.mul_(cfg.init_gain)
                    if cfg.bias is not None:
                        m.bias.fill_(cfg.bias)
            self.head.weight.mul_(0.1)  # start near uniform predictions: loss ~ ln 10
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a batch of 1x8x8 images to 10 logits."""
        return self.head(self.hidden(self.features(x)))


def load_data(cfg: Bug, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split the digits into train/validation tensors (fixed split) and scale them as ``cfg`` says."""
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1)  # N x 1 x 8 x 8, values 0..16
    y = torch.tensor(digits.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_val = int(len(y) * VAL_FRACTION)
    xv, yv, xt, yt = x[perm[:n_val]], y[perm[:n_val]], x[perm[n_val:]], y[perm[n_val:]]
    if cfg.train_size is not None:
        xt, yt = xt[: cfg.train_size], yt[: cfg.train_size]
    if cfg.raw_pixels:
        xt, xv = xt * 16, xv * 16
    else:
        mean, std = xt.mean(), xt.std()
        xt, xv = (xt - mean) / std, (xv - mean) / std
    return xt.to(device), yt.to(device), xv.to(device), yv.to(device)


def build(bug: str, seed: int, device: str | torch.device = "cpu") -> tuple[nn.Module, torch.optim.Optimizer, tuple]:
    """Build the model, optimizer and data for one bug.

    Args:
        bug: a key of ``BUGS``.
        seed: seeds model init and batch order (the train/validation split is fixed).
        device: where the model and data live.

    Returns:
        ``(model, optimizer, (x_train, y_train, x_val, y_val))``.
    """
    cfg = BUGS[bug]
    device = torch.device(device)
    torch.manual_seed(seed)
    model = DigitsNet(cfg).to(device)
    if cfg.opt == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(
            model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    return model, optimizer, load_data(cfg, device)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Validation loss and accuracy, plus the worst dead-ReLU and saturation fractions over activation layers.

    A unit (channel x position) is dead when its ReLU output is exactly 0 for every validation input;
    a tanh/sigmoid output is saturated when within 0.01 of its bounds.
    """
    outs: list[tuple[nn.Module, torch.Tensor]] = []
    hooks = [
        m.register_forward_hook(lambda mod, _i, out: outs.append((mod, out)))
        for m in model.modules()
        if isinstance(m, tuple(_ACTS.values()))
    ]
    model.eval()
    try:
        logits = model(x)
    finally:
        model.train()
        for h in hooks:
            h.remove()
    dead, sat = 0.0, 0.0
    for mod, out in outs:
        if isinstance(mod, nn.ReLU):
            dead = max(dead, (out == 0).all(dim=0).float().mean().item())
        elif isinstance(mod, nn.Tanh):
            sat = max(sat, (out.abs() > 0.99).float().mean().item())
        else:
            sat = max(sat, ((out < 0.01) | (out > 0.99)).float().mean().item())
    return {
        "val_loss": F.cross_entropy(logits, y).item(),
        "val_acc": (logits.argmax(1) == y).float().mean().item(),
        "dead_fraction": dead,
        "saturated_fraction": sat,
    }


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Train one run and return its final figures.

    Args:
        args: the parsed CLI (see ``parse_args``).

    Returns:
        A dict with ``loss_first``, ``loss_final`` (mean of the last 10 steps), ``losses`` (every step),
        ``first_nan_step``, ``val_loss``/``val_acc`` (last evaluation), ``val_loss_min``, ``evals``,
        ``grad_norm_first``/``grad_norm_max`` (global, finite probes only), ``grad_ratio_first_last``
        (largest first-layer / last-layer grad norm ratio over probes), ``dead_fraction``,
        ``saturated_fraction``, ``input_max`` and ``seconds``.
    """
    cfg = BUGS[args.bug]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, optimizer, (xt, yt, xv, yv) = build(args.bug, args.seed, device)
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(args.seed)
    batch = min(64, len(yt))
    nan_step = max(1, args.steps // 3)

    if args.no_monitor:
        ctx: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    else:
        import tuimon_agent  # lazily, so --no-monitor works without the agent installed

        ctx = tuimon_agent.watch(model, optimizer, run=args.run, dir=args.dir)

    losses: list[torch.Tensor] = []
    probes: list[tuple[int, torch.Tensor]] = []  # (step, per-parameter grad norms), read after training
    evals: list[dict[str, float]] = []
    order = torch.empty(0, dtype=torch.long)
    t0 = time.perf_counter()
    with ctx as mon:
        for step in range(1, args.steps + 1):
            if len(order) < batch:
                order = torch.randperm(len(yt), generator=gen)
            idx, order = order[:batch].to(xt.device), order[batch:]
            logits = model(xt[idx])
            if cfg.temp_floor is not None:  # the "nan" bug: temperature hits 0 at nan_step
                logits = logits / max(cfg.temp_floor, 1.0 - step / nan_step)
            loss = F.cross_entropy(logits, yt[idx])
            acc = (logits.argmax(1) == yt[idx]).float().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if step == 1 or step % PROBE_EVERY == 0:
                probes.append((step, torch.stack(torch._foreach_norm([p.grad for p in params]))))
            optimizer.step()
            losses.append(loss.detach())
            if mon is not None:
                mon.log(loss=loss, acc=acc)
            if step % args.eval_every == 0 or step == args.steps:
                ev = {"step": step, **evaluate(model, xv, yv)}
                evals.append(ev)
                if mon is not None:
                    mon.log_eval(val_loss=ev["val_loss"], val_acc=ev["val_acc"])
            if args.pace > 0:
                time.sleep(max(0.0, t0 + step * args.pace - time.perf_counter()))
    seconds = time.perf_counter() - t0

    loss_hist = torch.stack(losses).float().cpu()
    bad = (~torch.isfinite(loss_hist)).nonzero()
    norms = torch.stack([n for _, n in probes]).double().cpu()  # probes x params
    total = norms.pow(2).sum(1).sqrt()
    finite = torch.isfinite(total)
    ratio = norms[:, 0] / norms[:, -2]  # first conv weight / head weight
    return {
        "bug": args.bug,
        "steps": args.steps,
        "seconds": seconds,
        "losses": loss_hist.tolist(),
        "loss_first": loss_hist[0].item(),
        "loss_final": loss_hist[-10:].mean().item(),
        "first_nan_step": int(bad[0]) + 1 if len(bad) else None,
        "evals": evals,
        "val_loss": evals[-1]["val_loss"],
        "val_acc": evals[-1]["val_acc"],
        "val_loss_min": min(e["val_loss"] for e in evals),
        "grad_norm_first": total[0].item(),
        "grad_norm_max": total[finite].max().item() if finite.any() else math.nan,
        "grad_probe_steps": [s for s, _ in probes],
        "grad_norms": total.tolist(),
        "grad_ratio_first_last": ratio[torch.isfinite(ratio)].max().item() if finite.any() else math.nan,
        "dead_fraction": evals[-1]["dead_fraction"],
        "saturated_fraction": evals[-1]["saturated_fraction"],
        "input_max": xt.max().item(),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line (``argv=None`` reads ``sys.argv``)."""
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="bugs:\n" + "\n".join(f"  {k:13} {v.doc}" for k, v in BUGS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--bug", default="none", choices=list(BUGS), help="pathology to inject (default: none)")
    p.add_argument("--steps", type=int, default=3000, help="optimizer steps (default: 3000)")
    p.add_argument("--pace", type=float, default=0.05, help="seconds per step; 0 = full speed (default: 0.05)")
    p.add_argument("--run", default=None, help="run name (default: digits-<bug>)")
    p.add_argument("--dir", default=None, help="run directory (default: the agent's)")
    p.add_argument("--seed", type=int, default=0, help="model init and batch order seed (default: 0)")
    p.add_argument("--eval-every", type=int, default=50, help="validate every K steps (default: 50)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--no-monitor", action="store_true", help="train without tuimon_agent (bare baseline)")
    args = p.parse_args(argv)
    if args.run is None:
        args.run = f"digits-{args.bug}"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: train, then print the final figures."""
    args = parse_args(argv)
    r = train(args)
    print(
        f"{r['bug']}: {r['steps']} steps in {r['seconds']:.1f}s  loss {r['loss_first']:.3f} -> {r['loss_final']:.3f}"
        f"  val loss {r['val_loss']:.3f} acc {r['val_acc']:.3f}  grad norm {r['grad_norm_first']:.3g} -> max "
        f"{r['grad_norm_max']:.3g}  dead {r['dead_fraction']:.2f}  saturated {r['saturated_fraction']:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
