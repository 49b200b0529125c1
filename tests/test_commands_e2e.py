"""Live commands end to end: a real training subprocess (tests/trainer.py), a real DEALER signing with the key from
the run's connection file, and the run file the agent wrote.

Each command: acked queued, then applied at a step N with its old and new values; its effect on the optimizer
shows in the next steps' ``opt/...`` metrics; pause really stops the steps until resume; the checkpoint loads;
stop ends the loop through ``mon.should_stop`` and the ``end`` record says why; a custom command runs.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import CommandClient, read_until, start_trainer, wait_live

from tuimon_agent import protocol
from tuimon_agent.runfile import RunFileReader

# Real trainers in subprocesses or long real runs: in the full suite, not in -m "not slow".
pytestmark = pytest.mark.slow


class Lines:
    """Collects the trainer's stdout lines on a thread, so the test can look at them while it runs."""

    def __init__(self, proc) -> None:  # type: ignore[no-untyped-def]
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._t.start()

    def _read(self, proc) -> None:  # type: ignore[no-untyped-def]
        for line in proc.stdout:
            self.lines.append(line.strip())

    def last_step(self) -> int:
        steps = [int(x.split()[1]) for x in list(self.lines) if x.startswith("STEP ")]
        return steps[-1] if steps else 0

    def wait_for(self, prefix: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for x in list(self.lines):
                if x.startswith(prefix):
                    return x
            time.sleep(0.02)
        raise AssertionError(f"no {prefix!r} line within {timeout}s; last: {self.lines[-3:]}")

    def wait_step(self, step: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.last_step() < step:
            if time.monotonic() > deadline:
                raise AssertionError(f"step {step} not reached within {timeout}s (at {self.last_step()})")
            time.sleep(0.02)


def _records(run_file: str) -> list[protocol.Record]:
    reader = RunFileReader(run_file)
    try:
        return list(reader.records())
    finally:
        reader.close()


def test_every_command_end_to_end(tmp_path: Path) -> None:
    proc = start_trainer(tmp_path, "--steps", "100000", "--pace", "0.01", "--live-commands", "--wd", "0.001")
    try:
        run_line = read_until(proc, "RUN ")
        run_file = run_line.split()[2]
        lines = Lines(proc)
        client = CommandClient(wait_live(proc.pid), sender="e2e")
        lines.wait_step(5)

        def apply(name: str, args: dict | None = None) -> dict:
            cmd = client.send(name, args)
            assert client.wait(cmd["id"], "queued")["status"] == "queued"
            ack = client.wait(cmd["id"], "applied")
            assert ack["id"] == cmd["id"] and ack["name"] == name and isinstance(ack["step"], int)
            return ack

        lr = apply("set_lr", {"value": 0.01})
        assert lr["old"] == pytest.approx(0.05) and lr["new"] == 0.01
        wd = apply("set_weight_decay", {"value": 0.02})
        assert wd["old"] == pytest.approx(0.001) and wd["new"] == 0.02
        clip = apply("set_clip", {"max_norm": 0.05})
        assert clip["old"] is None and clip["new"] == 0.05
        lines.wait_step(clip["step"] + 5)
        unclip = apply("set_clip", {"max_norm": None})
        assert unclip["old"] == 0.05 and unclip["new"] is None
        bump = apply("bump", {"by": 2.5, "note": "hi"})
        assert bump["new"] == 2.5
        assert lines.wait_for("BUMP ") == "BUMP 2.5 hi"

        pause = apply("pause")
        assert pause["old"] is False and pause["new"] is True
        lines.wait_step(pause["step"] - 1)  # the reader thread may lag behind the pipe
        held = lines.last_step()
        assert held == pause["step"] - 1  # waiting inside that step's optimizer.step()
        time.sleep(1.0)  # 100 steps' worth at this pace
        assert lines.last_step() == held
        resume = apply("resume")
        assert resume["step"] == pause["step"] and resume["new"] is False
        lines.wait_step(held + 5)

        ckpt = apply("checkpoint")
        path = Path(ckpt["path"])
        assert path.exists() and path.name == f"checkpoint-{ckpt['step']}.pt"
        state = torch.load(path, weights_only=True)
        assert state["step"] == ckpt["step"]
        assert set(state["model"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
        assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.01)
        assert state["optimizer"]["param_groups"][0]["weight_decay"] == pytest.approx(0.02)

        stop = apply("stop", {"reason": "enough for the test"})
        stopped = lines.wait_for("STOPPED ")
        assert int(stopped.split()[1]) == stop["step"]
        assert proc.wait(60) == 0
        client.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    recs = _records(run_file)
    metrics = {r.step: r.data["values"] for r in recs if r.kind == protocol.METRICS and r.step is not None}
    n = lr["step"]
    assert metrics[n - 1]["opt/lr"] == pytest.approx(0.05) and metrics[n]["opt/lr"] == pytest.approx(0.01)
    assert all(v["opt/lr"] == pytest.approx(0.01) for s, v in metrics.items() if s >= n and "opt/lr" in v)
    assert metrics[wd["step"] - 1]["opt/weight_decay"] == pytest.approx(0.001)
    assert metrics[wd["step"]]["opt/weight_decay"] == pytest.approx(0.02)
    clipped = [s for s, v in metrics.items() if "opt/clip" in v]
    assert clipped == list(range(clip["step"], unclip["step"]))
    assert all(metrics[s]["opt/clip"] == 0.05 and metrics[s]["opt/grad_norm_preclip"] > 0 for s in clipped)
    assert "loss" in metrics[clip["step"]]  # merged into the step's one metrics record
    acks = [r for r in recs if r.kind == protocol.ACK]
    names = (
        "set_lr",
        "set_weight_decay",
        "set_clip",
        "set_clip",
        "bump",
        "pause",
        "resume",
        "checkpoint",
        "stop",
    )
    # set_lr and stop are followed up: the lr held at the next step, the loop left after stop
    expected = [(name, "applied") for name in names]
    expected.insert(1, ("set_lr", "held"))
    assert [(a.data["name"], a.data["status"]) for a in acks] == [*expected, ("stop", "held")]
    assert acks[1].step == lr["step"] + 1
    assert all(a.step == a.data["step"] for a in acks)
    cmds = [r.data for r in recs if r.kind == protocol.COMMAND]
    assert (
        len(cmds) == 9
        and {c["status"] for c in cmds} == {"queued"}
        and {c["sender"] for c in cmds} == {"e2e"}
    )
    (end,) = [r for r in recs if r.kind == protocol.END]
    assert end.data["reason"] == "stopped" and end.data["stop_reason"] == "enough for the test"
    (hello,) = [r for r in recs if r.kind == protocol.HELLO]
    assert hello.data["commands"] == []
    custom = [r.data["commands"] for r in recs if r.kind == protocol.COMMANDS]
    assert custom and custom[-1][0]["name"] == "bump"
    assert [a["name"] for a in custom[-1][0]["args"]] == ["by", "note"]


def test_invalid_or_failing_custom_commands_are_rejected_and_training_goes_on(tmp_path: Path) -> None:
    proc = start_trainer(tmp_path, "--steps", "100000", "--pace", "0.01", "--live-commands")
    try:
        read_until(proc, "RUN ")
        lines = Lines(proc)
        client = CommandClient(wait_live(proc.pid), sender="e2e")
        lines.wait_step(3)
        bad = client.send("bump", {"by": 1.0, "extra": 1})
        assert "unknown argument 'extra'" in client.wait(bad["id"], "rejected")["reason"]
        missing = client.send("bump", {})
        assert "missing argument 'by'" in client.wait(missing["id"], "rejected")["reason"]
        raises = client.send("bump", {"by": -1.0})
        client.wait(raises["id"], "queued")
        failed = client.wait(raises["id"], "rejected")
        assert failed["reason"] == "ValueError: by=-1.0 must be >= 0" and isinstance(failed["step"], int)
        assert not [x for x in lines.lines if x.startswith("BUMP")]
        at = lines.last_step()
        lines.wait_step(at + 5)
        stop = client.send("stop")
        client.wait(stop["id"], "applied")
        assert proc.wait(60) == 0
        client.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
