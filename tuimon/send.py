"""``tuimon send RUN COMMAND [VALUE | key=value ...]``: one live command from a script, and its ack.

Examples::

    tuimon send digits set-lr 3e-4          # absolute
    tuimon send digits set-lr x0.5          # scale (also /10)
    tuimon send digits set-clip 1.0         # or: set-clip off
    tuimon send digits set-wd 0.01 --group 1
    tuimon send digits pause | resume | checkpoint
    tuimon send digits stop --reason "diverged"
    tuimon send digits my_command k=2 flag=true

Prints the ack (``applied at step 1234: lr 0.001 → 0.0003``) and exits 0 once the training thread has applied the
command. ``set-lr`` and ``stop`` then wait (``--follow-up`` seconds at most) for the agent's word on whether the
change lasted: a ``set-lr`` the loop overwrote at the next step, or a ``stop`` the loop ignored (still stepping
:data:`tuimon_agent.control.STOP_IGNORED_AFTER` steps later), exits 1 with the reason and the fix
(``mon.lr_scale``; ``stop --force``). ``stop --force`` sends ``interrupt``: ``KeyboardInterrupt`` in the training
thread at the next step boundary (``--checkpoint`` saves one first). Exits 1 when the agent rejects it (the reason
on stderr) or it is not applied within ``--timeout``; 2 when the command or its value is invalid before sending, or
the run cannot take commands (not live, its connection file is not readable by this user, or its hello says it
takes none: answered at once with the reason). Never imports Textual.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

from tuimon_agent import commands, discovery, protocol
from tuimon_agent.runfile import RunFileReader

from .control import CommandClient, ReadOnly, describe, parse_command
from .runs import RunNotFound, resolve

DEFAULT_TIMEOUT = 30.0
"""Seconds ``tuimon send`` waits for the applied ack by default."""
DEFAULT_FOLLOW_UP = 10.0
"""Seconds ``tuimon send`` waits after ``applied`` for the follow-up (did a ``set-lr`` hold, did the loop leave
after ``stop``)."""


def _fail(message: str, code: int) -> int:
    print(f"tuimon send: {message}", file=sys.stderr)
    return code


def custom_specs(info: discovery.ConnectionInfo) -> dict[str, commands.CommandSpec]:
    """The run's custom commands, from the hello and the ``commands`` records of its run file (empty when the file
    cannot be read: arguments are then typed as they read)."""
    if not info.run_file:
        return {}
    specs: dict[str, commands.CommandSpec] = {}
    try:
        with RunFileReader(info.run_file) as reader:
            hello = reader.meta.get("hello")
        if isinstance(hello, dict):
            specs.update(commands.specs_from_data(hello.get("commands")))
        db = sqlite3.connect(f"file:{info.run_file}?mode=ro", uri=True, timeout=1.0)
        try:
            rows = db.execute("SELECT body FROM records WHERE kind = 'commands' ORDER BY seq").fetchall()
        finally:
            db.close()
    except (OSError, ValueError, sqlite3.Error):
        return specs
    for (body,) in rows:
        try:
            specs.update(commands.specs_from_data(protocol.decode(body).data.get("commands")))
        except protocol.ProtocolError:
            continue
    return specs


def no_commands_reason(info: discovery.ConnectionInfo) -> str | None:
    """Why the run takes no commands, from its hello (run file), or ``None`` when it takes them or the hello
    cannot be read (the agent then answers the command itself).

    A hello with ``commands_unavailable`` gives that reason; a hello without ``commands`` (no optimizer was
    watched) says so.
    """
    if not info.run_file:
        return None
    try:
        with RunFileReader(info.run_file) as reader:
            hello = reader.meta.get("hello")
    except (OSError, ValueError, sqlite3.Error):
        return None
    if not isinstance(hello, dict):
        return None
    why = hello.get("commands_unavailable")
    if isinstance(why, str) and why:
        return f"this run takes no commands: {why}"
    if "commands" not in hello:
        return "this run takes no commands: it was watched without an optimizer (watch(model, optimizer) takes them)"
    return None


def add_parser(sub: Any) -> None:
    """Register ``send`` on the ``tuimon`` command's subparsers."""
    s = sub.add_parser(
        "send",
        help="send a live command to a run (set-lr, set-clip, set-wd, pause, resume, checkpoint, stop, custom)",
        description="Send one signed command to a live run and print its ack. COMMAND is set-lr VALUE (3e-4, x0.5, "
        "/10), set-clip VALUE|off, set-wd VALUE, pause, resume, checkpoint, stop, or a custom command with "
        "key=value arguments. Exit 0: applied; 1: rejected or not applied in time; 2: invalid, or not a live run "
        "you can command.",
    )
    s.add_argument("run", metavar="RUN", help="run id (or unique prefix), name or connection file")
    s.add_argument("name", metavar="COMMAND")
    s.add_argument("values", metavar="VALUE", nargs="*", help="the value, or key=value arguments")
    s.add_argument("--group", type=int, help="param group (set-lr, set-wd; default every group)")
    s.add_argument("--reason", help="stop: why (recorded in the run file)")
    s.add_argument(
        "--force",
        action="store_true",
        help="stop: send interrupt, which raises KeyboardInterrupt in the training thread at the next step "
        "(for a loop that ignores mon.should_stop)",
    )
    s.add_argument(
        "--checkpoint", action="store_true", help="stop --force / interrupt: save a checkpoint first"
    )
    s.add_argument(
        "--follow-up",
        type=float,
        default=DEFAULT_FOLLOW_UP,
        help="set-lr, stop: seconds to wait after applied for whether it lasted "
        f"(default {DEFAULT_FOLLOW_UP:g}; 0: do not wait)",
    )
    s.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds to wait for the ack (default {DEFAULT_TIMEOUT:g})",
    )
    s.add_argument("--json", action="store_true", help="print the final state as JSON")
    s.set_defaults(func=cmd_send)


def cmd_send(args: argparse.Namespace) -> int:
    """Run ``tuimon send``; returns the exit code."""
    try:
        target = resolve(args.run)
    except (RunNotFound, discovery.RuntimeDirError) as exc:
        return _fail(str(exc), 2)
    if isinstance(target, Path):
        return _fail(f"{args.run} is not live (its run file is {target}): commands go to live runs only", 2)
    if not target.alive():
        return _fail(f"{args.run} is not live: its process (pid {target.pid}) is gone", 2)
    why = no_commands_reason(target)
    if why is not None:
        return _fail(why, 2)
    name = args.name
    if args.force or args.checkpoint:
        if name not in ("stop", "interrupt"):
            return _fail(f"--force and --checkpoint go with stop (or interrupt), not {name}", 2)
        name = "interrupt"
    values = list(args.values)
    if name == "interrupt" and args.checkpoint:
        values.append("checkpoint=true")
    try:
        req = parse_command(name, values, group=args.group, reason=args.reason, specs=custom_specs(target))
    except ValueError as exc:
        return _fail(str(exc), 2)
    try:
        return asyncio.run(_send(target, req, args))
    except ReadOnly as exc:
        return _fail(str(exc), 2)


async def _send(info: discovery.ConnectionInfo, req: Any, args: argparse.Namespace) -> int:
    client = CommandClient(info, timeout=min(args.timeout, 5.0))
    try:
        cmd = client.submit(req)
        await client.wait(cmd, until=("applied", "rejected"), timeout=args.timeout)
        if cmd.follow_up == "pending" and args.follow_up > 0:
            await client.wait_follow_up(cmd, timeout=args.follow_up)
    finally:
        client.close()
    if args.json:
        print(
            json.dumps(
                {
                    "id": cmd.id,
                    "name": cmd.name,
                    "args": cmd.args,
                    "status": cmd.status,
                    "step": cmd.step,
                    "old": cmd.old,
                    "new": cmd.new,
                    "reason": cmd.reason,
                    "follow_up": cmd.follow_up,
                    "note": cmd.note,
                }
            )
        )
    if cmd.status == "applied":
        if not args.json:
            print(describe(cmd))
        return 0
    if cmd.status == "queued":
        return _fail(
            f"{cmd.label} queued but not applied within {args.timeout:g} s "
            "(the training loop may be slow, paused or stuck; it will still apply it at its next step)",
            1,
        )
    return _fail(describe(cmd), 1)
