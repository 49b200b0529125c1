"""The viewer's command client against a real training process: pending → queued → applied, a second viewer learns
the outcome from the stream, duplicate delivery is applied once, a stuck run gives "no answer" (then the late ack)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from cmdtools import Trainer, file_records

from tuimon.control import CommandClient, CommandLog, CommandRequest, TrackedCommand, describe
from tuimon.source import LiveSource, SourceUpdate
from tuimon.state import RunState
from tuimon_agent import commands, protocol

# Real trainers in subprocesses or long real runs: in the full suite, not in -m "not slow".
pytestmark = pytest.mark.slow


@pytest.fixture
def trainer(tmp_path: Path) -> Trainer:
    t = Trainer(tmp_path, "--rate", "40")
    t.line("STEP 3")
    yield t
    t.stop()


async def _stop(client: CommandClient) -> TrackedCommand:
    cmd = client.submit(CommandRequest("stop", {"reason": "test over"}))
    return await client.wait(cmd, until=("applied",), timeout=30)


async def test_pending_queued_applied_and_a_second_viewer_sees_the_ack_on_the_stream(
    trainer: Trainer,
) -> None:
    seen = RunState()

    def emit(update: SourceUpdate) -> None:
        seen.apply_many(update.records)

    viewer = asyncio.ensure_future(LiveSource(trainer.info, follow_restarts=False).run(emit))
    statuses: list[str] = []
    client = CommandClient(trainer.info, on_change=lambda c: statuses.append(c.status))
    try:
        cmd = client.submit(CommandRequest("set_lr", {"scale": 0.5}))
        assert describe(cmd) == "set_lr ×0.5 … pending" and len(cmd.id) == 32
        await client.wait(cmd, until=("applied",), timeout=30)
        assert statuses == ["pending", "queued", "applied"]
        assert (
            isinstance(cmd.step, int) and cmd.old == pytest.approx(0.01) and cmd.new == pytest.approx(0.005)
        )
        assert (
            describe(cmd)
            == f"set_lr applied at step {cmd.step:,}: lr 0.01 → 0.005 · checking the next step …"
        )
        await client.wait_follow_up(cmd, timeout=30)  # the loop leaves the lr alone: it held
        assert cmd.follow_up == "held" and statuses[-1] == "applied"
        assert (
            describe(cmd) == f"set_lr applied at step {cmd.step:,}: lr 0.01 → 0.005 · held at the next step"
        )
        await _stop(client)
        deadline = time.monotonic() + 30
        while not seen.ended and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        client.close()
        viewer.cancel()
        await asyncio.gather(viewer, return_exceptions=True)
    other = seen.commands.get(
        cmd.id
    )  # the second viewer never talked to the agent: it learnt it from records
    assert other is not None and other.status == "applied" and other.step == cmd.step and not other.mine
    assert other.label == "set_lr ×0.5"
    assert [m.step for m in seen.markers if m.kind == "command"] == [cmd.step, seen.commands.applied[-1].step]
    assert trainer.final()["lr"] == [pytest.approx(0.005)]


async def test_a_duplicate_delivery_is_applied_exactly_once(trainer: Trainer) -> None:
    client = CommandClient(trainer.info)
    try:
        fields = commands.make_command(client.key, "set_lr", {"scale": 0.5}, sender=client.sender, seq=1)
        client._seq = 1
        body = protocol.encode_request("command", **fields)
        cmd = client.log.add(
            TrackedCommand(fields["id"], "set_lr", {"scale": 0.5}, sent=time.monotonic(), mine=True)
        )
        client._sock.send(body)
        client._sock.send(body)  # the same signed command again (a retry, a duplicated packet)
        await client.wait(cmd, until=("applied",), timeout=30)
        assert cmd.status == "applied"
        client._sock.send(
            body
        )  # and once more after it was applied: answered with its ack, not applied again
        await asyncio.sleep(0.5)
        await _stop(client)
    finally:
        client.close()
    assert trainer.final()["lr"] == [pytest.approx(0.005)]  # halved once, not twice or three times
    acks = [r for r in file_records(trainer.run_file) if r.kind == "ack" and r.data.get("id") == fields["id"]]
    assert [a.data["status"] for a in acks] == ["applied", "held"]  # and the check at the next step


async def test_a_stuck_run_gives_no_answer_and_a_late_ack_still_counts(trainer: Trainer) -> None:
    client = CommandClient(trainer.info, timeout=1.0)
    trainer.suspend()  # stopped for sure before the command goes out
    try:
        cmd = client.submit(CommandRequest("set_weight_decay", {"value": 0.01}))
        await client.wait(cmd, until=("applied",), timeout=10)
        assert cmd.status == "no answer" and "no answer in 1 s" in (cmd.reason or "")
        assert "may be stuck" in describe(cmd)
    finally:
        trainer.resume()
    try:
        await client.wait(cmd, until=("applied",), timeout=30, past_no_answer=True)
        assert cmd.status == "applied" and cmd.new == pytest.approx(0.01)
        await _stop(client)
    finally:
        client.close()
    assert trainer.final()["weight_decay"] == [pytest.approx(0.01)]


def test_the_log_keeps_the_outcome_whatever_order_replies_and_records_arrive_in() -> None:
    log = CommandLog()
    applied = {"id": "a" * 32, "name": "set_lr", "status": "applied", "step": 7, "old": 0.1, "new": 0.05}
    log.apply_reply(applied)
    log.apply_reply({"id": "a" * 32, "status": "queued"})  # late queued: never undoes applied
    log.apply_reply(applied)  # duplicate: counted once
    log.apply_record(
        protocol.Record("command", 3, 6, 1.0, {"id": "a" * 32, "name": "set_lr", "args": {"value": 0.05}})
    )
    (cmd,) = log.entries()
    assert cmd.status == "applied" and cmd.step == 7 and len(log.applied) == 1 and cmd.label == "set_lr 0.05"
    log.apply_record(
        protocol.Record(
            "command",
            4,
            8,
            2.0,
            {
                "id": "b" * 32,
                "name": "set_clip",
                "args": {"max_norm": -1},
                "status": "rejected",
                "reason": "invalid set_clip: max_norm=-1",
            },
        )
    )
    assert describe(log.get("b" * 32)) == "set_clip -1 rejected: invalid set_clip: max_norm=-1"
    assert (
        log.apply_reply({"status": "applied"}) is None and log.apply_reply({"id": 3, "status": "x"}) is None
    )
