"""``tuimon diagnose RUN [RUN ...] [--json] [--table]``: run the alert rules over finished (or live) runs' files.

A fresh :class:`tuimon_agent.alerts.Diagnoser` reads every record of the run file in order, exactly as the agent
thread does live (``alert`` records already in the file are ignored and recomputed), and the alerts it raises are
printed: rule, severity (the highest the alert reached), steps, layers, message and remedies. ``--json`` prints one
JSON document; ``--table`` (implied by several runs) prints the detection table, one row per rule and one column
per run, each cell the highest severity that rule reached in that run. Imports no Textual.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuimon_agent import discovery, protocol
from tuimon_agent.alerts import RULE_NAMES, Diagnoser
from tuimon_agent.alerts.base import SEVERITY_RANK
from tuimon_agent.runfile import RunFileReader

from .runs import RunNotFound, resolve

GLYPH = {"info": "i", "warning": "W", "critical": "C"}
"""Table cell per severity (``.`` when the rule raised nothing)."""


@dataclass
class Diagnosis:
    """What the rules found in one run.

    Attributes:
        name: The run's name.
        path: Its run file.
        alerts: The latest payload of each alert id, most severe first then in onset order, with ``max_severity`` (the highest severity
            it reached) and ``episodes`` (how many times it became active) added.
        records: Records read.
        disabled: Rule name → the error that disabled it.
    """

    name: str
    path: str
    alerts: list[dict[str, Any]] = field(default_factory=list)
    records: int = 0
    disabled: dict[str, str] = field(default_factory=dict)

    def max_severity(self, rule: str) -> str | None:
        """The highest severity any alert of ``rule`` reached, or ``None``."""
        best: str | None = None
        for a in self.alerts:
            if a["rule"] == rule and (best is None or SEVERITY_RANK[a["max_severity"]] > SEVERITY_RANK[best]):
                best = a["max_severity"]
        return best

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "name": self.name,
            "path": self.path,
            "records": self.records,
            "alerts": self.alerts,
            "disabled": self.disabled,
        }


def diagnose_file(path: str | Path, diagnoser: Diagnoser | None = None) -> Diagnosis:
    """Run the rules over one run file.

    Args:
        path: A ``run.sqlite`` file or its run directory.
        diagnoser: The engine to use (default: a fresh one with every built-in rule).

    Returns:
        The alerts found.

    Raises:
        FileNotFoundError, ValueError: Not a readable run file.
    """
    diag = diagnoser or Diagnoser(warn=None)
    found: dict[str, dict[str, Any]] = {}
    with RunFileReader(path) as reader:
        name = str(reader.meta.get("name", Path(path).stem))
        out = Diagnosis(name=name, path=str(reader.path))
        for rec in reader.records():
            out.records += 1
            for a in diag.feed(rec):
                if a.kind != protocol.ALERT:
                    continue
                d = a.data
                prev = found.get(d["id"])
                top = d["severity"]
                episodes = 1
                if prev is not None:
                    if SEVERITY_RANK[prev["max_severity"]] > SEVERITY_RANK[top]:
                        top = prev["max_severity"]
                    new_episode = prev["state"] == "resolved" and d["state"] == "active"
                    episodes = prev["episodes"] + (1 if new_episode else 0)
                found[d["id"]] = {**d, "max_severity": top, "episodes": episodes}
    # As the viewer's alert panel orders them: most severe first, then earliest onset.
    out.alerts = sorted(
        found.values(), key=lambda a: (-SEVERITY_RANK[a["max_severity"]], a["first_step"], a["id"])
    )
    out.disabled = dict(diag.disabled)
    return out


def format_diagnosis(d: Diagnosis) -> str:
    """Human-readable report of one run."""
    lines = [f"{d.name}  ({d.path}, {d.records} records)"]
    if not d.alerts:
        lines.append("  no alerts")
    for a in d.alerts:
        layers = f"  layers: {', '.join(a['layers'])}" if a["layers"] else ""
        state = "active" if a["state"] == "active" else f"resolved at step {a['last_step']}"
        lines.append(
            f"  [{a['max_severity'].upper():8}] {a['rule']:<20} steps {a['first_step']}-{a['last_step']} "
            f"({state}){layers}"
        )
        lines.append(f"      {a['message']}")
        for r in a["remedies"]:
            lines.append(f"      - {r}")
        for act in a["actions"]:
            lines.append(f"      > {act.get('label', act.get('command'))}")
    for rule, err in d.disabled.items():
        lines.append(f"  rule {rule} was disabled: {err}")
    return "\n".join(lines)


def format_table(results: list[Diagnosis]) -> str:
    """The detection table: one row per rule, one column per run; each cell the highest severity reached
    (``C`` critical, ``W`` warning, ``i`` info, ``.`` nothing)."""
    rules = list(RULE_NAMES) + sorted({a["rule"] for d in results for a in d.alerts} - set(RULE_NAMES))
    names = [d.name for d in results]
    w0 = max(len(r) for r in rules)
    widths = [max(3, len(n)) for n in names]
    head = " " * w0 + "  " + "  ".join(n.rjust(w) for n, w in zip(names, widths, strict=True))
    rows = [head]
    for rule in rules:
        cells = [GLYPH.get(d.max_severity(rule) or "", ".") for d in results]
        rows.append(rule.ljust(w0) + "  " + "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)))
    rows.append("C critical  W warning  i info  . nothing")
    return "\n".join(rows)


def _path_of(spec: str) -> Path:
    target = resolve(spec)
    if isinstance(target, discovery.ConnectionInfo):
        if not target.run_file:
            raise RunNotFound(f"{spec} is live but writes no run file")
        return Path(target.run_file)
    return target


def cmd_diagnose(args: argparse.Namespace) -> int:
    """``tuimon diagnose``: print what the rules find in each RUN; exit 1 if a run cannot be read."""
    results: list[Diagnosis] = []
    for spec in args.run:
        try:
            results.append(diagnose_file(_path_of(spec)))
        except (RunNotFound, discovery.RuntimeDirError, OSError, ValueError) as exc:
            print(f"tuimon: {spec}: {exc}", file=sys.stderr)
            return 1
    if args.json:
        doc: Any = [r.as_dict() for r in results] if len(results) > 1 else results[0].as_dict()
        print(json.dumps(_jsonable(doc), indent=1))
    elif args.table or len(results) > 1:
        if not args.table:
            for r in results:
                print(format_diagnosis(r) + "\n")
        print(format_table(results))
    else:
        print(format_diagnosis(results[0]))
    return 0


def _jsonable(v: Any) -> Any:
    if isinstance(v, float):
        return v if v == v and v not in (float("inf"), float("-inf")) else str(v)
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def add_parser(sub: Any) -> None:
    """Register ``diagnose`` on the ``tuimon`` command's subparsers."""
    s = sub.add_parser(
        "diagnose",
        help="run the alert rules over run files and print what they find",
        description="Run the alert rules over each RUN's file (a run file, run directory, id or name) and print "
        "the alerts: rule, severity, steps, layers, message, remedies. Several runs (or --table) also print the "
        "detection table, rule x run.",
    )
    s.add_argument("run", metavar="RUN", nargs="+")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.add_argument("--table", action="store_true", help="print only the detection table (rule x run)")
    s.set_defaults(func=cmd_diagnose)
