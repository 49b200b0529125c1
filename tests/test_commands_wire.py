"""The pure wire part of live commands: signing, verification, validation (tuimon_agent.commands)."""

from __future__ import annotations

import hashlib
import hmac
import math

import msgpack
import pytest

from tuimon_agent import commands, discovery, protocol
from tuimon_agent.commands import CommandRejected, make_command, sign, validate, verify

KEY = bytes.fromhex("11" * 32)


def test_signature_matches_the_documented_framing() -> None:
    """An independent implementation of the spec's framing gives the same HMAC (a fixed vector)."""
    fields = {"id": "abc", "name": "set_lr", "args": {"value": 0.001}, "sender": "s", "seq": 3, "ts": 1.5}
    framed = b""
    for name in sorted(fields):
        v = msgpack.packb(fields[name], use_bin_type=True)
        framed += len(name).to_bytes(8, "big") + name.encode() + len(v).to_bytes(8, "big") + v
    want = hmac.new(KEY, framed, hashlib.sha256).hexdigest()
    assert sign(KEY, fields) == want
    assert sign(KEY, {**fields, "sig": "whatever"}) == want  # sig itself is never signed


def test_signature_ignores_map_insertion_order() -> None:
    a = {"value": 0.5, "group": 1}
    b = {"group": 1, "value": 0.5}
    base = {"id": "x", "name": "set_lr", "sender": "s", "seq": 1, "ts": 2.0}
    assert sign(KEY, {**base, "args": a}) == sign(KEY, {**base, "args": b})


def test_make_command_verifies_and_survives_the_wire() -> None:
    cmd = make_command(KEY, "set_lr", {"value": 3e-4}, sender="viewer-1", seq=7)
    assert set(cmd) == set(commands.FIELDS)
    assert len(cmd["id"]) == 32 and cmd["seq"] == 7 and cmd["sender"] == "viewer-1"
    assert verify(KEY, cmd)
    rec = protocol.decode(protocol.encode_request("command", **cmd))
    assert rec.kind == "command"
    assert verify(KEY, commands.command_fields(rec.data))


@pytest.mark.parametrize(
    ("field", "new"),
    [
        ("id", "0" * 32),
        ("name", "set_clip"),
        ("args", {"value": 3.0001e-4}),
        ("args", {"value": 3e-4, "group": 0}),
        ("sender", "viewer-2"),
        ("seq", 8),
        ("ts", 0.0),
    ],
)
def test_changing_any_field_breaks_the_signature(field: str, new: object) -> None:
    cmd = make_command(KEY, "set_lr", {"value": 3e-4}, sender="viewer-1", seq=7)
    assert not verify(KEY, {**cmd, field: new})


def test_flipping_any_byte_of_the_framed_fields_changes_the_signature() -> None:
    cmd = make_command(KEY, "set_lr", {"value": 3e-4}, sender="viewer-1", seq=7)
    framed = commands.signing_bytes(cmd)
    good = hmac.new(KEY, framed, hashlib.sha256).hexdigest()
    for i in range(len(framed)):
        flipped = bytearray(framed)
        flipped[i] ^= 0x01
        assert hmac.new(KEY, bytes(flipped), hashlib.sha256).hexdigest() != good


def test_tampered_signature_byte_and_wrong_key_are_rejected() -> None:
    cmd = make_command(KEY, "pause", {}, sender="v", seq=1)
    for i in range(0, 64, 7):
        c = "0" if cmd["sig"][i] != "0" else "1"
        assert not verify(KEY, {**cmd, "sig": cmd["sig"][:i] + c + cmd["sig"][i + 1 :]})
    assert not verify(bytes.fromhex("22" * 32), cmd)
    assert not verify(KEY, {k: v for k, v in cmd.items() if k != "sig"})
    assert not verify(KEY, {**cmd, "sig": None})
    assert not verify(b"", cmd)


def test_framing_prevents_field_boundary_ambiguity() -> None:
    """Moving characters from one field into its neighbour gives a different signature."""
    a = {"name": "ab", "sender": "c", "id": "i", "args": {}, "seq": 1, "ts": 1.0}
    b = {"name": "a", "sender": "bc", "id": "i", "args": {}, "seq": 1, "ts": 1.0}
    assert sign(KEY, a) != sign(KEY, b)
    # a field name that swallows the start of the next one
    assert commands.signing_bytes({"ab": "c"}) != commands.signing_bytes({"a": "bc"})
    assert sign(KEY, {"ab": "c"}) != sign(KEY, {"a": "bc"})
    # an extra field cannot be smuggled in without changing the signature
    assert sign(KEY, a) != sign(KEY, {**a, "extra": ""})


def test_decode_key_reads_the_connection_file_key() -> None:
    k = discovery.new_key()
    assert commands.decode_key(k) == bytes.fromhex(k) and len(commands.decode_key(k)) == 32
    with pytest.raises(ValueError, match="no signing key"):
        commands.decode_key("")
    with pytest.raises(ValueError, match="not hex"):
        commands.decode_key("zz")


def test_validate_normalizes_builtins() -> None:
    assert validate("set_lr", {"value": 1}) == {"value": 1.0}
    assert isinstance(validate("set_lr", {"value": 1})["value"], float)
    assert validate("set_lr", {"scale": 0.5, "group": 1}, groups=2) == {"scale": 0.5, "group": 1}
    assert validate("set_clip", {"max_norm": None}) == {"max_norm": None}
    assert validate("set_clip", {"max_norm": 1.0}) == {"max_norm": 1.0}
    assert validate("set_weight_decay", {"value": 0}) == {"value": 0.0}
    assert validate("pause", {}) == {}
    assert validate("stop", {"reason": "diverged"}) == {"reason": "diverged"}


@pytest.mark.parametrize(
    ("name", "args", "kind", "text"),
    [
        ("set_lr", {"value": math.nan}, "invalid", "value=nan"),
        ("set_lr", {"value": math.inf}, "invalid", "value=inf"),
        ("set_lr", {"value": -1e-3}, "invalid", "value=-0.001"),
        ("set_lr", {"value": 0.0}, "invalid", "> 0"),
        ("set_lr", {"value": 100.0}, "invalid", "<= 10"),
        ("set_lr", {"value": "0.1"}, "invalid", "value='0.1'"),
        ("set_lr", {"value": True}, "invalid", "value=True"),
        ("set_lr", {}, "invalid", "exactly one of value, scale"),
        ("set_lr", {"value": 0.1, "scale": 2.0}, "invalid", "exactly one of value, scale"),
        ("set_lr", {"value": 0.1, "group": 5}, "unknown", "group=5"),
        ("set_lr", {"value": 0.1, "group": -1}, "invalid", "group=-1"),
        ("set_lr", {"value": 0.1, "group": 0.0}, "invalid", "group=0.0"),
        ("set_lr", {"value": 0.1, "momentum": 0.9}, "invalid", "unknown argument 'momentum'"),
        ("set_clip", {}, "invalid", "missing argument 'max_norm'"),
        ("set_clip", {"max_norm": -1.0}, "invalid", "max_norm=-1.0"),
        ("set_weight_decay", {"value": None}, "invalid", "value=None"),
        ("pause", {"x": 1}, "invalid", "unknown argument 'x'"),
        ("stop", {"reason": "x" * 5000}, "invalid", "reason="),
        ("rm_rf", {}, "unknown", "unknown command 'rm_rf'"),
        ("set_lr", [0.1], "invalid", "args must be a map"),
    ],
)
def test_validate_rejects_with_the_bad_value(name: str, args: object, kind: str, text: str) -> None:
    with pytest.raises(CommandRejected) as err:
        validate(name, args, groups=2)
    assert err.value.kind == kind
    assert text in str(err.value)


def test_custom_specs_round_trip_and_validate() -> None:
    spec = commands.CommandSpec(
        "set_dropout",
        (commands.ArgSpec("p", "float", min=0, max=1), commands.ArgSpec("verbose", "bool", required=False)),
        builtin=False,
    )
    back = commands.specs_from_data([spec.to_data(), {"garbage": 1}, "x"])
    assert list(back) == ["set_dropout"] and back["set_dropout"] == spec
    table = {**commands.COMMANDS, **back}
    assert validate("set_dropout", {"p": 0.2}, specs=table) == {"p": 0.2}
    with pytest.raises(CommandRejected, match="p=1.5"):
        validate("set_dropout", {"p": 1.5}, specs=table)
    with pytest.raises(CommandRejected, match="verbose=1"):
        validate("set_dropout", {"p": 0.1, "verbose": 1}, specs=table)
    with pytest.raises(CommandRejected, match="unknown command"):
        validate("set_dropout", {"p": 0.1})  # not a built-in


def test_check_fields_names_the_bad_field() -> None:
    cmd = make_command(KEY, "pause", {}, sender="v", seq=1)
    commands.check_fields(cmd)
    with pytest.raises(CommandRejected, match="signature") as err:
        commands.check_fields({k: v for k, v in cmd.items() if k != "sig"})
    assert err.value.kind == "signature"
    with pytest.raises(CommandRejected, match="seq=-1"):
        commands.check_fields({**cmd, "seq": -1})
    with pytest.raises(CommandRejected, match="'sender' is missing"):
        commands.check_fields({k: v for k, v in cmd.items() if k != "sender"})
    with pytest.raises(CommandRejected, match="ts=nan"):
        commands.check_fields({**cmd, "ts": math.nan})


def test_parse_arg_converts_typed_text() -> None:
    lr = commands.COMMANDS["set_lr"].arg("value")
    clip = commands.COMMANDS["set_clip"].arg("max_norm")
    assert lr is not None and clip is not None
    assert commands.parse_arg(lr, "3e-4") == 3e-4
    assert commands.parse_arg(clip, "off") is None
    with pytest.raises(ValueError, match="value='abc' is not a number"):
        commands.parse_arg(lr, "abc")
