"""Live commands under torch.distributed: every rank applies rank 0's commands at the same optimizer step.

Only rank 0 has sockets and takes commands. At every optimizer step boundary each rank's controller calls
:meth:`DistSync.exchange`: rank 0 announces the (usually empty) batch it took from its queue on a gloo group of
its own (``dist.new_group(backend="gloo")``, created at the first boundary), and every rank applies the batch
announced at the previous boundary, so the same commands are applied on every rank before the same
``optimizer.step()``, one step after rank 0 took them. An empty batch costs one asynchronous broadcast of one
int64 per step, overlapped with the step's compute; a batch costs a second, blocking broadcast of its msgpack
bytes. While paused, rank 0 announces every ``control.PAUSE_POLL`` seconds, so no rank sits in a collective long
enough to trip its timeout.
"""

from __future__ import annotations

import itertools
import sys
import time
from typing import Any

import msgpack


def _warn(message: str) -> None:
    try:
        print(f"tuimon: {message}", file=sys.stderr, flush=True)
    except Exception:
        pass


def active() -> bool:
    """Whether torch.distributed is initialized with more than one rank."""
    try:
        import torch.distributed as dist
    except ImportError:
        return False
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_rank() -> int:
    """This process's rank: ``torch.distributed`` when initialized, else ``$RANK``, else 0."""
    import os

    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return int(dist.get_rank())
    except ImportError:
        pass
    try:
        return int(os.environ.get("RANK") or 0)
    except ValueError:
        return 0


HANDSHAKE_TIMEOUT = 10.0
"""Seconds each rank waits, at its first optimizer step, for every rank's controller to check in."""
_instances = itertools.count()


class DistSync:
    """Broadcasts rank 0's command batches to every rank (set up lazily, at the first step boundary).

    The exchange is a collective, so every rank must have one (``watch()`` called on every rank). At the first
    boundary each rank checks in through the default group's store and waits up to :data:`HANDSHAKE_TIMEOUT`
    seconds for the others; when one is missing (``watch()`` only on rank 0, say) live commands are refused on
    this run rather than applied to one replica, and nothing here waits again.
    """

    def __init__(self) -> None:
        self._group: Any = None
        self._ready = False
        self._key = f"tuimon/control/{next(_instances)}"
        self.off = False
        self.refused: str | None = None
        """Why commands cannot be applied on every rank (then the gate rejects them), or ``None``."""
        self.broadcasts = 0
        self._inflight: tuple[Any, Any] | None = None
        self._announced: list[Any] = []
        self._payload = b""

    def take_announced(self) -> list[Any]:
        """The batch announced at the last boundary and not applied yet (emptied)."""
        out, self._announced, self._payload = self._announced, [], b""
        return out

    @property
    def announced(self) -> bool:
        """Whether rank 0 announced a batch that the next exchange applies."""
        return bool(self._payload)

    def _handshake(self) -> bool:
        import torch.distributed as dist

        try:
            from torch.distributed.distributed_c10d import _get_default_store

            store = _get_default_store()
        except Exception:  # no store to ask: trust that every rank called watch()
            return True
        world = dist.get_world_size()
        store.add(self._key, 1)
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT
        while store.add(self._key, 0) < world:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def _setup(self) -> None:
        import torch.distributed as dist

        self._ready = True
        if not self._handshake():
            self.off = True
            self.refused = (
                f"live commands are off: not every one of the {dist.get_world_size()} ranks called watch() "
                "(each rank must, so that all apply a command at the same step)"
            )
            _warn(self.refused)
            return
        # A group of its own (gloo: CPU tensors, never the training device's stream), so that the asynchronous
        # announcements never interleave with the model's own collectives on the default group.
        self._group = dist.new_group(backend="gloo")

    def exchange(self, batch: list[tuple[str, str, dict[str, Any], Any]] | None) -> list[Any]:
        """Rank 0 passes the batch it just took, every other rank ``None``; each gets back the batch rank 0 took
        at the previous boundary, to apply now (collective).

        The announcement is pipelined: at each boundary rank 0 starts an asynchronous broadcast of the size of
        its new batch, which runs while the step computes and is waited for at the next boundary; only a
        non-empty batch costs a second, blocking broadcast of its bytes. A command therefore applies one
        optimizer step after rank 0 took it, at the same step on every rank. Rank 0 gets its own items back
        (with their reply addresses); other ranks get ``(id, name, args, None)``. When torch.distributed is not
        (or no longer) initialized, rank 0's batch is returned as is.
        """
        if self.off or not active():
            out, self._announced = (self._announced or []) + (batch or []), []
            return out
        import torch
        import torch.distributed as dist

        if not self._ready:
            self._setup()
            if self.off:
                return []
        rank = dist.get_rank()
        out: list[Any] = []
        if self._inflight is not None:
            work, header = self._inflight
            self._inflight = None
            work.wait()
            size = int(header.item())
            if size:
                buf = (
                    torch.frombuffer(bytearray(self._payload), dtype=torch.uint8)
                    if rank == 0
                    else torch.empty(size, dtype=torch.uint8)
                )
                dist.broadcast(buf, src=0, group=self._group)
                if rank == 0:
                    out = self._announced
                else:
                    out = [(i, n, a, None) for i, n, a in msgpack.unpackb(buf.numpy().tobytes(), raw=False)]
        items = batch or []
        self._announced = items
        self._payload = (
            msgpack.packb([[i, n, a] for i, n, a, _ in items], use_bin_type=True) if items else b""
        )
        header = (
            torch.tensor([len(self._payload)], dtype=torch.int64)
            if rank == 0
            else torch.zeros(1, dtype=torch.int64)
        )
        self._inflight = (dist.broadcast(header, src=0, group=self._group, async_op=True), header)
        self.broadcasts += 1
        return out

    def barrier(self) -> None:
        """Every rank waits here until all arrive (after rank 0 wrote a checkpoint)."""
        if self.off or not active():
            return
        import torch
        import torch.distributed as dist

        t = torch.zeros(1, dtype=torch.int64)
        dist.broadcast(t, src=0, group=self._group)
