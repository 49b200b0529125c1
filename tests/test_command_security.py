"""Hostile and invalid live commands against a real agent in a real training loop, over real sockets.

Every one is rejected with a clear reason, acked as rejected, recorded in the run file, and never applied: the
optimizer's hyperparameters are the same after more training steps, and no ``applied`` ack exists. A duplicate of
a valid command is applied exactly once.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import CommandClient

import tuimon_agent
from tuimon_agent import commands, discovery, protocol
from tuimon_agent.runfile import RunFileReader


class Run:
    """A real model, optimizer and monitor in this process, trained a few steps at a time."""

    def __init__(self, tmp_path: Path) -> None:
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        self.opt = torch.optim.AdamW(
            [
                {"params": self.model[0].parameters()},
                {"params": self.model[2].parameters(), "lr": 0.002},
            ],
            lr=0.001,
            weight_decay=0.01,
        )
        self.mon = tuimon_agent.watch(
            self.model, self.opt, run="sec", dir=tmp_path, stats_every=0, hist_every=0
        )
        (self.info,) = [i for i in discovery.live_runs(clean=False) if i.run_id == self.mon.run_id]
        self.x, self.y = torch.randn(32, 6), torch.randn(32, 1)

    def train(self, n: int = 3) -> None:
        for _ in range(n):
            loss = torch.nn.functional.mse_loss(self.model(self.x), self.y)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            self.mon.log(loss=loss)

    def groups(self) -> list[dict[str, Any]]:
        return [{k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in self.opt.param_groups]

    def records(self) -> list[protocol.Record]:
        assert self.mon.run_file is not None
        reader = RunFileReader(self.mon.run_file)
        try:
            return list(reader.records())
        finally:
            reader.close()


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    """A live in-process run (closed at the end of the test)."""
    r = Run(tmp_path)
    r.train(2)
    yield r
    r.mon.close()


@pytest.fixture
def client(run: Run) -> Iterator[CommandClient]:
    """A DEALER with the run's real key."""
    c = CommandClient(run.info, sender="attacker-or-user")
    yield c
    c.close()


def _signed(key: bytes, **fields: Any) -> dict[str, Any]:
    fields["sig"] = commands.sign(key, fields)
    return fields


def _fields(**over: Any) -> dict[str, Any]:
    base = {
        "id": "f" * 32,
        "name": "set_lr",
        "args": {"value": 0.5},
        "sender": "x",
        "seq": 1,
        "ts": time.time(),
    }
    base.update(over)
    return base


def _hostile(client: CommandClient) -> list[tuple[str, dict[str, Any], str]]:
    """(label, fields as sent, a phrase the reason must contain)."""
    key = client.key
    good = client.make("set_lr", {"value": 0.5})
    no_sig = {k: v for k, v in client.make("set_lr", {"value": 0.5}).items() if k != "sig"}
    wrong_key = commands.make_command(b"\x00" * 32, "set_lr", {"value": 0.5}, sender="w", seq=1)
    tampered_args = {**client.make("set_lr", {"value": 0.001}), "args": {"value": 0.5}}
    flipped = client.make("set_clip", {"max_norm": 0.1})
    flipped["sig"] = flipped["sig"][:10] + ("0" if flipped["sig"][10] != "0" else "1") + flipped["sig"][11:]
    replay = _signed(key, **_fields(id="a" * 32, sender=good["sender"], seq=good["seq"]))
    stale = _signed(key, **_fields(id="b" * 32, sender="s2", seq=1, ts=time.time() - 3600))
    future = _signed(key, **_fields(id="c" * 32, sender="s3", seq=1, ts=time.time() + 3600))
    big = _signed(key, **_fields(id="d" * 32, sender="s4", seq=1, name="stop", args={"reason": "x" * 40_000}))
    return [
        ("good-first", good, ""),  # sent first so that 'replay' reuses its (sender, seq); checked apart
        ("no signature", no_sig, "signature"),
        ("wrong key", wrong_key, "bad signature"),
        ("tampered args", tampered_args, "bad signature"),
        ("flipped signature byte", flipped, "bad signature"),
        ("replayed seq", replay, "replayed seq"),
        ("stale", stale, "stale"),
        ("from the future", future, "stale"),
        ("oversized", big, "exceeds the limit"),
        ("nan", client.make("set_lr", {"value": math.nan}), "value=nan"),
        ("inf", client.make("set_weight_decay", {"value": math.inf}), "value=inf"),
        ("negative", client.make("set_lr", {"value": -0.1}), "value=-0.1"),
        ("too large", client.make("set_lr", {"value": 1e6}), "<= 10"),
        ("wrong type", client.make("set_clip", {"max_norm": "1.0"}), "max_norm='1.0'"),
        ("bool for float", client.make("set_lr", {"scale": True}), "scale=True"),
        ("unknown group", client.make("set_lr", {"value": 0.1, "group": 2}), "unknown group=2"),
        ("unknown command", client.make("exec", {"code": "import os"}), "unknown command 'exec'"),
        ("extra args", client.make("pause", {"now": True}), "unknown argument 'now'"),
        ("both value and scale", client.make("set_lr", {"value": 0.1, "scale": 2.0}), "exactly one of"),
        ("bad seq type", {**client.make("pause"), "seq": "1"}, "bad command field seq"),
    ]


def test_hostile_and_invalid_commands_are_rejected_and_never_applied(run: Run, client: CommandClient) -> None:
    cases = _hostile(client)
    good = cases[0][1]
    client.send_cmd(good)
    assert client.wait(good["id"], "queued")
    run.train(1)
    applied = client.wait(good["id"], "applied")
    assert applied["new"] == 0.5
    before = run.groups()
    for label, fields, phrase in cases[1:]:
        client.send_cmd(fields)
        ack = client.recv()
        assert ack["status"] == "rejected", (label, ack)
        assert phrase in ack["reason"], (label, ack["reason"])
        if isinstance(fields.get("id"), str) and label != "replayed seq":
            assert ack["id"] == fields["id"], label
    run.train(5)
    assert run.groups() == before
    time.sleep(0.3)  # let the agent thread record the last acks
    run.mon.close()
    recs = run.records()
    acks = [r.data for r in recs if r.kind == protocol.ACK]
    assert [a["id"] for a in acks if a["status"] == "applied"] == [good["id"]]
    cmds = [r.data for r in recs if r.kind == protocol.COMMAND]
    assert [c["status"] for c in cmds].count("rejected") == len(cases) - 1
    assert all("sig" not in c for c in cmds)
    assert not any("opt/clip" in r.data.get("values", {}) for r in recs if r.kind == protocol.METRICS)


def test_duplicate_delivery_is_applied_exactly_once(run: Run, client: CommandClient) -> None:
    lr0 = run.opt.param_groups[0]["lr"]
    cmd = client.make("set_lr", {"scale": 0.5})
    for _ in range(3):
        client.send_cmd(cmd)
    first = [client.recv() for _ in range(3)]
    assert [a["status"] for a in first] == ["queued"] * 3 and {a["id"] for a in first} == {cmd["id"]}
    run.train(3)
    applied = client.wait(cmd["id"], "applied")
    assert applied["step"] == 3 and applied["old"] == pytest.approx(lr0)
    client.send_cmd(
        cmd
    )  # delivered again after it was applied: the latest ack comes back, nothing re-applied
    again = client.recv()
    if again["status"] == "held":  # the check at step 4 (set_lr held) was sent before the duplicate arrived
        again = client.recv()
    assert again["status"] == "applied" and again["step"] == 3
    run.train(3)
    assert run.opt.param_groups[0]["lr"] == pytest.approx(lr0 * 0.5)
    assert run.opt.param_groups[1]["lr"] == pytest.approx(0.002 * 0.5)
    run.mon.close()
    acks = [r.data for r in run.records() if r.kind == protocol.ACK and r.data.get("id") == cmd["id"]]
    assert [a["status"] for a in acks] == ["applied", "held"]  # applied once, then checked once


def test_a_key_read_from_elsewhere_is_refused_and_the_connection_file_is_private(run: Run) -> None:
    import os
    import stat

    assert run.info.path is not None
    assert stat.S_IMODE(os.stat(run.info.path).st_mode) == 0o600
    other = CommandClient(run.info, sender="other", key=bytes.fromhex(discovery.new_key()))
    try:
        cmd = other.send("stop", {})
        ack = other.recv()
        assert ack == {"id": cmd["id"], "status": "rejected", "reason": ack["reason"]}
        assert "bad signature" in ack["reason"]
        run.train(2)
        assert not run.mon.should_stop
    finally:
        other.close()


def test_garbage_bodies_get_an_error_and_training_goes_on(run: Run, client: CommandClient) -> None:
    for body in (b"", b"\xc1\xc1", protocol.encode_request("command", id=1), b"\x93" * 10):
        client.sock.send(body)
    replies = []
    for _ in range(4):
        assert client.sock.poll(10_000)
        replies.append(protocol.decode(client.sock.recv()))
    assert {r.kind for r in replies} <= {protocol.ERROR, protocol.ACK}
    assert any(r.kind == protocol.ACK and "signature" in r.data["reason"] for r in replies)
    before = run.groups()
    run.train(2)
    assert run.groups() == before and run.mon.enabled


def test_a_command_the_run_never_reaches_is_rejected_at_close(run: Run, client: CommandClient) -> None:
    """Queued, then the loop ends before another optimizer step: the sender still gets an answer."""
    cmd = client.send("set_lr", {"value": 0.5})
    client.wait(cmd["id"], "queued")
    lr = run.opt.param_groups[0]["lr"]
    run.mon.close()
    ack = client.wait(cmd["id"], "rejected")
    assert ack["reason"] == "the run ended before the next optimizer step"
    assert run.opt.param_groups[0]["lr"] == lr
    kinds = [(r.kind, r.data.get("status")) for r in run.records()]
    assert kinds.index((protocol.ACK, "rejected")) < kinds.index((protocol.END, None))
