"""A run on TCP (``watch(endpoint="tcp")``), which any local user can connect to: history requests need the run's
key (signed like commands), a flood of requests is read at a bounded rate, and the real viewer source, holding the
key, still loads the history and follows the run."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

import tuimon_agent
from tuimon.source import LiveSource, SourceUpdate
from tuimon.state import RunState
from tuimon_agent import commands, discovery, protocol, transport


@pytest.fixture
def dealer() -> Iterator[zmq.Context]:
    """A ZeroMQ context whose sockets are closed at the end (linger 0)."""
    ctx = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)


def _connect(ctx: zmq.Context, info: discovery.ConnectionInfo) -> zmq.Socket:
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(info.router)
    return s


def _ask(sock: zmq.Socket, body: bytes) -> protocol.Record:
    sock.send(body)
    assert sock.poll(10_000), "the agent did not answer"
    return protocol.decode(sock.recv_multipart()[-1])


def _signed(key: bytes, kind: str = protocol.SNAPSHOT_REQ, **fields: object) -> bytes:
    return protocol.encode_request(protocol.SNAPSHOT_REQ, **commands.sign_request(key, kind, fields))


def test_a_snapshot_req_without_the_key_gets_no_history_over_tcp(tmp_path: Path, dealer: zmq.Context) -> None:
    with tuimon_agent.watch(run="tcp-auth", dir=tmp_path, endpoint="tcp") as mon:
        for i in range(20):
            mon.log(loss=float(i))
        info = discovery.live_runs()[0]
        assert info.router.startswith("tcp://127.0.0.1:") and info.key
        key = commands.decode_key(info.key)
        s = _connect(dealer, info)
        refused = [
            _ask(s, protocol.encode_request(protocol.SNAPSHOT_REQ, after=0, limit=100)),  # unsigned
            _ask(s, _signed(bytes(32), after=0, limit=100)),  # another key
            _ask(s, _signed(key, "other", after=0, limit=100)),  # a signature for another kind of request
            _ask(s, _signed(key, after=0, limit=100)[:-1] + b"\x00"),  # a flipped byte
        ]
        stale = commands.sign_request(key, protocol.SNAPSHOT_REQ, {"after": 0, "limit": 100})
        stale["ts"] -= 2 * commands.MAX_CLOCK_SKEW
        stale["sig"] = commands.sign(key, {**stale, commands.REQUEST_KIND_FIELD: protocol.SNAPSHOT_REQ})
        refused.append(_ask(s, protocol.encode_request(protocol.SNAPSHOT_REQ, **stale)))
        for rep in refused:
            assert rep.kind == protocol.ERROR and "records" not in rep.data, rep
        assert [r.data.get("reason") for r in refused[:3]] == ["auth"] * 3
        assert "not signed with the run's key" in refused[0].data["message"]
        assert "stale" in refused[-1].data["message"]
        assert mon._thread is not None and mon._thread.requests_refused >= 4
        # With the key: the whole history.
        snap = _ask(s, _signed(key, after=0, limit=100))
        assert snap.kind == protocol.SNAPSHOT
        kinds = [protocol.decode(b).kind for b in snap.data["records"]]
        assert kinds[0] == "hello" and kinds.count("metrics") == 20
        mon.log(loss=99.0)
        assert mon.enabled
    # On ipc the runtime directory (0700) keeps others out: an unsigned request is still answered there.
    with tuimon_agent.watch(run="ipc-run", dir=tmp_path) as mon:
        mon.log(loss=1.0)
        info = next(i for i in discovery.live_runs() if i.run_id == mon.run_id)
        rep = _ask(_connect(dealer, info), protocol.encode_request(protocol.SNAPSHOT_REQ, after=0, limit=100))
        assert rep.kind == protocol.SNAPSHOT and len(rep.data["records"]) == 2


async def test_the_viewer_source_with_the_key_loads_history_and_follows_a_tcp_run(tmp_path: Path) -> None:
    # No run file: the history can only come from the agent, through signed snapshot requests (5,000 records
    # each, so several of them).
    mon = tuimon_agent.watch(run="tcp-view", dir=tmp_path, endpoint="tcp", persist=False, alerts=False)
    try:
        for i in range(12_000):
            mon.log(loss=float(i))
        info = discovery.live_runs()[0]
        state = RunState()
        statuses: list[str] = []
        messages: list[str] = []

        def emit(update: SourceUpdate) -> None:
            if update.status:
                statuses.append(update.status)
            if update.message:
                messages.append(update.message)
            state.apply_many(update.records)

        task = asyncio.ensure_future(LiveSource(info, follow_restarts=False).run(emit))
        try:

            async def until(cond: object, what: str) -> None:
                deadline = time.monotonic() + 60
                while not cond():  # type: ignore[operator]
                    assert time.monotonic() < deadline, f"{what}; statuses {statuses}, messages {messages}"
                    assert not task.done(), f"the source stopped: {statuses} {messages}"
                    await asyncio.sleep(0.05)

            await until(lambda: "live" in statuses, "the source never went live")
            assert state.train["loss"].count == 12_000 and state.gaps == 0, messages
            for i in range(50):
                mon.log(loss=float(i))
            await until(lambda: state.train["loss"].count == 12_050, "the live stream was not followed")
            mon.close()
            await until(lambda: state.ended, "the end was not seen")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert not any("refused" in m for m in messages), messages
    finally:
        mon.close()


@pytest.mark.slow
def test_a_flood_of_unsigned_requests_is_read_at_a_bounded_rate(tmp_path: Path, dealer: zmq.Context) -> None:
    seconds = 3.0
    with tuimon_agent.watch(run="tcp-flood", dir=tmp_path, endpoint="tcp") as mon:
        info = discovery.live_runs()[0]
        agent = mon._thread
        assert agent is not None
        flood = _connect(dealer, info)
        good = _connect(dealer, info)
        req = protocol.encode_request(protocol.SNAPSHOT_REQ, after=0, limit=5000)
        sent = replies = logged = 0
        good_reply: protocol.Record | None = None
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds and sent < 200_000:  # loopback only, bounded in count and time
            for _ in range(100):
                try:
                    flood.send(req, zmq.NOBLOCK)
                    sent += 1
                except zmq.Again:  # ZeroMQ's queues are full: the agent reads no faster
                    break
            while flood.poll(0):
                rep = protocol.decode(flood.recv_multipart()[-1])
                assert rep.kind == protocol.ERROR and rep.data["reason"] == "auth"
                replies += 1
            mon.log(loss=float(logged))  # training goes on
            logged += 1
            if logged == 50:  # a viewer with the key, during the flood
                good.send(_signed(commands.decode_key(info.key), after=0, limit=10))
            if good_reply is None and good.poll(0):
                good_reply = protocol.decode(good.recv_multipart()[-1])
        elapsed = time.monotonic() - t0
        served = agent.requests_served
        bound = transport.REQUEST_BURST + transport.REQUEST_RATE * (elapsed + 0.5)
        assert served <= bound, f"{served} requests read in {elapsed:.1f} s (bound {bound:.0f})"
        assert sent > 2 * served, f"not a flood: {sent} sent, {served} read"
        assert replies <= served and agent.requests_refused >= replies
        if good_reply is None:
            assert good.poll(10_000), "the key holder was not answered during the flood"
            good_reply = protocol.decode(good.recv_multipart()[-1])
        assert good_reply.kind == protocol.SNAPSHOT and good_reply.data["records"]
        assert mon.enabled
    assert agent.requests_served <= transport.REQUEST_BURST + transport.REQUEST_RATE * (
        time.monotonic() - t0 + 0.5
    )


def test_the_tcp_live_stream_is_encrypted_and_needs_the_server_key(
    tmp_path: Path, dealer: zmq.Context
) -> None:
    from zmq.utils.monitor import recv_monitor_message

    failed_events = {
        zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
        zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
        zmq.EVENT_HANDSHAKE_FAILED_AUTH,
    }
    with tuimon_agent.watch(run="tcp-curve", dir=tmp_path, endpoint="tcp") as mon:
        info = discovery.live_runs()[0]
        assert info.curve_server_key and oct(Path(str(info.path)).stat().st_mode & 0o777) == "0o600"

        def sub(server_key: bytes | None) -> zmq.Socket:
            s = dealer.socket(zmq.SUB)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SUBSCRIBE, b"")
            if server_key is not None:
                public, secret = zmq.curve_keypair()
                s.curve_serverkey, s.curve_publickey, s.curve_secretkey = server_key, public, secret
            return s

        plain, wrong, good = sub(None), sub(zmq.curve_keypair()[0]), sub(info.curve_server_key.encode())
        monitor = plain.get_monitor_socket()
        for s in (plain, wrong, good):
            s.connect(info.pub)
        got = {"plain": 0, "wrong": 0, "good": 0}
        plain_failed = False
        deadline = time.monotonic() + 30
        i = 0
        while not (got["good"] >= 20 and plain_failed):
            assert time.monotonic() < deadline, f"received {got}, plain handshake failed: {plain_failed}"
            mon.log(loss=float(i))
            i += 1
            for name, s in (("plain", plain), ("wrong", wrong), ("good", good)):
                while s.poll(0):
                    frames = s.recv_multipart()
                    got[name] += len(frames) - 1
            for _ in range(100):  # bounded: a refused peer retries and reports again and again
                if plain_failed or not monitor.poll(0):
                    break
                plain_failed = recv_monitor_message(monitor)["event"] in failed_events
            time.sleep(0.01)  # a training step's pace; the loop waits for the condition above
        assert got["plain"] == 0 and got["wrong"] == 0, got
        plain.disable_monitor()
