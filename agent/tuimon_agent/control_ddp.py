"""Live commands under torch.distributed: every rank applies rank 0's commands at the same optimizer step.

Only rank 0 has sockets and takes commands. At every optimizer step boundary each rank's controller calls
:meth:`DistSync.exchange`: rank 0 broadcasts the (usually empty) batch it took from its queue on a gloo group (the
default group when it is gloo, else one created here with ``dist.new_group(backend="gloo")``), so the same commands
are applied on every rank before the same ``optimizer.step()``. An empty batch costs one broadcast of one int64;
a batch costs a second broadcast of its msgpack bytes. While paused, rank 0 broadcasts every
``control.PAUSE_POLL`` seconds, so no rank sits in a collective long enough to trip its timeout.
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
        if dist.get_backend() != "gloo":
            # CPU tensors on gloo: the exchange never touches the training device's stream.
            self._group = dist.new_group(backend="gloo")

    def exchange(self, batch: list[tuple[str, str, dict[str, Any], Any]] | None) -> list[Any]:
        """Rank 0 passes its batch, every other rank ``None``; each gets rank 0's batch back.

        Rank 0 gets its own items (with their reply addresses); other ranks get ``(id, name, args, None)``.
        When torch.distributed is not (or no longer) initialized, rank 0's batch is returned as is.
        """
        if self.off or not active():
            return batch or []
        import torch
        import torch.distributed as dist

        if not self._ready:
            self._setup()
            if self.off:
                return []
        rank = dist.get_rank()
        if rank == 0:
            items = batch or []
            payload = msgpack.packb([[i, n, a] for i, n, a, _ in items], use_bin_type=True) if items else b""
            header = torch.tensor([len(payload)], dtype=torch.int64)
        else:
            header = torch.zeros(1, dtype=torch.int64)
        dist.broadcast(header, src=0, group=self._group)
        self.broadcasts += 1
        size = int(header.item())
        if size == 0:
            return (batch or []) if rank == 0 else []
        buf = (
            torch.frombuffer(bytearray(payload), dtype=torch.uint8)
            if rank == 0
            else torch.empty(size, dtype=torch.uint8)
        )
        dist.broadcast(buf, src=0, group=self._group)
        if rank == 0:
            return items
        return [(i, n, a, None) for i, n, a in msgpack.unpackb(buf.numpy().tobytes(), raw=False)]

    def barrier(self) -> None:
        """Every rank waits here until all arrive (after rank 0 wrote a checkpoint)."""
        if self.off or not active():
            return
        import torch
        import torch.distributed as dist

        t = torch.zeros(1, dtype=torch.int64)
        dist.broadcast(t, src=0, group=self._group)
