"""The wire protocol: every kind round-trips, and bad input is a ProtocolError, never a crash."""

from __future__ import annotations

import random

import msgpack
import numpy as np
import pytest

from tuimon_agent import protocol
from tuimon_agent.protocol import ProtocolError, Record

ALL = [
    Record(
        protocol.HELLO, 1, None, 1.5, {"run_id": "r", "name": "n", "model": {"params": [{"shape": [3, 4]}]}}
    ),
    Record(protocol.METRICS, 2, 1, 2.0, {"values": {"loss": 2.5, "acc": 1.0, "opt/lr": 0.001}}),
    Record(protocol.EVAL, 3, 1, 2.0, {"values": {"val_loss": 3.0}}),
    Record(protocol.EVENT, 4, None, 2.0, {"what": "persistence_off", "message": "disk full"}),
    Record(protocol.END, 5, 10, 3.0, {"reason": "closed", "dropped": 0, "steps": 10}),
    Record(protocol.HEARTBEAT, 5, 10, 3.0, {"dropped": 0, "queued": 0}),
    Record(protocol.SNAPSHOT_REQ, 0, None, 3.0, {"after": 4, "limit": 100}),
    Record(protocol.SNAPSHOT, 0, None, 3.0, {"records": [b"\x01\x02"], "last_seq": 5, "more": False}),
    Record(protocol.ERROR, 0, None, 3.0, {"message": "bad request"}),
]


@pytest.mark.parametrize("rec", ALL, ids=lambda r: r.kind)
def test_every_kind_round_trips(rec: Record) -> None:
    assert protocol.decode(protocol.encode(rec)) == rec


def test_floats_stay_floats_and_ints_stay_ints() -> None:
    rec = protocol.decode(
        protocol.encode(Record(protocol.METRICS, 1, 7, 1.0, {"values": {"a": 1.0, "b": 2}}))
    )
    assert type(rec.data["values"]["a"]) is float
    assert type(rec.data["values"]["b"]) is int
    assert type(rec.ts) is float
    assert protocol.values_of(rec) == {"a": 1.0, "b": 2.0}


def test_nonfinite_values_survive() -> None:
    rec = protocol.decode(
        protocol.encode(
            Record(protocol.METRICS, 1, 1, 0.0, {"values": {"a": float("nan"), "b": float("inf")}})
        )
    )
    assert np.isnan(rec.data["values"]["a"]) and rec.data["values"]["b"] == float("inf")


@pytest.mark.parametrize("dtype", ["<f4", "<f8", "<i8", "|u1", ">f4"])
def test_arrays_travel_as_raw_bytes(dtype: str) -> None:
    arr = np.arange(12).reshape(3, 4).astype(dtype)
    rec = protocol.decode(protocol.encode(Record(protocol.METRICS, 1, 1, 0.0, {"hist": arr})))
    out = rec.data["hist"]
    assert isinstance(out, np.ndarray) and out.shape == (3, 4)
    np.testing.assert_array_equal(out, arr)
    assert out.dtype.byteorder in ("<", "=", "|")


def test_unknown_kinds_and_fields_decode_for_the_reader_to_ignore() -> None:
    body = msgpack.packb(
        {"v": protocol.PROTOCOL_VERSION, "k": "from_the_future", "q": 3, "s": 1, "t": 0.0, "d": {}, "x": 1}
    )
    rec = protocol.decode(body)
    assert rec.kind == "from_the_future" and rec.seq == 3


def test_wrong_version_is_rejected_with_the_version_in_the_message() -> None:
    body = msgpack.packb({"v": 99, "k": "metrics", "q": 1, "s": 1, "t": 0.0, "d": {}})
    with pytest.raises(ProtocolError, match="version 99"):
        protocol.decode(body)


def test_every_truncation_is_a_protocol_error() -> None:
    body = protocol.encode(ALL[0])
    for n in range(len(body)):
        with pytest.raises(ProtocolError):
            protocol.decode(body[:n])


def test_oversized_is_rejected_before_unpacking() -> None:
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        protocol.decode(b"\x00" * (protocol.MAX_MESSAGE_BYTES + 1))


@pytest.mark.parametrize(
    "obj",
    [
        [1, 2, 3],
        {"v": 1, "k": "", "q": 1},
        {"v": 1, "k": "metrics", "q": -1},
        {"v": 1, "k": "metrics", "q": "1"},
        {"v": 1, "k": "metrics", "q": 1, "s": "x"},
        {"v": 1, "k": "metrics", "q": 1, "t": "now"},
        {"v": 1, "k": "metrics", "q": 1, "d": [1]},
        {1: 2},
    ],
)
def test_malformed_structures(obj: object) -> None:
    with pytest.raises(ProtocolError):
        protocol.decode(msgpack.packb(obj))


def test_lying_array_extension_is_rejected() -> None:
    payload = msgpack.packb(["<f8", [1000, 1000], b"\x00" * 8], use_bin_type=True)
    body = msgpack.packb(
        {"v": 1, "k": "metrics", "q": 1, "d": {"a": msgpack.ExtType(1, payload)}}, use_bin_type=True
    )
    with pytest.raises(ProtocolError, match="needs 8000000 bytes"):
        protocol.decode(body)


def test_random_garbage_never_raises_anything_else() -> None:
    rng = random.Random(0)
    valid = [protocol.encode(r) for r in ALL]
    for i in range(3000):
        if i % 2:
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        else:
            b = bytearray(rng.choice(valid))
            for _ in range(rng.randrange(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            body = bytes(b)
        try:
            protocol.decode(body)
        except ProtocolError:
            pass


def test_non_bytes_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        protocol.decode("text")  # type: ignore[arg-type]
