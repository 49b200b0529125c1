"""What the sanity checks cost on the demo CNN (sklearn digits, batch of 64), one thread and two.

    python tests/benchmarks/bench_checks.py

Prints each check's seconds and the total, beside one plain training step of the same model as the unit, so the
figure reads as "the checks cost N training steps". The target is a few seconds in all on 2 CPU cores.
"""

from __future__ import annotations

import time

import torch

from tuimon_agent.checks.suite import ALL_CHECKS, run_checks


def _demo_factory():  # noqa: ANN202
    from tuimon.demo import digits  # needs scikit-learn

    return digits.checks


def _train_step_seconds(made: dict, steps: int = 50) -> float:
    model, (x, y), loss_fn = made["model"], made["batch"], made["loss_fn"]
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    """Print the table for 1 and 2 torch threads."""
    factory = _demo_factory()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        made = factory()
        results = run_checks(
            made["model"], made["batch"], made["loss_fn"], val=made["val"], num_classes=made["num_classes"]
        )
        step = _train_step_seconds(factory())
        total = sum(r.seconds for r in results)
        print(
            f"\nsanity checks on the demo CNN, {threads} thread(s); one training step = {step * 1e3:.2f} ms"
        )
        print(f"{'check':<20} {'verdict':<8} {'seconds':>8} {'steps':>8}")
        for r in results:
            print(f"{r.name:<20} {r.verdict:<8} {r.seconds:>8.3f} {r.seconds / step:>8.0f}")
        print(f"{'all ' + str(len(ALL_CHECKS)):<20} {'':<8} {total:>8.3f} {total / step:>8.0f}")


if __name__ == "__main__":
    main()
