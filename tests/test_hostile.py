"""Hostile and broken input over real sockets, and a really full disk: counted, reported, never fatal."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from pathlib import Path

import msgpack
import pytest
import zmq
from test_app import plain

import tuimon_agent
from tuimon.app import REPAINT_INTERVAL, make_app
from tuimon.runs import resolve
from tuimon.source import LiveSource
from tuimon.widgets import RunHeader
from tuimon_agent import discovery, protocol
from tuimon_agent.runfile import RunFileReader


def _req(sock: zmq.Socket, *frames: bytes) -> protocol.Record:
    sock.send_multipart(list(frames))
    assert sock.poll(5000), "the agent did not answer"
    return protocol.decode(sock.recv_multipart()[-1])


def test_the_agent_answers_garbage_requests_with_errors_and_keeps_going(tmp_path: Path) -> None:
    with tuimon_agent.watch(run="target", dir=tmp_path) as mon:
        mon.log(loss=1.0)
        info = discovery.live_runs()[0]
        ctx = zmq.Context()
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(info.router)
        try:
            assert _req(dealer, b"\xff\x00garbage").kind == protocol.ERROR
            old = msgpack.packb({"v": 0, "k": "snapshot_req", "q": 0, "d": {}})
            assert "version 0" in _req(dealer, old).data["message"]
            bad = protocol.encode_request(protocol.SNAPSHOT_REQ, after=-5, limit="all")
            assert "bad snapshot_req" in _req(dealer, bad).data["message"]
            assert (
                "unknown request kind"
                in _req(dealer, protocol.encode_request("launch_missiles")).data["message"]
            )
            # A message larger than the ROUTER's limit is dropped by ZeroMQ itself (the peer is disconnected).
            big = ctx.socket(zmq.DEALER)
            big.setsockopt(zmq.LINGER, 0)
            big.connect(info.router)
            big.send(b"\x00" * (2 << 20))
            big.close()
            # ... and the agent still serves a good request and still records.
            mon.log(loss=2.0)
            snap = _req(dealer, protocol.encode_request(protocol.SNAPSHOT_REQ, after=0, limit=100))
            kinds = [protocol.decode(b).kind for b in snap.data["records"]]
            assert kinds == ["hello", "metrics", "metrics"] and snap.data["more"] is False
        finally:
            dealer.close()
            ctx.term()
        mon.log(loss=3.0)
        assert mon.enabled
    with RunFileReader(mon.run_file) as r:
        assert [x.kind for x in r.records()] == ["hello", "metrics", "metrics", "metrics", "end"]


async def test_the_viewer_counts_and_shows_malformed_messages_from_a_hostile_publisher() -> None:
    ctx = zmq.Context()
    pub, router = ctx.socket(zmq.PUB), ctx.socket(zmq.ROUTER)
    for s in (pub, router):
        s.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    router.bind(f"tcp://127.0.0.1:{port + 1}")
    info = resolve(f"tcp://127.0.0.1:{port}")
    assert isinstance(info, discovery.ConnectionInfo) and info.router == f"tcp://127.0.0.1:{port + 1}"
    app = make_app(LiveSource(info, follow_restarts=False))
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause(0.3)
            assert router.poll(5000)  # the viewer asks for history: refuse it with garbage
            ident = router.recv_multipart()[0]
            router.send_multipart([ident, b"\xc1not msgpack"])
            good = protocol.Record(protocol.METRICS, 1, 1, 0.0, {"values": {"loss": 1.0}})
            bodies = [
                protocol.encode(
                    protocol.Record(protocol.HELLO, 0, None, 0.0, {"name": "hostile", "run_id": "h"})
                ),
                b"\x00\x01\x02",  # garbage
                protocol.encode(good)[:-3],  # truncated
                msgpack.packb({"v": 99, "k": "metrics", "q": 2}),  # another version
                protocol.encode(good),
                protocol.encode(protocol.Record("from_the_future", 2, 1, 0.0, {})),  # unknown kind: ignored
            ]
            for _ in range(40):
                for b in bodies:
                    pub.send_multipart([b"x", b])
                await pilot.pause(REPAINT_INTERVAL)
                if app.state.malformed >= 4:
                    break
            await pilot.pause(2 * REPAINT_INTERVAL)
            assert app.state.malformed >= 4 and app.state.unknown >= 1
            assert app.state.train["loss"].last_value == 1.0
            header = plain(app.overview.query_one(RunHeader))
            assert f"bad {app.state.malformed}" in header
    finally:
        pub.close()
        router.close()
        ctx.term()


async def test_attach_by_connection_file_and_by_tcp_endpoint(tmp_path: Path) -> None:
    from helpers import follow

    with tuimon_agent.watch(run="tcp-run", dir=tmp_path, endpoint="tcp") as mon:
        for i in range(50):
            mon.log(loss=float(i))
        info = discovery.live_runs()[0]
        assert info.pub.startswith("tcp://127.0.0.1:")
        by_file = resolve(str(info.path))
        assert isinstance(by_file, discovery.ConnectionInfo) and by_file.run_id == mon.run_id
        by_prefix = resolve(mon.run_id[:17])
        assert isinstance(by_prefix, discovery.ConnectionInfo) and by_prefix.run_id == mon.run_id
        by_endpoint = resolve(info.pub)
        assert isinstance(by_endpoint, discovery.ConnectionInfo)
        state, _, _ = await follow(by_endpoint, until_end=False, seconds=3.0)
        assert state.name == "tcp-run" and state.train["loss"].count == 50 and state.gaps == 0


@pytest.fixture
def tiny_disk(tmp_path: Path):  # noqa: ANN201
    """A real 512 KiB tmpfs: a disk that really fills up. Needs root and mount permission; skipped otherwise."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        with contextlib.suppress(Exception):
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_turns_persistence_off_with_one_warning(
    tiny_disk: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with tuimon_agent.watch(run="full", dir=tiny_disk, commit_interval=0.05) as mon:
        info = discovery.live_runs()[0]
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"event")
        sub.connect(info.pub)
        try:
            for i in range(60_000):
                mon.log(loss=float(i), payload=float(i) * 2)
                if i % 5000 == 0 or (i < 300 and i % 50 == 0):  # small commits first, then a flood
                    asyncio.run(asyncio.sleep(0.1))
            assert sub.poll(10_000), "no event record about the full disk"
            event = protocol.decode(sub.recv_multipart()[-1])
        finally:
            sub.close()
            ctx.term()
        assert event.data["what"] == "persistence_off" and "full" in event.data["message"]
        mon.log(loss=-1.0)
        assert mon.enabled  # training and publishing go on
    err = capfd.readouterr().err
    assert err.count("run file persistence is off") == 1 and "full" in err
    with RunFileReader(mon.run_file) as r:  # what was committed before the disk filled is intact
        assert r.last_seq() > 100
