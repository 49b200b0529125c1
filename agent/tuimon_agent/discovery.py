"""Where live runs announce themselves: a private runtime directory of connection files.

Each live run writes ``<runtime_dir>/<run_id>.json`` (mode 0600, like Jupyter's kernel files) holding its id, name,
endpoints, a random signing key, pid, host, start time and run file path. The runtime directory is
``$TUIMON_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/tuimon``, else ``<tmp>/tuimon-<uid>``; it is created with mode 0700
under umask 077, and refused when another user owns it or its mode lets anyone else in. Default endpoints are
``ipc://`` sockets in the same directory. Connection files of dead processes are removed by :func:`live_runs`.
Runs that ended normally are remembered in ``recent.jsonl`` there (the last 100).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import stat
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RECENT_KEEP = 100


class RuntimeDirError(PermissionError):
    """The runtime directory is unsafe to use (owned by someone else, or open to others)."""


def runtime_dir(*, create: bool = True) -> Path:
    """The per-user directory for connection files and ipc sockets, checked for safety.

    Args:
        create: Create it (mode 0700) if missing.

    Returns:
        Its path.

    Raises:
        RuntimeDirError: It exists but another user owns it or its permissions are wider than 0700.
    """
    if os.environ.get("TUIMON_RUNTIME_DIR"):
        d = Path(os.environ["TUIMON_RUNTIME_DIR"])
    elif os.environ.get("XDG_RUNTIME_DIR") and os.path.isdir(os.environ["XDG_RUNTIME_DIR"]):
        d = Path(os.environ["XDG_RUNTIME_DIR"]) / "tuimon"
    else:
        d = Path(tempfile.gettempdir()) / f"tuimon-{os.getuid()}"
    if create and not d.exists():
        old = os.umask(0o077)
        try:
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        finally:
            os.umask(old)
    if d.exists():
        st = d.lstat()
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise RuntimeDirError(f"runtime directory {d} is not a directory")
        if st.st_uid != os.getuid():
            raise RuntimeDirError(
                f"runtime directory {d} is owned by uid {st.st_uid}, not you ({os.getuid()})"
            )
        if st.st_mode & 0o077:
            raise RuntimeDirError(
                f"runtime directory {d} has mode {stat.S_IMODE(st.st_mode):o}; it must be 700 (chmod 700 {d})"
            )
    return d


@dataclass
class ConnectionInfo:
    """What a viewer needs to reach a live run (the content of its connection file)."""

    run_id: str
    name: str
    pub: str
    router: str
    key: str
    pid: int
    host: str
    started: float
    run_file: str | None
    protocol_version: int = 1
    curve_server_key: str = ""
    """On TCP: the PUB socket's CURVE public key (Z85); a subscriber needs it to complete the handshake, so it is
    kept, like ``key``, only here (0600). Empty on ipc."""
    path: str | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        """The connection file's JSON (without its own path)."""
        d = asdict(self)
        d.pop("path", None)
        return d

    @classmethod
    def load(cls, path: str | Path) -> ConnectionInfo:
        """Read a connection file.

        Raises:
            ValueError: It is not a tuimon connection file.
            OSError: It cannot be read.
        """
        with open(path, encoding="utf-8") as f:
            try:
                d = json.load(f)
            except ValueError as exc:
                raise ValueError(f"{path} is not a tuimon connection file: {exc}") from None
        if not isinstance(d, dict):
            raise ValueError(f"{path} is not a tuimon connection file")
        names = {f for f in cls.__dataclass_fields__ if f != "path"}
        missing = {"run_id", "pub", "router", "pid"} - d.keys()
        if missing:
            raise ValueError(f"{path} is not a tuimon connection file (missing {', '.join(sorted(missing))})")
        d.setdefault("name", d["run_id"])
        d.setdefault("key", "")
        d.setdefault("host", "")
        d.setdefault("started", 0.0)
        d.setdefault("run_file", None)
        return cls(**{k: v for k, v in d.items() if k in names}, path=str(path))

    def alive(self) -> bool:
        """Whether the run's process still exists (on this host; unknown pids and other hosts count as alive)."""
        if self.pid <= 0:
            return True
        return pid_alive(self.pid) if self.host in ("", socket.gethostname()) else True


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def new_run_id() -> str:
    """A sortable, unique run id: ``YYYYmmdd-HHMMSS-xxxxxx``."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def new_key() -> str:
    """A random signing key (hex, 256 bits)."""
    return secrets.token_hex(32)


def ipc_endpoints(run_id: str, directory: Path) -> tuple[str, str]:
    """``(pub, router)`` ipc endpoints for a run in the runtime directory."""
    return f"ipc://{directory / (run_id + '.pub')}", f"ipc://{directory / (run_id + '.req')}"


def write_connection_file(info: ConnectionInfo, directory: Path) -> Path:
    """Write ``<directory>/<run_id>.json`` with mode 0600 atomically; returns its path.

    The content goes to a new temporary file with a random name, created exclusively (``O_EXCL``, so a symlink or a
    stale file planted at a predictable name is never followed or reused) with mode 0600, then renamed over the
    connection file's name (a rename replaces a link there, it never writes through it).
    """
    path = directory / f"{info.run_id}.json"
    fd, tmp = tempfile.mkstemp(prefix=f".{info.run_id}.", suffix=".json.tmp", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(info.to_json(), f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    info.path = str(path)
    return path


def remove_run_files(info: ConnectionInfo) -> None:
    """Remove a run's connection file and ipc socket files; missing ones are fine."""
    paths = [info.path] + [ep[len("ipc://") :] for ep in (info.pub, info.router) if ep.startswith("ipc://")]
    for p in paths:
        if p:
            with contextlib.suppress(OSError):
                os.unlink(p)


def live_runs(directory: Path | None = None, *, clean: bool = True) -> list[ConnectionInfo]:
    """Connection files of live runs, newest first; files of dead processes are removed when ``clean``.

    Args:
        directory: The runtime directory (default :func:`runtime_dir`).
        clean: Remove stale connection files (dead pid) and remember them as recent runs.

    Returns:
        The live runs' connection info.
    """
    d = directory or runtime_dir()
    out: list[ConnectionInfo] = []
    for p in sorted(d.glob("*.json")):
        try:
            info = ConnectionInfo.load(p)
        except (OSError, ValueError, TypeError):
            continue
        if info.alive():
            out.append(info)
        elif clean:
            remember_recent(info, directory=d, state="dead")
            remove_run_files(info)
    out.sort(key=lambda i: i.started, reverse=True)
    return out


def remember_recent(info: ConnectionInfo, *, directory: Path | None = None, state: str = "ended") -> None:
    """Append a finished run to ``recent.jsonl`` (keeping the last :data:`RECENT_KEEP`)."""
    d = directory or runtime_dir()
    path = d / "recent.jsonl"
    entry = {**info.to_json(), "state": state, "ended": time.time()}
    entry.pop("key", None)
    entry.pop("curve_server_key", None)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()[-(RECENT_KEEP - 1) :] if path.exists() else []
        lines.append(json.dumps(entry))
        fd, tmp = tempfile.mkstemp(prefix=".recent.", suffix=".tmp", dir=d)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError:
        pass


def recent_runs(directory: Path | None = None) -> list[dict[str, Any]]:
    """Runs that ended recently, newest first (from ``recent.jsonl``)."""
    d = directory or runtime_dir()
    path = d / "recent.jsonl"
    out = []
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and "run_id" in entry:
                    out.append(entry)
    except OSError:
        return []
    out.reverse()
    return out
