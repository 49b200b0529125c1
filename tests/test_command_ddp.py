"""Live commands under torchrun: two CPU ranks (gloo, DDP) apply each command at the same step.

The test starts ``torchrun --nproc_per_node=2`` on this very file (its ``__main__`` is the worker), sends set_lr,
set_clip, pause/resume, checkpoint and stop to rank 0 through a real DEALER with the run's key, and compares what
each rank wrote: the learning rate of every step, the gradient norm each step used, the final parameters and
optimizer settings must be identical on both ranks, and the LR must change at the same step on both.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

# Real trainers in subprocesses or long real runs: in the full suite, not in -m "not slow".
pytestmark = pytest.mark.slow


def worker(out_dir: str, mode: str = "all") -> None:
    """One rank: a tiny DDP model on its own data shard, the real agent on every rank (``mode="all"``) or on rank 0
    only (``"rank0-only"``, 80 steps), one line per step."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    import tuimon_agent

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = DDP(torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=25, gamma=0.9)
    watched = mode == "all" or rank == 0
    mon = (
        tuimon_agent.watch(model, opt, run="ddp", dir=out_dir, stats_every=0, hist_every=0)
        if watched
        else None
    )
    lrs: list[float] = []
    norms: list[float] = []

    def used(o, args, kwargs):  # type: ignore[no-untyped-def]
        # After the agent's pre-hook: the lr and the (clipped) gradient norm this step really uses.
        lrs.append(o.param_groups[0]["lr"])
        g = [p.grad for p in model.parameters() if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x) for x in g]))))

    opt.register_step_pre_hook(used)
    torch.manual_seed(100 + rank)  # each rank its own data
    x, y = torch.randn(64, 6), torch.randn(64, 1)
    print(f"READY {rank}", flush=True)
    step = 0
    while step < (20_000 if mode == "all" else 80):
        step += 1
        idx = torch.randint(0, 64, (16,))
        loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if mon is not None:
            mon.log(loss=loss)
        print(f"STEP {rank} {step}", flush=True)
        if mon is not None and mon.should_stop:
            break
        time.sleep(0.01)
    result = {
        "rank": rank,
        "steps": step,
        "lrs": lrs,
        "norms": norms,
        "params": [p.detach().flatten().tolist() for p in model.parameters()],
        "groups": [
            {k: v for k, v in g.items() if k in ("lr", "momentum", "weight_decay")} for g in opt.param_groups
        ],
        "base_lrs": sched.base_lrs,
        "should_stop": mon is not None and mon.should_stop,
    }
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    if mon is not None:
        mon.close()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Steps:
    """The last step each rank printed (read from torchrun's stdout on a thread)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.last = {0: 0, 1: 0}
        self.lines: list[str] = []
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line.rstrip())
            parts = line.split()
            if len(parts) == 3 and parts[0] == "STEP":
                self.last[int(parts[1])] = int(parts[2])

    def wait(self, step: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while min(self.last.values()) < step:
            if time.monotonic() > deadline:
                raise AssertionError(f"ranks at {self.last}, not {step}; output: {self.lines[-5:]}")
            time.sleep(0.02)


def _torchrun(tmp_path: Path, mode: str) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        __file__,
        str(tmp_path),
        mode,
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _rank0_run(proc: subprocess.Popen[str], steps: Steps):  # noqa: ANN202
    from tuimon_agent import discovery

    deadline = time.monotonic() + 120
    runs: list[discovery.ConnectionInfo] = []
    while not runs and time.monotonic() < deadline and proc.poll() is None:
        runs = discovery.live_runs(clean=False)
        time.sleep(0.1)
    assert len(runs) == 1, f"one live run (rank 0 only) expected, got {runs}; output: {steps.lines[-10:]}"
    return runs[0]


def test_every_rank_applies_each_command_at_the_same_step(tmp_path: Path) -> None:
    from helpers import CommandClient

    proc = _torchrun(tmp_path, "all")
    steps = Steps(proc)
    client = None
    try:
        client = CommandClient(_rank0_run(proc, steps), sender="ddp-test")
        steps.wait(5)

        def apply(name: str, args: dict | None = None) -> dict:
            c = client.send(name, args)
            client.wait(c["id"], "queued")
            return client.wait(c["id"], "applied", timeout=60)

        lr = apply("set_lr", {"value": 0.01})
        steps.wait(lr["step"] + 5)
        clip = apply("set_clip", {"max_norm": 0.05})
        steps.wait(clip["step"] + 5)
        pause = apply("pause")
        time.sleep(0.3)
        held = dict(steps.last)
        time.sleep(1.2)  # well over one PAUSE_POLL broadcast period
        assert steps.last == held and max(held.values()) < pause["step"]
        resume = apply("resume")
        assert resume["step"] == pause["step"]
        steps.wait(pause["step"] + 5)
        ckpt = apply("checkpoint")
        steps.wait(ckpt["step"] + 3)
        stop = apply("stop", {"reason": "ddp test"})
        assert proc.wait(120) == 0, steps.lines[-20:]
    finally:
        if client is not None:
            client.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["steps"] == r1["steps"] == stop["step"]
    assert r0["should_stop"] and r1["should_stop"]
    assert r0["lrs"] == r1["lrs"]
    n = lr["step"]
    assert r0["lrs"][n - 2] == pytest.approx(0.05) and r0["lrs"][n - 1] == pytest.approx(0.01)
    assert r1["lrs"][n - 2] == pytest.approx(0.05) and r1["lrs"][n - 1] == pytest.approx(0.01)
    assert r0["base_lrs"] == r1["base_lrs"] == pytest.approx([0.01])  # StepLR continues from the new level
    # the clip applied from the same step on both ranks: every later step's gradient norm is at most max_norm
    m = clip["step"]
    for r in (r0, r1):
        assert max(r["norms"][m - 1 :]) <= 0.05 * (1 + 1e-4)
        assert max(r["norms"][: m - 1]) > 0.05  # and it was not already that small
    assert r0["norms"] == pytest.approx(r1["norms"], rel=1e-6)
    assert r0["groups"] == r1["groups"]
    assert r0["params"] == r1["params"]  # replicas never diverged
    assert len(list(tmp_path.glob("*/checkpoint-*.pt"))) == 1  # rank 0 only
    assert not list(tmp_path.glob("rank1/*.pt"))


def test_watch_on_rank_0_only_refuses_commands_and_never_hangs(tmp_path: Path) -> None:
    """Without a controller on every rank a command would reach one replica only: it is refused, training runs."""
    from helpers import CommandClient

    proc = _torchrun(tmp_path, "rank0-only")
    steps = Steps(proc)
    client = None
    try:
        client = CommandClient(_rank0_run(proc, steps), sender="ddp-test")
        steps.wait(2, timeout=60)  # past the first step's handshake (HANDSHAKE_TIMEOUT seconds)
        c = client.send("set_lr", {"value": 0.01})
        ack = client.wait(c["id"], "rejected", timeout=60)
        assert "not every one of the 2 ranks called watch()" in ack["reason"]
        assert proc.wait(120) == 0, steps.lines[-20:]
    finally:
        if client is not None:
            client.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["steps"] == r1["steps"] == 80
    assert r0["lrs"] == pytest.approx([0.05 * 0.9 ** (i // 25) for i in range(80)])  # the schedule only
    assert r0["params"] == r1["params"]


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "all")
