"""The ``tuimon`` command.

``tuimon`` attaches to the newest live run (a picker when several are live); ``list``, ``attach``, ``replay``,
``tail``, ``export`` and ``demo`` do what their help says. Commands that print (``list``, ``tail``, ``export``) never
import Textual, so they start fast and work in scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tuimon_agent import discovery, protocol
from tuimon_agent.runfile import RunFileReader

from .diagnose import add_parser as diagnose_parser
from .runs import RunNotFound, list_runs, resolve
from .send import add_parser as send_parser
from .source import FileSource, LiveSource, SourceUpdate

DEMO_BUGS = (
    "none",
    "exploding",
    "vanishing",
    "nan",
    "overfit",
    "underfit",
    "plateau",
    "diverge",
    "dead-relu",
    "saturation",
    "unnormalized",
)


def _fail(message: str, code: int = 1) -> int:
    print(f"tuimon: {message}", file=sys.stderr)
    return code


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


# -- viewer commands -----------------------------------------------------------------------------------------------


def _run_app(**kwargs: Any) -> int:
    from .app import make_app  # Textual only for the commands that need it

    make_app(**kwargs).run()
    return 0


def cmd_default(args: argparse.Namespace) -> int:
    try:
        live = discovery.live_runs()
    except discovery.RuntimeDirError as exc:
        return _fail(str(exc))
    if not live:
        lines = ["no live tuimon run on this machine."]
        lines.append(
            "  start one: add `mon = tuimon_agent.watch(model, optimizer)` to a training script, or run `tuimon demo`"
        )
        recent = [e for e in list_runs() if e.state != "live" and e.run_file][:3]
        for e in recent:
            lines.append(f"  recent: {e.name} ({e.run_id})  →  tuimon replay {e.run_file}")
        return _fail("\n".join(lines))
    if len(live) == 1:
        return _run_app(source=LiveSource(live[0]))
    return _run_app(choices=live, make_source=LiveSource)


def cmd_attach(args: argparse.Namespace) -> int:
    try:
        target = resolve(args.run)
    except (RunNotFound, discovery.RuntimeDirError) as exc:
        return _fail(str(exc))
    if isinstance(target, Path):
        print(f"tuimon: {args.run} is not live; replaying its run file {target}", file=sys.stderr)
        return _run_app(source=FileSource(target, follow=True))
    return _run_app(source=LiveSource(target))


def cmd_replay(args: argparse.Namespace) -> int:
    path = Path(args.path)
    try:
        RunFileReader(path).close()
    except (OSError, ValueError) as exc:
        return _fail(str(exc))
    return _run_app(source=FileSource(path, follow=args.follow))


def _demo_env() -> dict[str, str]:
    """The environment for the demo's process: this one, with the directories this process imported ``tuimon`` and
    ``tuimon_agent`` from first on ``PYTHONPATH`` unless they are site-packages (so the same code runs there,
    installed or from a checkout, and no site-packages directory is put before the standard library)."""
    import site

    import tuimon
    import tuimon_agent

    env = os.environ.copy()
    sites = {str(Path(p).resolve()) for p in [*site.getsitepackages(), site.getusersitepackages()]}
    homes = [str(Path(m.__file__).resolve().parent.parent) for m in (tuimon, tuimon_agent) if m.__file__]
    paths = [p for p in homes if p not in sites]
    paths += [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import missing_requirements  # imports neither torch nor scikit-learn

    missing = missing_requirements()
    if missing:
        return _fail(missing)
    name = args.run or f"demo-{args.bug}"
    log_dir = Path(os.environ.get("TUIMON_DIR") or "tuimon-runs")
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    cmd = [
        sys.executable,
        "-m",
        "tuimon.demo.digits",
        "--bug",
        args.bug,
        "--steps",
        str(args.steps),
        "--pace",
        str(args.pace),
        "--run",
        name,
    ]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=_demo_env()
        )
    print(
        f"tuimon: started the demo (pid {proc.pid}, bug={args.bug}); its output goes to {log_path}",
        file=sys.stderr,
    )
    try:
        # The app opens at once and says what is going on while the demo imports torch and runs its sanity checks
        # (10-20 s on a slow machine), then attaches when the run appears.
        starting = (
            f"starting the demo (pid {proc.pid}, bug={args.bug}) … importing torch, running the sanity checks; "
            f"the first frame follows in a few seconds · output: {log_path}"
        )
        return _run_app(wait_for=(starting, lambda: find_started_run(proc, log_path)))
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)


def find_started_run(proc: subprocess.Popen[bytes], log_path: Path) -> discovery.ConnectionInfo | str | None:
    """The live run of a process this CLI started: its connection info once it is live, why it never will be
    (the process exited; with the end of its log), or ``None`` while it is still starting."""
    for info in discovery.live_runs(clean=False):
        if info.pid == proc.pid:
            return info
    code = proc.poll()
    if code is None:
        return None
    try:
        tail = log_path.read_text(errors="replace")[-600:].strip()
    except OSError as exc:
        tail = f"(its log {log_path} cannot be read: {exc})"
    return f"the demo exited (code {code}) before it started a run: {tail}"


# -- printing commands ---------------------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    try:
        entries = list_runs()
    except discovery.RuntimeDirError as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps([e.as_dict() for e in entries], indent=1))
        return 0
    if not entries:
        print("no runs: none live on this machine and none under ./tuimon-runs (or $TUIMON_DIR)")
        return 0
    rows = [("RUN ID", "NAME", "STATE", "PID", "STARTED", "RUN FILE")]
    rows += [
        (e.run_id, e.name, e.state, str(e.pid or "-"), _when(e.started), e.run_file or "-") for e in entries
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[5])
    return 0


def jsonable(value: Any) -> Any:
    """A record's payload as plain JSON (arrays as lists, NaN/Inf as strings)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return jsonable(value.tolist())
    if isinstance(value, bytes):
        return value.hex()
    return value


def _brief(value: Any, depth: int = 0) -> str:
    """A value for a ``tail`` line: arrays as ``float32[22x32]``, long lists and deep maps summarised."""
    if hasattr(value, "dtype") and hasattr(value, "shape"):
        return f"{value.dtype}[{'x'.join(str(n) for n in value.shape)}]"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        if len(value) > 8 or depth >= 2:
            return f"[{len(value)} items]"
        return "[" + ", ".join(_brief(v, depth + 1) for v in value) + "]"
    if isinstance(value, dict):
        if len(value) > 8 or depth >= 2:
            return f"{{{len(value)} keys}}"
        return "{" + ", ".join(f"{k}: {_brief(v, depth + 1)}" for k, v in value.items()) + "}"
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    text = str(value)
    return text if len(text) <= 120 else text[:119] + "…"


def format_record(rec: protocol.Record, *, as_json: bool, full: bool = False) -> str:
    """One line for ``tuimon tail``: every field with ``as_json``; otherwise one short line per record (arrays,
    long lists and nested maps summarised) unless ``full``."""
    if as_json:
        return json.dumps(
            {"seq": rec.seq, "kind": rec.kind, "step": rec.step, "ts": rec.ts, **jsonable(rec.data)}
        )
    head = f"{rec.seq:>7} {rec.kind:<8} step={rec.step if rec.step is not None else '-'}"
    if rec.kind in (protocol.METRICS, protocol.EVAL):
        body = " ".join(f"{k}={v:.6g}" for k, v in protocol.values_of(rec).items())
    elif rec.kind == protocol.HELLO:
        body = f"name={rec.data.get('name')} run_id={rec.data.get('run_id')} pid={rec.data.get('pid')}"
    elif full:
        body = " ".join(f"{k}={v}" for k, v in jsonable(rec.data).items())
    else:
        body = " ".join(f"{k}={_brief(v)}" for k, v in rec.data.items())
    return f"{head} {body}"


def _print_records(
    records: Iterable[protocol.Record], as_json: bool, kinds: frozenset[str] | None = None, full: bool = False
) -> None:
    for rec in records:
        if kinds is None or rec.kind in kinds:
            print(format_record(rec, as_json=as_json, full=full), flush=True)


def _kinds(args: argparse.Namespace) -> frozenset[str] | None:
    """``--kind metrics,alert`` as a set (``None``: every kind)."""
    spec = getattr(args, "kind", None)
    return frozenset(k.strip() for k in spec.split(",") if k.strip()) if spec else None


def cmd_tail(args: argparse.Namespace) -> int:
    try:
        target = resolve(args.run)
    except (RunNotFound, discovery.RuntimeDirError) as exc:
        return _fail(str(exc))
    if isinstance(target, Path):
        try:
            with RunFileReader(target) as reader:
                kinds = _kinds(args)
                if kinds is None:
                    first = max(0, reader.last_seq() - args.count)
                    _print_records(reader.records(first), args.json, full=args.full)
                else:  # the last COUNT records of these kinds
                    picked = collections.deque(
                        (r for r in reader.records() if r.kind in kinds), maxlen=max(args.count, 0)
                    )
                    _print_records(picked, args.json, full=args.full)
        except (OSError, ValueError) as exc:
            return _fail(str(exc))
        return 0
    return asyncio.run(_tail_live(target, args))


async def _tail_live(info: discovery.ConnectionInfo, args: argparse.Namespace) -> int:
    """History's last ``count`` records, then live ones as they come, until the run ends (or Ctrl-C)."""
    history: list[protocol.Record] = []
    state = {"live": False, "last": 0, "done": False}

    kinds = _kinds(args)

    def emit(update: SourceUpdate) -> None:
        fresh = [r for r in update.records if r.seq > state["last"] and r.kind != protocol.HEARTBEAT]
        if fresh:
            state["last"] = fresh[-1].seq
        if kinds is not None:
            fresh = [r for r in fresh if r.kind in kinds]
        if state["live"]:
            _print_records(fresh, args.json, full=args.full)
        else:
            history.extend(fresh)
            del history[: max(0, len(history) - args.count)]
        if update.status in ("live", "ended") and not state["live"]:
            state["live"] = True
            _print_records(history, args.json, full=args.full)
        if update.status == "ended":
            state["done"] = True

    source = LiveSource(info, follow_restarts=False)
    task = asyncio.ensure_future(source.run(emit))
    try:
        while not task.done() and not (state["done"] or (args.no_follow and state["live"])):
            await asyncio.sleep(0.05)
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    try:
        target = resolve(args.run)
    except (RunNotFound, discovery.RuntimeDirError) as exc:
        return _fail(str(exc))
    path = (
        Path(target.run_file) if isinstance(target, discovery.ConnectionInfo) and target.run_file else target
    )
    if not isinstance(path, Path):
        return _fail(f"{args.run} has no run file to export")
    out = open(args.output, "w", newline="") if args.output else sys.stdout  # noqa: SIM115 (closed below)
    try:
        with RunFileReader(path) as reader:
            if args.format == "jsonl":
                for rec in reader.records():
                    out.write(format_record(rec, as_json=True) + "\n")
            else:
                w = csv.writer(out)
                w.writerow(["seq", "kind", "step", "ts", "name", "value"])
                for rec in reader.records():
                    if rec.kind in (protocol.METRICS, protocol.EVAL):
                        for name, value in protocol.values_of(rec).items():
                            w.writerow([rec.seq, rec.kind, rec.step, f"{rec.ts:.6f}", name, repr(value)])
    except (OSError, ValueError) as exc:
        return _fail(str(exc))
    except BrokenPipeError:
        return 0
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def load_factory(spec: str) -> Any:
    """``path/to/script.py:NAME`` or ``package.module:NAME`` → the object called NAME there.

    Raises:
        ValueError: The spec is malformed, the file or module cannot be loaded, or NAME is not there.
    """
    import importlib
    import importlib.util

    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name.isidentifier():
        raise ValueError(f"invalid factory {spec!r}: expected SCRIPT.py:FACTORY or package.module:FACTORY")
    try:
        if target.endswith(".py") or os.sep in target:
            path = Path(target)
            if not path.is_file():
                raise ValueError(f"no such script: {target}")
            module_spec = importlib.util.spec_from_file_location(f"tuimon_check_{path.stem}", path)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_spec.name] = module  # dataclasses and pickling look a module up there
            sys.path.insert(0, str(path.resolve().parent))
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"cannot load {target}: {type(exc).__name__}: {exc}") from None
    if not hasattr(module, name):
        raise ValueError(f"{target} has no {name!r}")
    return getattr(module, name)


def cmd_check(args: argparse.Namespace) -> int:
    try:
        factory = load_factory(args.factory)
        made = factory()
    except ValueError as exc:
        return _fail(str(exc), 2)
    except Exception as exc:
        return _fail(f"{args.factory}() raised {type(exc).__name__}: {exc}", 2)
    if isinstance(made, (tuple, list)) and len(made) == 3:
        made = {"model": made[0], "batch": made[1], "loss_fn": made[2]}
    if not isinstance(made, dict) or not {"model", "batch", "loss_fn"} <= made.keys():
        return _fail(
            f"{args.factory}() must return (model, (inputs, targets), loss_fn) or a dict with model, batch, loss_fn "
            f"(and optionally batches, val, num_classes, optimizer_factory); got {type(made).__name__}",
            2,
        )
    from tuimon_agent.checks.suite import report, run_checks

    options = {k: made[k] for k in ("batches", "val", "num_classes", "optimizer_factory") if k in made}
    if args.checks:
        options["checks"] = [c.strip() for c in args.checks.split(",") if c.strip()]
    try:
        results = run_checks(made["model"], made["batch"], made["loss_fn"], **options)
    except ValueError as exc:
        return _fail(str(exc), 2)
    if args.json:
        print(json.dumps([jsonable(r.to_data()) for r in results], indent=1))
    else:
        print(report(results))
    return 0 if all(r.ok for r in results) else 1


def versions() -> dict[str, str]:
    """The installed versions of both distributions (``tuimon --version``), from their package metadata.

    A package imported from a checkout that is not installed reports its ``__version__`` and says so.
    """
    from importlib import metadata

    import tuimon
    import tuimon_agent

    out = {}
    for dist, module in (("tuimon", tuimon), ("tuimon-agent", tuimon_agent)):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = (
                f"{module.__version__} (not installed: imported from {Path(module.__file__ or '').parent})"
            )
    return out


class _VersionAction(argparse.Action):
    """``--version``: looks the versions up only when asked."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print("\n".join(f"{dist} {version}" for dist, version in versions().items()))
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``tuimon --help``)."""
    p = argparse.ArgumentParser(
        prog="tuimon",
        description="Live, per-layer diagnosis of PyTorch training in the terminal. "
        "With no command: attach to the newest live run on this machine.",
    )
    p.add_argument(
        "--version", action=_VersionAction, help="print the versions of tuimon and tuimon-agent and exit"
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    s = sub.add_parser("list", help="live and recent runs")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_list)
    s = sub.add_parser("attach", help="open a run by id, name, connection file or endpoint")
    s.add_argument("run", metavar="RUN")
    s.set_defaults(func=cmd_attach)
    s = sub.add_parser("replay", help="open a run file (a finished run's full history)")
    s.add_argument("path", metavar="PATH", help="a run.sqlite file or its run directory")
    s.add_argument("--follow", action="store_true", help="keep reading records the run adds to the file")
    s.set_defaults(func=cmd_replay)
    s = sub.add_parser(
        "tail", help="print records as lines (last COUNT, then live ones while the run is live)"
    )
    s.add_argument("run", metavar="RUN")
    s.add_argument("--json", action="store_true", help="one JSON object per line")
    s.add_argument("--count", "-n", type=int, default=20, help="how many past records to print (default 20)")
    s.add_argument("--no-follow", action="store_true", help="stop after the past records")
    s.add_argument(
        "--kind",
        metavar="KINDS",
        help="only these record kinds, comma-separated (e.g. metrics,eval,alert; see `tuimon export --format jsonl`)",
    )
    s.add_argument(
        "--full",
        action="store_true",
        help="print arrays and long lists in full (default: summarised, one short line)",
    )
    s.set_defaults(func=cmd_tail)
    s = sub.add_parser("export", help="everything in a run file as CSV (scalars) or JSON lines (all records)")
    s.add_argument("run", metavar="RUN")
    s.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    s.add_argument("--output", "-o", metavar="FILE", help="write here instead of stdout")
    s.set_defaults(func=cmd_export)
    s = sub.add_parser(
        "check",
        help="run the sanity checks on a model factory and print a report (exit 1 if any check fails)",
        description="FACTORY is SCRIPT.py:NAME or package.module:NAME; NAME() returns (model, (inputs, targets), "
        "loss_fn) or a dict with model, batch, loss_fn and optionally batches, val, num_classes, optimizer_factory.",
    )
    s.add_argument("factory", metavar="SCRIPT_OR_MODULE:FACTORY")
    s.add_argument("--checks", help="comma-separated subset, in order (default: all)")
    s.add_argument("--json", action="store_true", help="print the results as JSON")
    s.set_defaults(func=cmd_check)
    send_parser(sub)
    diagnose_parser(sub)
    s = sub.add_parser(
        "demo",
        help="train the demo CNN in a subprocess and watch it (needs the demo extra: pip install 'tuimon[demo]')",
    )
    s.add_argument("--bug", choices=DEMO_BUGS, default="none", help="inject one pathology (default none)")
    s.add_argument("--steps", type=int, default=12000, help="optimizer steps (default 12000: 10 minutes)")
    s.add_argument("--pace", type=float, default=0.05, help="seconds per step (0: full speed; default 0.05)")
    s.add_argument("--run", help="run name (default demo-BUG)")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tuimon`` command."""
    args = build_parser().parse_args(argv)
    func = getattr(args, "func", cmd_default)
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `tuimon list --json | head`: the reader went away. Point stdout at devnull so that the interpreter's
        # final flush does not raise again, and end quietly as other Unix tools do.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
