"""Where the viewer's records come from: a live run (ZeroMQ) or a run file (replay).

A :class:`Source` runs on the app's event loop and hands batches of decoded records to an ``emit`` callback as
:class:`SourceUpdate` objects. Batching is the source's job: a burst of 50,000 records a second becomes a few dozen
updates, never one message per record.

Late join without a gap or a duplicate (:class:`LiveSource`): the SUB socket is connected first, so the live stream is
buffered from that moment; then the history is loaded from the run file (when this user can read it), then the agent
is asked for every record after the last one read (``snapshot_req``; the agent commits before it answers, so this
covers what the file did not have yet, and is the whole history when the file cannot be read). Only then are the
buffered live records passed on; the run state drops the ones it already has by ``seq`` and counts real gaps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.asyncio

from tuimon_agent import commands, discovery, protocol
from tuimon_agent.runfile import RunFileReader

BATCH = 5000
"""Records per update at most."""
BATCH_SECONDS = 0.05
"""How long a live update may gather records before it is emitted."""
STALE_AFTER = 3.0
"""Seconds without any message (heartbeats come every second) before a live run is called stale."""
REQUEST_TIMEOUT = 3.0


@dataclass
class SourceUpdate:
    """A batch of records and what the source has to say about the connection."""

    records: list[protocol.Record] = field(default_factory=list)
    status: str | None = None
    """``waiting``, ``loading``, ``live``, ``stale``, ``ended``, ``reconnecting`` or ``replay``; ``None``: unchanged."""
    malformed: int = 0
    """Messages that could not be decoded since the previous update."""
    message: str | None = None
    """A note for the user."""
    reset: bool = False
    """A new run: clear the state before applying these records."""


Emit = Callable[[SourceUpdate], None]


class Source:
    """A stream of records for the viewer. Subclasses implement :meth:`run`."""

    label: str = "run"

    async def run(self, emit: Emit) -> None:
        """Emit updates until cancelled (or, for a finished run file, until everything is emitted)."""
        raise NotImplementedError


def decode_bodies(bodies: list[bytes]) -> tuple[list[protocol.Record], int]:
    """Decode many bodies; returns the records and how many were malformed."""
    out: list[protocol.Record] = []
    bad = 0
    for body in bodies:
        try:
            out.append(protocol.decode(body))
        except protocol.ProtocolError:
            bad += 1
    return out, bad


class FileSource(Source):
    """Replays a run file: every record, in batches, then keeps following it when ``follow`` and it has no end.

    Args:
        path: A ``run.sqlite`` file or a run directory.
        follow: After the history, poll the file for new records (a live run seen only through its file).
    """

    def __init__(self, path: str | Path, *, follow: bool = False) -> None:
        self.path = Path(path)
        self.follow = follow
        self.label = str(path)

    async def run(self, emit: Emit) -> None:
        try:
            reader = RunFileReader(self.path)
        except (OSError, ValueError) as exc:
            emit(SourceUpdate(status="ended", message=f"cannot open run file: {exc}"))
            return
        self.label = str(reader.meta.get("name") or reader.run_id)
        emit(SourceUpdate(status="loading"))
        last, ended = 0, False
        try:
            while True:
                for rows in reader.bodies(last, batch=BATCH):
                    records, bad = decode_bodies([b for _, b in rows])
                    last = rows[-1][0]
                    ended = ended or any(r.kind == protocol.END for r in records)
                    emit(SourceUpdate(records, malformed=bad))
                    await asyncio.sleep(0)
                if ended or not self.follow:
                    emit(SourceUpdate(status="replay" if not self.follow else "ended"))
                    return
                emit(SourceUpdate(status="live"))
                await asyncio.sleep(0.5)
        except ValueError as exc:  # RunFileDamaged: keep what was read, say where it stopped
            emit(SourceUpdate(status="ended", message=f"run file damaged, shown up to record {last}: {exc}"))
        finally:
            reader.close()


class LiveSource(Source):
    """Follows a live run over ZeroMQ, after loading its history; reconnects when the trainer restarts.

    Args:
        info: The run's connection info.
        follow_restarts: When the run ends or its process dies, follow the next live run with the same name.
    """

    def __init__(self, info: discovery.ConnectionInfo, *, follow_restarts: bool = True) -> None:
        self.info = info
        self.follow_restarts = follow_restarts
        self.label = info.name
        self._ctx = zmq.asyncio.Context()

    async def run(self, emit: Emit) -> None:
        try:
            reset = False
            while True:
                await self._follow(self.info, emit, reset=reset)
                if not self.follow_restarts:
                    return
                nxt = await self._wait_for_restart()
                self.info, reset = nxt, True
                self.label = nxt.name
                emit(
                    SourceUpdate(
                        status="reconnecting", message=f"trainer restarted: following run {nxt.run_id}"
                    )
                )
        finally:
            self._ctx.destroy(linger=0)

    async def _follow(self, info: discovery.ConnectionInfo, emit: Emit, *, reset: bool) -> None:
        """Load the run's history and follow its stream until it ends or its process dies."""
        sub = self._ctx.socket(zmq.SUB)
        dealer = self._ctx.socket(zmq.DEALER)
        try:
            for s in (sub, dealer):
                s.setsockopt(zmq.LINGER, 0)
                s.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
            sub.setsockopt(zmq.RCVHWM, 200_000)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            if (
                info.curve_server_key
            ):  # a run on TCP: its stream is encrypted (CURVE), with this key to reach it
                public, secret = zmq.curve_keypair()
                sub.curve_serverkey = info.curve_server_key.encode("ascii")
                sub.curve_publickey = public
                sub.curve_secretkey = secret
            sub.connect(info.pub)
            dealer.connect(info.router)
            saw_end = False

            def note(update: SourceUpdate) -> None:
                nonlocal saw_end
                saw_end = saw_end or any(r.kind == protocol.END for r in update.records)
                emit(update)

            note(SourceUpdate(status="loading", reset=reset))
            last = await self._history(info, note)
            last = await self._snapshot(dealer, last, note)
            if saw_end:
                emit(SourceUpdate(status="ended"))
                return
            ended = await self._stream(sub, info, emit)
            if not ended:
                emit(SourceUpdate(status="ended", message=f"the training process (pid {info.pid}) is gone"))
        finally:
            sub.close(linger=0)
            dealer.close(linger=0)

    async def _history(self, info: discovery.ConnectionInfo, emit: Emit) -> int:
        """Records from the run file, if this user can read it; returns the last seq read."""
        if not info.run_file:
            return 0
        try:
            reader = RunFileReader(info.run_file)
        except (OSError, ValueError):
            return 0
        last = 0
        try:
            if reader.run_id != info.run_id:
                return 0
            for rows in reader.bodies(0, batch=BATCH):
                records, bad = decode_bodies([b for _, b in rows])
                last = rows[-1][0]
                emit(SourceUpdate(records, malformed=bad))
                await asyncio.sleep(0)
        except Exception:  # a file being written can fail mid-read; the snapshot fills in the rest
            pass
        finally:
            reader.close()
        return last

    def _snapshot_req(self, after: int) -> bytes:
        """A history request, signed with the run's key when the connection file gave one (an agent on TCP
        answers only signed requests; on ipc the runtime directory's permissions already keep others out)."""
        fields = {"after": after, "limit": BATCH}
        try:
            key = commands.decode_key(self.info.key)
        except ValueError:
            return protocol.encode_request(protocol.SNAPSHOT_REQ, **fields)
        return protocol.encode_request(
            protocol.SNAPSHOT_REQ, **commands.sign_request(key, protocol.SNAPSHOT_REQ, fields)
        )

    async def _snapshot(self, dealer: zmq.asyncio.Socket, last: int, emit: Emit) -> int:
        """Ask the agent for everything after ``last`` until it says there is no more."""
        while True:
            await dealer.send(self._snapshot_req(last))
            if not await dealer.poll(REQUEST_TIMEOUT * 1000):
                emit(
                    SourceUpdate(
                        message="the agent did not answer a history request; following the live stream"
                    )
                )
                return last
            body = (await dealer.recv_multipart())[-1]
            try:
                reply = protocol.decode(body)
            except protocol.ProtocolError:
                emit(SourceUpdate(malformed=1))
                return last
            if reply.kind != protocol.SNAPSHOT:
                emit(
                    SourceUpdate(message=f"history request refused: {reply.data.get('message', reply.kind)}")
                )
                return last
            bodies = reply.data.get("records", [])
            records, bad = decode_bodies(bodies if isinstance(bodies, list) else [])
            if records:
                last = max(last, records[-1].seq)
            emit(SourceUpdate(records, malformed=bad))
            if not reply.data.get("more") or not records:
                return last

    async def _stream(self, sub: zmq.asyncio.Socket, info: discovery.ConnectionInfo, emit: Emit) -> bool:
        """Pass on live records in batches; returns True when an end record arrived, False when the process died."""
        emit(SourceUpdate(status="live"))
        status = "live"
        last_msg = time.monotonic()
        while True:
            if not await sub.poll(1000):
                if time.monotonic() - last_msg > STALE_AFTER:
                    if not info.alive():
                        return False
                    if info.path and not os.path.exists(info.path):
                        # The agent closed (it removes its connection file) and its end record was lost.
                        emit(SourceUpdate(status="ended", message="the run closed"))
                        return True
                    if status != "stale":
                        status = "stale"
                        emit(SourceUpdate(status="stale"))
                continue
            records: list[protocol.Record] = []
            bad = 0
            deadline = time.monotonic() + BATCH_SECONDS
            while len(records) < BATCH and time.monotonic() < deadline:
                try:
                    frames = await sub.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    if not await sub.poll(max(1, int((deadline - time.monotonic()) * 1000))):
                        break
                    continue
                for body in frames[1:] if len(frames) > 1 else frames:
                    try:
                        records.append(protocol.decode(body))
                    except protocol.ProtocolError:
                        bad += 1
            last_msg = time.monotonic()
            ended = any(r.kind == protocol.END for r in records)
            new_status = "ended" if ended else "live"
            emit(SourceUpdate(records, malformed=bad, status=new_status if new_status != status else None))
            status = new_status
            if ended:
                return True

    async def _wait_for_restart(self) -> discovery.ConnectionInfo:
        """Wait for a new live run with the same name as the current one."""
        seen = self.info.run_id
        while True:
            await asyncio.sleep(1.0)
            with contextlib.suppress(OSError, discovery.RuntimeDirError):
                for info in discovery.live_runs():
                    if (
                        info.name == self.info.name
                        and info.run_id != seen
                        and info.started >= self.info.started
                    ):
                        return info
