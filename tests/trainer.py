"""A real training script for the end-to-end tests: a small MLP, the real agent, one line per step on stdout.

Usage: python tests/trainer.py --steps N --pace SECONDS --run NAME --dir DIR [--no-close] [--commit S]
Prints ``RUN <run_id> <run_file>`` once the monitor exists, then ``STEP <n>`` after each logged step (flushed), so a
test knows exactly what the trainer has handed to the agent when it kills it.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import tuimon_agent


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--pace", type=float, default=0.0)
    p.add_argument("--run", default="e2e")
    p.add_argument("--dir", required=True)
    p.add_argument("--commit", type=float, default=0.25)
    p.add_argument("--no-close", action="store_true", help="never call close(): rely on the atexit flush")
    p.add_argument("--wd", type=float, default=0.0, help="weight decay")
    p.add_argument("--live-commands", action="store_true", help="honour mon.should_stop; a custom 'bump' command")
    a = p.parse_args()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=a.wd)
    mon = tuimon_agent.watch(model, opt, run=a.run, dir=a.dir, commit_interval=a.commit)
    bumped: list[float] = []
    if a.live_commands:

        @mon.command("bump")
        def bump(by: float, note: str = "") -> float:
            """Add to a counter the trainer prints (a custom command); a negative amount raises."""
            if by < 0:
                raise ValueError(f"by={by!r} must be >= 0")
            bumped.append(by)
            print(f"BUMP {by} {note}", flush=True)
            return sum(bumped)

    print(f"RUN {mon.run_id} {mon.run_file}", flush=True)
    x = torch.randn(256, 8)
    y = x[:, :1] * 2 - x[:, 1:2]
    t0 = time.perf_counter()
    for i in range(a.steps):
        idx = torch.randint(0, 256, (32,))
        loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.log(loss=loss, sq=float(i) ** 0.5)
        if mon.step % 20 == 0:
            mon.log_eval(val_loss=float(torch.nn.functional.mse_loss(model(x), y)))
        print(f"STEP {mon.step}", flush=True)
        if a.live_commands and mon.should_stop:
            print(f"STOPPED {mon.step}", flush=True)
            break
        if a.pace:
            time.sleep(a.pace)
    print(f"DONE {time.perf_counter() - t0:.4f}", flush=True)
    if not a.no_close:
        mon.close()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
