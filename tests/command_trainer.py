"""A real training script for the live-command tests: a small MLP, the real agent, a loop that honours commands.

Usage: python tests/command_trainer.py --dir DIR [--run NAME] [--steps N] [--rate STEPS_PER_S]
Prints ``RUN <run_id> <run_file>`` once the monitor exists, ``STEP <n>`` every ``--print-every`` steps (flushed),
and at the end ``FINAL <json>`` with the optimizer's settings and why the loop ended, so a test can check what the
commands did to the real optimizer. Registers a custom command ``bump(amount: float = 1.0, note: str = "")``.
The loop is paced to ``--rate`` steps a second (0: as fast as it goes) and stops when ``mon.should_stop`` is set
(unless ``--ignore-stop``, as loops that never read it). ``--no-optimizer`` watches the model alone (manual SGD).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import tuimon_agent


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--rate", type=float, default=50.0, help="steps per second (0: unpaced)")
    p.add_argument("--run", default="cmd")
    p.add_argument("--dir", required=True)
    p.add_argument("--print-every", type=int, default=1)
    p.add_argument(
        "--ignore-stop", action="store_true", help="never read mon.should_stop (as many loops don't)"
    )
    p.add_argument("--no-optimizer", action="store_true", help="watch(model) only, and a manual SGD update")
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    mon = tuimon_agent.watch(
        model, None if a.no_optimizer else opt, run=a.run, dir=a.dir, commit_interval=0.05
    )
    bumped: list[float] = []
    if hasattr(mon, "command"):

        @mon.command("bump")
        def bump(amount: float = 1.0, note: str = "") -> float:
            bumped.append(amount)
            return sum(bumped)

    print(f"RUN {mon.run_id} {mon.run_file}", flush=True)
    x = torch.randn(256, 8)
    y = x[:, :1] * 2 - x[:, 1:2]
    period = 1.0 / a.rate if a.rate > 0 else 0.0
    next_t = time.perf_counter()
    for _ in range(a.steps):
        idx = torch.randint(0, 256, (32,))
        loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        if a.no_optimizer:
            with torch.no_grad():
                for param in model.parameters():
                    param -= 0.01 * param.grad
        else:
            opt.step()
        mon.log(loss=loss)
        if mon.step % a.print_every == 0:
            print(f"STEP {mon.step}", flush=True)
        if not a.ignore_stop and getattr(mon, "should_stop", False):
            break
        if period:
            next_t += period
            delay = next_t - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            else:
                next_t = time.perf_counter()
    final = {
        "step": mon.step,
        "lr": [g["lr"] for g in opt.param_groups],
        "weight_decay": [g["weight_decay"] for g in opt.param_groups],
        "stopped": bool(getattr(mon, "should_stop", False)),
        "bumped": bumped,
    }
    print("FINAL " + json.dumps(final), flush=True)
    mon.close()


if __name__ == "__main__":
    main()
