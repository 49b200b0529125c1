"""``tuimon send`` against a real training process: each command, its printed ack and exit code, its effect on the
real optimizer and the run file; rejected values, dead runs and unreadable keys."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cmdtools import Trainer, file_records, scalar_after, tuimon

from tuimon.runs import resolve
from tuimon_agent import discovery, protocol

# Real trainers in subprocesses or long real runs: in the full suite, not in -m "not slow".
pytestmark = pytest.mark.slow

APPLIED = re.compile(r"(?:applied|paused|resumed|saved) at step ([\d,]+)")


def _step(out: str) -> int:
    m = APPLIED.search(out)
    assert m, out
    return int(m.group(1).replace(",", ""))


@pytest.fixture
def trainer(tmp_path: Path) -> Trainer:
    t = Trainer(tmp_path, "--rate", "50")
    t.line("STEP 5")
    yield t
    t.stop()


def test_set_lr_prints_the_ack_and_changes_the_optimizer_and_the_lr_records(trainer: Trainer) -> None:
    r = tuimon("send", trainer.run_id, "set-lr", "3e-4")
    assert r.returncode == 0, r.stderr
    assert "set_lr applied at step" in r.stdout and "lr 0.01 → 0.0003" in r.stdout
    step = _step(r.stdout)
    assert tuimon("send", trainer.name, "stop").returncode == 0  # by name, as `tuimon attach` resolves it
    final = trainer.final()
    assert final["lr"] == [pytest.approx(3e-4)] and final["stopped"]
    lrs = scalar_after(trainer.run_file, "opt/lr", step)
    assert lrs and all(v == pytest.approx(3e-4) for _, v in lrs)  # every step from the applied one on
    before = [v for s, v in scalar_after(trainer.run_file, "opt/lr", 0) if s < step]
    assert before and all(v == pytest.approx(0.01) for v in before)


def test_every_builtin_and_a_custom_command_end_to_end(trainer: Trainer) -> None:
    def send(*args: str) -> str:
        r = tuimon("send", trainer.run_id, *args)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        assert APPLIED.search(r.stdout), r.stdout
        return r.stdout

    assert "lr 0.01 → 0.005" in send("set-lr", "x0.5")
    assert "lr 0.005 → 0.0005" in send("set-lr", "/10")
    assert "clip off → 1" in send("set-clip", "1.0")
    assert "clip 1 → off" in send("set-clip", "off")
    assert "weight decay 0.0001 → 0.01" in send("set-wd", "0.01")
    paused = send("pause")
    assert paused.startswith("paused at step"), paused  # in words, not "pause False → True"
    paused_at = _step(paused)
    assert "checkpoint saved at step" in send("checkpoint")
    assert _step(send("resume")) >= paused_at
    send("bump", "amount=2.5", "note=hello")
    send("stop", "--reason", "done testing")
    final = trainer.final()
    assert final["lr"] == [pytest.approx(5e-4)] and final["weight_decay"] == [pytest.approx(0.01)]
    assert final["stopped"] and final["bumped"] == [2.5]
    recs = file_records(trainer.run_file)
    acks = [r for r in recs if r.kind == "ack" and r.data.get("status") == "applied"]
    assert [a.data["name"] for a in acks] == [
        "set_lr",
        "set_lr",
        "set_clip",
        "set_clip",
        "set_weight_decay",
        "pause",
        "checkpoint",
        "resume",
        "bump",
        "stop",
    ]
    ckpt = next(a for a in acks if a.data["name"] == "checkpoint")
    assert Path(str(ckpt.data.get("path") or ckpt.data.get("new"))).is_file()
    assert recs[-1].kind == protocol.END and "done testing" in json.dumps(recs[-1].data)


def test_json_output_is_the_final_state(trainer: Trainer) -> None:
    r = tuimon("send", trainer.run_id, "set-wd", "0.001", "--json")
    assert r.returncode == 0, r.stderr
    ack = json.loads(r.stdout)
    assert (
        ack["status"] == "applied"
        and ack["name"] == "set_weight_decay"
        and ack["new"] == pytest.approx(0.001)
    )
    assert isinstance(ack["step"], int) and len(ack["id"]) == 32


INVALID = [
    (("set-lr", "nan"), "invalid learning rate 'nan': must be finite"),
    (("set-lr", "-1"), "must be > 0"),
    (("set-lr", "100"), "value=100.0"),
    (("set-lr", "fast"), "invalid learning rate 'fast': not a number"),
    (("set-clip", "-2"), "invalid max norm -2.0"),
    (("set-wd", "inf"), "must be finite"),
    (("set-lr",), "set-lr takes one value, got 0"),
    (("bump", "amount"), "expected key=value"),
]
"""Invalid CLI input and the message each gets."""


def test_invalid_values_exit_2_with_the_reason_and_send_nothing(trainer: Trainer) -> None:
    for args, message in INVALID:
        r = tuimon("send", trainer.run_id, *args)
        assert r.returncode == 2 and message in r.stderr, (args, r.stdout, r.stderr)
    assert not any(rec.kind == "command" for rec in file_records(trainer.run_file))


def test_what_the_agent_rejects_exits_1_with_its_reason(trainer: Trainer) -> None:
    r = tuimon("send", trainer.run_id, "set-lr", "0.1", "--group", "7")
    assert r.returncode == 1 and "rejected" in r.stderr and "group" in r.stderr, r.stderr
    r = tuimon("send", trainer.run_id, "no_such_command", "k=1")
    assert r.returncode == 1 and "unknown command 'no_such_command'" in r.stderr, r.stderr
    r = tuimon("send", trainer.run_id, "bump", "amount=lots")
    assert r.returncode == 2 and "amount='lots' is not a number" in r.stderr, r.stderr  # typed from the hello
    assert tuimon("send", trainer.run_id, "stop").returncode == 0
    assert trainer.final()["lr"] == [pytest.approx(0.01)]  # nothing rejected was applied


def test_a_finished_run_and_a_dead_one_say_so(tmp_path: Path) -> None:
    t = Trainer(tmp_path, "--rate", "50", name="short")
    t.line("STEP 3")
    assert tuimon("send", t.run_id, "stop").returncode == 0
    t.final()
    r = tuimon("send", t.run_id, "set-lr", "0.1")
    assert r.returncode == 2 and "is not live" in r.stderr and "commands go to live runs only" in r.stderr
    t2 = Trainer(tmp_path, "--rate", "50", name="doomed")
    t2.line("STEP 3")
    t2.suspend()  # stuck: alive but silent
    try:
        r = tuimon("send", t2.run_id, "set-lr", "0.1", "--timeout", "2")
        assert r.returncode == 1 and "no answer" in r.stderr, r.stderr
    finally:
        t2.resume()
        t2.stop()


def test_a_run_named_by_endpoint_is_read_only_unless_it_is_one_of_yours(trainer: Trainer) -> None:
    # This user's own live run, named by its endpoint: its connection file (and so its key) is found.
    info = resolve(trainer.info.pub)
    assert isinstance(info, discovery.ConnectionInfo) and info.key == trainer.info.key
    # An endpoint that no connection file of this user names: no key, so no commands.
    r = tuimon("send", "ipc:///tmp/tuimon-no-such-run.pub", "set-lr", "0.1")
    assert r.returncode == 2 and "read-only" in r.stderr, r.stderr
