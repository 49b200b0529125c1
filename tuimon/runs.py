"""Finding runs: live ones through their connection files, finished ones through their run files."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuimon_agent import discovery
from tuimon_agent.runfile import RunFileReader


class RunNotFound(LookupError):
    """No run matches what the user named."""


@dataclass
class RunEntry:
    """One row of ``tuimon list``."""

    run_id: str
    name: str
    state: str
    pid: int
    started: float
    run_file: str | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "run_id": self.run_id,
            "name": self.name,
            "state": self.state,
            "pid": self.pid,
            "started": self.started,
            "run_file": self.run_file,
        }


def runs_dirs() -> list[Path]:
    """Directories that hold run directories: ``$TUIMON_DIR`` and ``./tuimon-runs``."""
    dirs = [Path(os.environ["TUIMON_DIR"])] if os.environ.get("TUIMON_DIR") else []
    dirs.append(Path("tuimon-runs"))
    return dirs


def list_runs() -> list[RunEntry]:
    """Live runs first (newest first), then recent and on-disk runs, each run once."""
    entries: dict[str, RunEntry] = {}
    for info in discovery.live_runs():
        entries[info.run_id] = RunEntry(info.run_id, info.name, "live", info.pid, info.started, info.run_file)
    for r in discovery.recent_runs():
        if r["run_id"] not in entries:
            entries[r["run_id"]] = RunEntry(
                r["run_id"],
                r.get("name", ""),
                r.get("state", "ended"),
                int(r.get("pid", 0)),
                float(r.get("started", 0.0)),
                r.get("run_file"),
            )
    for d in runs_dirs():
        for f in sorted(d.glob("*/run.sqlite")):
            run_id = f.parent.name
            if run_id in entries:
                continue
            entries[run_id] = RunEntry(run_id, _name_of(f), "ended", 0, f.stat().st_mtime, str(f.resolve()))
    live = [e for e in entries.values() if e.state == "live"]
    rest = sorted((e for e in entries.values() if e.state != "live"), key=lambda e: e.started, reverse=True)
    return live + rest


def _name_of(path: Path) -> str:
    try:
        with RunFileReader(path) as r:
            return str(r.meta.get("name", ""))
    except (OSError, ValueError):
        return "?"


def resolve(spec: str) -> discovery.ConnectionInfo | Path:
    """What a user named: a live run (by id, name, connection file or endpoint) or a run file.

    Args:
        spec: A run id, a run name, a connection file, ``tcp://HOST:PORT`` (the PUB port; ROUTER is PORT+1), or a
            run file / run directory.

    Returns:
        The live run's connection info, or the run file's path when the run is not live.

    Raises:
        RunNotFound: Nothing matches, with a message that says what was tried.
    """
    if spec.startswith(("tcp://", "ipc://")):
        return _endpoint_info(spec)
    p = Path(spec)
    try:
        if p.suffix == ".json" and p.is_file():
            try:
                return discovery.ConnectionInfo.load(p)
            except (OSError, ValueError) as exc:
                raise RunNotFound(str(exc)) from None
        if p.is_file() or (p.is_dir() and (p / "run.sqlite").is_file()):
            return p if p.is_file() else p / "run.sqlite"
    except OSError:  # e.g. a name longer than the file system allows: not a path, maybe a run's name
        pass
    live = discovery.live_runs()
    for info in live:
        if spec == info.run_id:
            return info
    for matches, what in (
        ([info for info in live if info.name == spec], "live runs are called"),
        ([info for info in live if info.run_id.startswith(spec)], "live run ids start with"),
    ):
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            ids = ", ".join(f"{m.run_id} (pid {m.pid})" for m in matches)
            raise RunNotFound(f"{spec!r} is ambiguous: {len(matches)} {what} that: {ids}; name one by its id")
    for e in list_runs():
        if spec in (e.run_id, e.name) and e.run_file and Path(e.run_file).is_file():
            return Path(e.run_file)
    raise RunNotFound(
        f"no run matches {spec!r}: not a live run's id or name, a connection file, an endpoint or a run file "
        "(see `tuimon list`)"
    )


def _endpoint_info(spec: str) -> discovery.ConnectionInfo:
    with contextlib.suppress(OSError, discovery.RuntimeDirError):  # one of this user's runs: with its key
        for info in discovery.live_runs():
            if spec == info.pub:
                return info
    if spec.startswith("tcp://"):
        host, _, port_s = spec[len("tcp://") :].rpartition(":")
        if not port_s.isdigit():
            raise RunNotFound(f"invalid endpoint {spec!r}: expected tcp://HOST:PORT")
        router = f"tcp://{host}:{int(port_s) + 1}"
    else:
        router = spec[: -len(".pub")] + ".req" if spec.endswith(".pub") else spec + ".req"
    return discovery.ConnectionInfo(
        run_id=spec,
        name=spec,
        pub=spec,
        router=router,
        key="",
        pid=0,
        host="",
        started=time.time(),
        run_file=None,
    )
