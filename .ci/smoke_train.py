"""The wheel smoke test's training: run by .ci/wheel_smoke.sh with the fresh venv's python, outside the checkout.

    python smoke_train.py RUN_DIR

A real 20-step ``watch(model, optimizer)`` training with per-parameter statistics every 2 steps and a NaN planted in
the input at step 12. Checks, reading the run file back with the installed ``RunFileReader``: the packages come from
the venv (not a checkout), the run file has ``param_stats`` records, and the alert engine ran (a ``nonfinite`` alert
record). Prints the run file's path on its last line; exits 1 with the reason on failure.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path


def main() -> int:
    """Train, then check the run file."""
    import torch

    import tuimon_agent
    import tuimon_agent.alerts
    import tuimon_agent.checks
    from tuimon_agent import protocol
    from tuimon_agent.runfile import RunFileReader

    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    for mod in (tuimon_agent, tuimon_agent.alerts, tuimon_agent.checks):
        if site not in Path(mod.__file__).resolve().parents:
            print(f"FAIL: {mod.__name__} imported from {mod.__file__}, not from the venv's {site}")
            return 1

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))
    with tuimon_agent.watch(model, optimizer, run="smoke", dir=sys.argv[1], stats_every=2) as mon:
        for step in range(1, 21):
            xb = x * float("nan") if step == 12 else x  # the loss, the gradients and then the weights go NaN
            loss = torch.nn.functional.cross_entropy(model(xb), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            mon.log(loss=loss)
        run_file = mon.run_file
    if run_file is None or not Path(run_file).is_file():
        print(f"FAIL: the monitor wrote no run file {run_file} (it turned itself off: see any warning above)")
        return 1
    with RunFileReader(run_file) as reader:
        records = list(reader.records())
    kinds = [r.kind for r in records]
    stats = kinds.count(protocol.PARAM_STATS)
    rules = {r.data.get("rule") for r in records if r.kind == protocol.ALERT}
    print(f"run file {run_file}: {len(records)} records, {stats} param_stats, alert rules {sorted(rules)}")
    if stats == 0:
        print("FAIL: no param_stats records")
        return 1
    if "nonfinite" not in rules:
        print("FAIL: no nonfinite alert record: the alert engine did not run")
        return 1
    print(run_file)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
