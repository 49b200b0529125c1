"""The durable run file: one SQLite database per run, written by the agent thread, read by the viewer.

The run file is the source of truth: everything the viewer shows can be rebuilt from it. Schema (version 1)::

    meta(key TEXT PRIMARY KEY, value TEXT)
        schema_version, protocol_version, run_id, name, created (unix time), hello (JSON of the hello payload)
    records(seq INTEGER PRIMARY KEY, kind TEXT, step INTEGER, ts REAL, body BLOB)
        every record, ``body`` being its exact protocol encoding (see protocol.py)
    scalars(seq INTEGER, step INTEGER, split TEXT, name TEXT, value REAL)
        one row per number in a ``metrics`` (split 'train') or ``eval`` (split 'eval') record, for queries
        such as ``SELECT step, value FROM scalars WHERE name = 'loss'``; SQLite stores NaN as NULL. It has no
        index, because maintaining one during the run costs the agent thread about 40% more per record; for many
        queries on a finished run, ``CREATE INDEX scalars_name ON scalars (name, step)`` first.

The writer uses WAL and ``synchronous=NORMAL`` and commits in batches (the agent calls :meth:`RunFileWriter.commit`
every few hundred milliseconds), so a killed process loses at most the last batch, and readers never block it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import protocol

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    step INTEGER,
    ts REAL NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS scalars (
    seq INTEGER NOT NULL,
    step INTEGER,
    split TEXT NOT NULL,
    name TEXT NOT NULL,
    value REAL
);
"""


class PersistenceError(OSError):
    """The run file cannot be written (disk full, read-only directory, ...)."""


def _one_line(exc: BaseException, limit: int = 200) -> str:
    """An SQLite error as one short line (its messages can quote a whole multi-line schema)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class RunFileDamaged(ValueError):
    """A run file that opened but cannot be read further (a damaged page, a truncated file)."""


class RunFileWriter:
    """Appends records to a run file in batches. Owned by one thread (the agent thread).

    Args:
        path: The ``run.sqlite`` path; its directory is created.
        meta: Initial ``meta`` rows (values are JSON-encoded unless they are strings).
    """

    def __init__(self, path: str | Path, *, meta: dict[str, Any]) -> None:
        self.path = Path(path)
        self._records: list[tuple[int, str, int | None, float, bytes]] = []
        self._scalars: list[tuple[int, int | None, str, str, float | None]] = []
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            rows = {"schema_version": SCHEMA_VERSION, "protocol_version": protocol.PROTOCOL_VERSION, **meta}
            self.set_meta(rows)
        except (sqlite3.Error, OSError) as exc:
            raise PersistenceError(f"cannot create run file {self.path}: {exc}") from exc

    def set_meta(self, rows: dict[str, Any]) -> None:
        """Write ``meta`` rows now (in their own transaction)."""
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                    [(k, v if isinstance(v, str) else json.dumps(v, default=str)) for k, v in rows.items()],
                )
        except sqlite3.Error as exc:
            raise PersistenceError(f"cannot write run file {self.path}: {exc}") from exc

    def add(self, rec: protocol.Record, body: bytes, values: dict[str, float] | None = None) -> None:
        """Queue one record for the next commit.

        Args:
            rec: The record (for the indexed columns).
            body: Its encoding, stored verbatim.
            values: A ``metrics``/``eval`` record's values when the caller knows they are all floats (the agent
                does); otherwise they are taken from the record and checked.
        """
        seq, step = rec.seq, rec.step
        self._records.append((seq, rec.kind, step, rec.ts, body))
        if rec.kind in (protocol.METRICS, protocol.EVAL):
            split = "train" if rec.kind == protocol.METRICS else "eval"
            if values is None:
                values = protocol.values_of(rec)
            self._scalars.extend(
                (seq, step, split, name, None if value != value else value) for name, value in values.items()
            )

    @property
    def pending(self) -> int:
        """Records queued and not yet committed."""
        return len(self._records)

    def commit(self) -> int:
        """Write the queued records in one transaction.

        Returns:
            How many records were written.

        Raises:
            PersistenceError: The write failed; the batch is dropped.
        """
        if not self._records:
            return 0
        records, scalars = self._records, self._scalars
        self._records, self._scalars = [], []
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT OR IGNORE INTO records (seq, kind, step, ts, body) VALUES (?, ?, ?, ?, ?)",
                    records,
                )
                if scalars:
                    self._db.executemany(
                        "INSERT INTO scalars (seq, step, split, name, value) VALUES (?, ?, ?, ?, ?)", scalars
                    )
        except sqlite3.Error as exc:
            raise PersistenceError(f"cannot write run file {self.path}: {exc}") from exc
        return len(records)

    def bodies_after(self, after_seq: int, limit: int) -> list[tuple[int, bytes]]:
        """Committed records with ``seq > after_seq``, oldest first (call :meth:`commit` first)."""
        return self._db.execute(
            "SELECT seq, body FROM records WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
        ).fetchall()

    def close(self) -> None:
        """Commit what is queued and close; safe to call twice."""
        db = getattr(self, "_db", None)
        if db is None:
            return
        try:
            self.commit()
        finally:
            self._db = None
            db.close()


class RunFileReader:
    """Reads a run file, live or finished, without ever blocking its writer.

    Args:
        path: A ``run.sqlite`` file or the run directory holding one.

    Raises:
        FileNotFoundError: There is no run file there.
        ValueError: The file is not a tuimon run file.
    """

    def __init__(self, path: str | Path) -> None:
        p = Path(path)
        if p.is_dir():
            p = p / "run.sqlite"
        if not p.is_file():
            raise FileNotFoundError(f"no run file at {p}")
        self.path = p
        try:
            self._db = sqlite3.connect(f"file:{p.resolve()}?mode=ro", uri=True, check_same_thread=False)
            self._meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.OperationalError:
            # A read-only directory cannot hold the -shm file WAL readers need; read it as immutable instead.
            try:
                self._db = sqlite3.connect(
                    f"file:{p.resolve()}?immutable=1", uri=True, check_same_thread=False
                )
                self._meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
                raise ValueError(f"{p} is not a tuimon run file: {_one_line(exc)}") from None
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            raise ValueError(f"{p} is not a tuimon run file: {_one_line(exc)}") from None
        if "run_id" not in self._meta:
            raise ValueError(f"{p} is not a tuimon run file (no run_id in meta)")
        try:
            self._db.execute("SELECT seq, kind, step, ts, body FROM records LIMIT 1").fetchall()
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            raise ValueError(f"{p} is not a tuimon run file: {_one_line(exc)}") from None

    @property
    def meta(self) -> dict[str, Any]:
        """The ``meta`` table, JSON values decoded."""
        out: dict[str, Any] = {}
        for k, v in self._meta.items():
            try:
                out[k] = json.loads(v)
            except (TypeError, ValueError):
                out[k] = v
        return out

    @property
    def run_id(self) -> str:
        """The run's id."""
        return str(self._meta["run_id"])

    def _query(self, sql: str, args: tuple[Any, ...] = (), *, after: int = 0) -> list[Any]:
        """Run a query; a damaged file raises :class:`RunFileDamaged` (a ``ValueError``) naming the file."""
        try:
            return self._db.execute(sql, args).fetchall()
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            where = f" after record {after}" if after else ""
            raise RunFileDamaged(f"{self.path} is damaged{where}: {_one_line(exc)}") from None

    def last_seq(self) -> int:
        """The highest committed sequence number (0 when empty)."""
        return int(self._query("SELECT MAX(seq) FROM records")[0][0] or 0)

    def count(self) -> int:
        """How many records are committed."""
        return int(self._query("SELECT COUNT(*) FROM records")[0][0])

    def bodies(self, after_seq: int = 0, *, batch: int = 5000) -> Iterator[list[tuple[int, bytes]]]:
        """Committed record bodies with ``seq > after_seq`` in order, in batches.

        Args:
            after_seq: Start after this sequence number.
            batch: Rows per batch.

        Yields:
            Lists of ``(seq, body)``.

        Raises:
            RunFileDamaged: The file is damaged past the records yielded so far (those stay valid).
        """
        last = after_seq
        while True:
            rows = self._query(
                "SELECT seq, body FROM records WHERE seq > ? ORDER BY seq LIMIT ?", (last, batch), after=last
            )
            rows = [(q, b) for q, b in rows if isinstance(q, int) and q > last and isinstance(b, bytes)]
            if not rows:  # the end, or a damaged index that goes backwards: stop rather than loop
                return
            yield rows
            last = rows[-1][0]

    def records(self, after_seq: int = 0) -> Iterator[protocol.Record]:
        """Decoded records with ``seq > after_seq``; undecodable rows are skipped (see :meth:`bodies`)."""
        for rows in self.bodies(after_seq):
            for _seq, body in rows:
                try:
                    yield protocol.decode(body)
                except protocol.ProtocolError:
                    continue

    def close(self) -> None:
        """Close the connection; safe to call twice."""
        self._db.close()

    def __enter__(self) -> RunFileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
