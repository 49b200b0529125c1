"""tuimon's demo: a small CNN on scikit-learn's 8x8 digits, with one real training pathology on demand.

Run ``python -m tuimon.demo.digits --bug exploding`` in one terminal and watch it with tuimon in another (or
``tuimon demo --bug exploding`` for both at once). It needs the ``demo`` extra: ``pip install 'tuimon[demo]'``.
Each ``--bug`` changes real settings (init, activations, learning rate, data); nothing fakes the numbers. A ``stop``
command (``tuimon send RUN stop``, or ``S`` in the viewer) ends the loop at the next step.
``train()`` keeps its own sparse bookkeeping (grad norms, dead and saturated units) so that the tests can
check each pathology really happens; that bookkeeping is the same with and without ``--no-monitor``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

try:
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from torch import nn
except ModuleNotFoundError as exc:
    if __name__ != "__main__" or (exc.name or "").partition(".")[0] not in ("torch", "sklearn"):
        raise
    from tuimon.demo import missing_requirements

    raise SystemExit(f"tuimon: {missing_requirements() or f'the demo cannot import {exc.name}'}") from None

SPLIT_SEED = 0  # the train/validation split never changes with --seed
VAL_FRACTION = 0.2
BATCH = 64
PROBE_EVERY = 10  # grad norms are sampled every this many steps, kept on the device, read at the end
NAN_STEP_MAX = 1000  # the "nan" bug's temperature reaches 0 at a third of the run, at this step at the latest
STEPS = 12000  # default run length: 10 minutes at the default pace, time to try live commands on it
PACE = 0.05  # default seconds per step


@dataclass(frozen=True)
class Bug:
    """Training settings; each entry of ``BUGS`` overrides the few that make its pathology."""

    doc: str
    act: str = "relu"  # a key of _ACTS, used after both convolutions and every hidden layer
    channels: tuple[int, int] = (16, 32)
    depth: int = 0  # hidden Linear+act layers between the convolutions and the head
    width: int = 64  # units per hidden layer
    init_gain: float = 1.0  # multiplies PyTorch's default init of conv and hidden weights
    conv2_bias: float | None = None  # constant initial bias of the second convolution
    opt: str = "sgd"  # "sgd" (momentum 0.9) or "adam"
    lr: float = 0.05
    train_size: int | None = None  # keep only this many training samples
    raw_pixels: bool = False  # skip normalisation and feed 0-255 "pixel" values
    temp_floor: float | None = None  # anneal logit temperature 1 -> floor by 1/3 of the run or NAN_STEP_MAX
    # backward() of loss * loss_growth**step: gradients grow geometrically whatever the machine's rounding (a deep
    # net at a high Adam LR explodes or recovers depending on the last bits of its first steps)
    loss_growth: float | None = None


# fmt: off
BUGS: dict[str, Bug] = {
    "none": Bug("healthy: SGD+momentum on standardised inputs; loss falls from ln 10 to ~0, val acc ~98%"),
    "exploding": Bug("8 hidden leaky-ReLU layers at 2x init, no normalisation, Adam lr=0.05, no clipping, and a "
                     "hand-rolled loss scale that grows 5 % a step and is never unscaled: the grad norm grows "
                     "100-1e6x", act="leaky_relu", depth=8, init_gain=2.0, opt="adam", loss_growth=1.05),
    "vanishing": Bug("8 hidden sigmoid layers at 0.3x init: first-layer grads ~1e-12 of the head's, "
                     "loss stuck at ln 10", act="sigmoid", depth=8, init_gain=0.3),
    "nan": Bug("logit temperature annealed to 0 with no floor: logits/0 makes the loss NaN at 1/3 of the run "
               f"(step {NAN_STEP_MAX} at the latest)",
               temp_floor=0.0),
    "overfit": Bug("60 training samples, wide model, Adam, no regularisation: train loss -> 0, val loss up",
                   channels=(32, 64), depth=1, width=256, opt="adam", lr=1e-3, train_size=60),
    "underfit": Bug("1-channel convs, a 1-unit bottleneck: far too small, train and val loss stay above 1.5",
                    channels=(1, 1), act="leaky_relu", depth=1, width=1, opt="adam", lr=1e-3),
    "plateau": Bug("SGD with lr=1e-6: loss sits at ln 10 = 2.30", lr=1e-6),
    "diverge": Bug("SGD lr=5 (100x): loss jumps to hundreds, stays high and erratic (tanh: units can't die)",
                   act="tanh", lr=5.0),
    "dead-relu": Bug("conv2 bias starts at -0.9: most of its ReLU units output 0 for all inputs, and stay so",
                     conv2_bias=-0.9),
    "saturation": Bug("tanh at 20x init: ~80% of activations pinned at +-1", act="tanh", init_gain=20.0),
    "unnormalized": Bug("raw 0-255 pixels, no normalisation: grad norm x100 at step 1 kills 99% of ReLUs",
                        raw_pixels=True),
}
# fmt: on

_ACTS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


class DigitsNet(nn.Module):
    """Two 3x3 convolutions, a 2x2 max-pool, ``depth`` hidden linear layers and a linear head."""

    def __init__(self, cfg: Bug) -> None:
        super().__init__()
        c1, c2 = cfg.channels
        act = _ACTS[cfg.act]
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), act(), nn.Conv2d(c1, c2, 3, padding=1), act(), nn.MaxPool2d(2)
        )
        layers: list[nn.Module] = [nn.Flatten()]
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
            if cfg.conv2_bias is not None:
                self.features[2].bias.fill_(cfg.conv2_bias)
            self.head.weight.mul_(0.1)  # near-uniform first predictions: loss starts at ~ln 10
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a batch of 1x8x8 images to 10 logits."""
        return self.head(self.hidden(self.features(x)))


def load_data(cfg: Bug, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Return ``(x_train, y_train, x_val, y_val)``: the fixed split, scaled as ``cfg`` says, on ``device``."""
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1)  # N x 1 x 8 x 8, values 0..16
    y = torch.tensor(digits.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_val = int(len(y) * VAL_FRACTION)
    xv, yv, xt, yt = x[perm[:n_val]], y[perm[:n_val]], x[perm[n_val:]], y[perm[n_val:]]
    if cfg.train_size is not None:
        xt, yt = xt[: cfg.train_size], yt[: cfg.train_size]
    if cfg.raw_pixels:
        xt, xv = xt * (255 / 16), xv * (255 / 16)  # 8x8 digits hold 0..16: as 8-bit pixels, 0..255
    else:
        mean, std = xt.mean(), xt.std()
        xt, xv = (xt - mean) / std, (xv - mean) / std
    return tuple(t.to(device) for t in (xt, yt, xv, yv))


def build(
    bug: str, seed: int, device: str | torch.device = "cpu"
) -> tuple[nn.Module, torch.optim.Optimizer, tuple[torch.Tensor, ...]]:
    """Build the model, optimizer and data for one bug.

    Args:
        bug: a key of ``BUGS``.
        seed: seeds the model init (the train/validation split is fixed).
        device: where the model and data live.

    Returns:
        ``(model, optimizer, (x_train, y_train, x_val, y_val))``.
    """
    cfg = BUGS[bug]
    device = torch.device(device)
    torch.manual_seed(seed)
    model = DigitsNet(cfg).to(device)
    if cfg.opt == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9)
    return model, optimizer, load_data(cfg, device)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Validation loss and accuracy, and the worst dead and saturated fractions over activation layers.

    A ReLU unit (channel x position) is dead when it outputs exactly 0 for every validation input; a tanh or
    sigmoid output is saturated when it is within 0.01 of its bounds.
    """
    outs: list[tuple[nn.Module, torch.Tensor]] = []
    acts = [m for m in model.modules() if isinstance(m, nn.ReLU | nn.Tanh | nn.Sigmoid)]
    hooks = [m.register_forward_hook(lambda mod, _inp, out: outs.append((mod, out))) for m in acts]
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
    """Train one run, monitored by tuimon unless ``args.no_monitor``, and return its figures.

    Args:
        args: the parsed command line (see ``parse_args``).

    Returns:
        ``steps`` (trained), ``stopped_at`` (the step a ``stop`` command ended the run at, else ``None``),
        ``losses`` (every step), ``loss_first``, ``loss_final`` (mean of the last 10 steps),
        ``first_nan_step``, ``evals`` (one dict per evaluation), ``val_loss``, ``val_acc``,
        ``dead_fraction``, ``saturated_fraction`` (all four from the last evaluation), ``val_loss_min``,
        ``grad_norms`` at ``grad_probe_steps`` (global L2 norm), ``grad_norm_first``, ``grad_norm_max``
        (largest finite probe), ``grad_ratio_first_last`` (largest first-layer / head weight grad-norm ratio
        over the probes), ``input_max`` and ``seconds``.
    """
    cfg = BUGS[args.bug]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, optimizer, (xt, yt, xv, yv) = build(args.bug, args.seed, device)
    names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad], strict=True)
    first, last = 0, names.index("head.weight")
    gen = torch.Generator().manual_seed(args.seed)
    batch = min(BATCH, len(yt))
    zero_temp_step = max(1, min(args.steps // 3, NAN_STEP_MAX))

    if args.no_monitor:
        ctx: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    else:
        import tuimon_agent  # imported here so that --no-monitor works without the agent installed

        # The first validation digit is the fixed probe: its feature maps show on the Layers screen (g, then f).
        ctx = tuimon_agent.watch(
            model, optimizer, run=args.run, dir=args.dir, probe=xv[0], probe_every=args.probe_every
        )

    losses: list[torch.Tensor] = []
    probes: list[tuple[int, torch.Tensor]] = []  # (step, grad norm per parameter)
    evals: list[dict[str, float]] = []
    order = torch.empty(0, dtype=torch.long)
    stopped_at: int | None = None
    t0 = time.perf_counter()
    with ctx as mon:
        if mon is not None and not args.no_checks:
            # The playbook's sanity checks, before the first step; the results appear in tuimon's Checks panel.
            mon.sanity_check((xt[:BATCH], yt[:BATCH]), nn.CrossEntropyLoss(), num_classes=10, val=(xv, yv))
        for step in range(1, args.steps + 1):
            if len(order) < batch:
                order = torch.randperm(len(yt), generator=gen)
            idx, order = order[:batch].to(xt.device), order[batch:]
            x, y = xt[idx], yt[idx]
            logits = model(x)
            if cfg.temp_floor is not None:  # the "nan" bug: T = 0 at zero_temp_step, and logits / 0 = +-inf
                logits = logits / max(cfg.temp_floor, 1.0 - step / zero_temp_step)
            loss = F.cross_entropy(logits, y)
            acc = (logits.argmax(1) == y).float().mean()
            optimizer.zero_grad(set_to_none=True)
            if cfg.loss_growth is not None:  # the "exploding" bug's loss scale, never unscaled
                (loss * cfg.loss_growth ** min(step, 400)).backward()
            else:
                loss.backward()
            if step == 1 or step % PROBE_EVERY == 0:
                probes.append((step, torch.stack(torch._foreach_norm([p.grad for p in params]))))
            optimizer.step()
            losses.append(loss.detach())
            # A `stop` command (tuimon send RUN stop, or S in the viewer) is applied at this step's boundary: the
            # run validates once more and leaves the loop, and its run file's `end` record says "stopped".
            stopping = mon is not None and mon.should_stop
            if mon is not None:
                mon.log(loss=losses[-1], acc=acc)  # detached: a queued tensor must not pin the graph
            if step % args.eval_every == 0 or step == args.steps or stopping:
                evals.append({"step": step, **evaluate(model, xv, yv)})
                if mon is not None:
                    mon.log_eval(val_loss=evals[-1]["val_loss"], val_acc=evals[-1]["val_acc"])
            if stopping:
                stopped_at = step
                break
            if args.pace > 0:
                time.sleep(max(0.0, t0 + step * args.pace - time.perf_counter()))
    seconds = time.perf_counter() - t0

    loss_hist = torch.stack(losses).float().cpu()
    nonfinite = (~torch.isfinite(loss_hist)).nonzero()
    norms = torch.stack([n for _, n in probes]).double().cpu()  # probes x parameters
    total = norms.pow(2).sum(1).sqrt()
    finite = total[torch.isfinite(total)]
    ratio = norms[:, first] / norms[:, last]
    ratio = ratio[torch.isfinite(ratio)]
    return {
        "bug": args.bug,
        "steps": len(losses),
        "stopped_at": stopped_at,
        "seconds": seconds,
        "losses": loss_hist.tolist(),
        "loss_first": loss_hist[0].item(),
        "loss_final": loss_hist[-10:].mean().item(),
        "first_nan_step": int(nonfinite[0]) + 1 if len(nonfinite) else None,
        "evals": evals,
        "val_loss": evals[-1]["val_loss"],
        "val_acc": evals[-1]["val_acc"],
        "val_loss_min": min(e["val_loss"] for e in evals),
        "dead_fraction": evals[-1]["dead_fraction"],
        "saturated_fraction": evals[-1]["saturated_fraction"],
        "grad_probe_steps": [s for s, _ in probes],
        "grad_norms": total.tolist(),
        "grad_norm_first": total[0].item(),
        "grad_norm_max": finite.max().item() if len(finite) else math.nan,
        "grad_ratio_first_last": ratio.max().item() if len(ratio) else math.nan,
        "input_max": xt.max().item(),
    }


def checks(bug: str = "none") -> dict[str, Any]:
    """A factory for ``tuimon check tuimon.demo.digits:checks``: the demo's model, one batch and its loss."""
    model, _, (xt, yt, xv, yv) = build(bug, 0, "cpu")
    return {
        "model": model,
        "batch": (xt[:BATCH], yt[:BATCH]),
        "loss_fn": nn.CrossEntropyLoss(),
        "val": (xv, yv),
        "num_classes": 10,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line (``argv=None`` reads ``sys.argv``)."""
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="bugs:\n" + "\n".join(f"  {k:13} {v.doc}" for k, v in BUGS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--bug", default="none", choices=list(BUGS), help="pathology to inject (default: none)")
    p.add_argument(
        "--steps", type=int, default=STEPS, help=f"optimizer steps, unless stopped earlier (default: {STEPS})"
    )
    p.add_argument(
        "--pace", type=float, default=PACE, help=f"seconds per step, 0 = full speed (default: {PACE})"
    )
    p.add_argument("--run", default=None, help="run name (default: digits-<bug>)")
    p.add_argument("--dir", default=None, help="directory for run files (default: the agent's)")
    p.add_argument("--seed", type=int, default=0, help="model init and batch order (default: 0)")
    p.add_argument("--eval-every", type=int, default=50, help="validate every K steps (default: 50)")
    p.add_argument(
        "--probe-every",
        type=int,
        default=50,
        help="feature maps of a validation digit every K steps (default: 50)",
    )
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--no-monitor", action="store_true", help="train without tuimon_agent (the bare baseline)")
    p.add_argument("--no-checks", action="store_true", help="skip mon.sanity_check before training")
    args = p.parse_args(argv)
    if args.run is None:
        args.run = f"digits-{args.bug}"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Train one run from the command line and print its final figures."""
    args = parse_args(argv)
    torch.set_num_threads(1)  # measured: tensors this small train faster on one CPU thread than on several
    r = train(args)
    stopped = f" (stopped by a stop command at step {r['stopped_at']})" if r["stopped_at"] else ""
    print(
        f"{r['bug']}: {r['steps']} steps{stopped} in {r['seconds']:.1f}s, train loss {r['loss_first']:.3f} -> "
        f"{r['loss_final']:.3g}, val loss {r['val_loss']:.3g} (min {r['val_loss_min']:.3g}), val acc "
        f"{r['val_acc']:.3f}, grad norm {r['grad_norm_first']:.3g} -> max {r['grad_norm_max']:.3g}, "
        f"dead {r['dead_fraction']:.2f}, saturated {r['saturated_fraction']:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
