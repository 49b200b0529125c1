"""Alerts through the real agent and the ``tuimon diagnose`` command.

A real torch loop whose learning rate is far too high diverges; the agent thread raises ``loss_divergence`` into
the run file and onto the PUB stream. ``tuimon diagnose`` (a subprocess) recomputes it from the run file, as text,
JSON and a table; ``tuimon export`` carries the alert records. ``watch(..., alerts=False)`` raises none, and a rule
that raises is disabled with one ``rule_error`` event while the others and the training go on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

torch = pytest.importorskip("torch")

import tuimon_agent  # noqa: E402
from tuimon_agent import alerts, discovery, protocol  # noqa: E402
from tuimon_agent.alerts import Rule  # noqa: E402
from tuimon_agent.runfile import RunFileReader  # noqa: E402


def diverging_run(run_dir: Path, *, steps: int = 150, **options: object) -> tuple[Path, int]:
    """An MLP on a regression task trained with SGD at lr=0.5 (it diverges); returns (run file, steps done)."""
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = x @ torch.randn(8, 1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    options.setdefault("publish", False)
    mon = tuimon_agent.watch(model, opt, run="diverge", dir=run_dir, **options)
    done = 0
    with mon:
        for _ in range(steps):
            idx = torch.randint(0, 256, (16,))
            loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx]).clamp(max=1e6)
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.log(loss=loss.detach())
            done += 1
    assert mon.run_file is not None
    return mon.run_file, done


def alert_records(path: Path) -> list[protocol.Record]:
    with RunFileReader(path) as reader:
        return [r for r in reader.records() if r.kind == protocol.ALERT]


@pytest.fixture(scope="module")
def run_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One diverging run, its alerts computed live by the agent thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        path, _ = diverging_run(tmp_path_factory.mktemp("diag"))
    finally:
        torch.set_num_threads(threads)
    return path


def tuimon(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tuimon", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )


def test_the_agent_writes_the_alert_into_the_run_file(run_file: Path) -> None:
    recs = alert_records(run_file)
    div = [r.data for r in recs if r.data["rule"] == "loss_divergence"]
    assert div and div[0]["state"] == "active" and div[0]["severity"] in ("warning", "critical")
    assert div[0]["actions"][0] == {
        "command": "set_lr",
        "args": {"value": pytest.approx(0.05)},
        "label": "set the learning rate to 0.05 (a tenth of 0.5)",
    }
    assert div[0]["metric"] == "loss" and div[0]["id"] == "loss_divergence:global"
    seqs = [r.seq for r in recs]
    assert seqs == sorted(seqs) and all(s > 0 for s in seqs)  # numbered with every other record


def test_diagnose_prints_the_alerts_of_a_run_file(run_file: Path) -> None:
    res = tuimon("diagnose", str(run_file))
    assert res.returncode == 0, res.stderr
    assert "loss_divergence" in res.stdout and "learning rate is too high" in res.stdout
    assert "- Lower the learning rate" in res.stdout and "> set the learning rate to 0.05" in res.stdout
    res_dir = tuimon("diagnose", str(run_file.parent))  # the run directory works too, as for replay
    assert res_dir.returncode == 0 and res_dir.stdout == res.stdout


def test_diagnose_json_and_table(run_file: Path) -> None:
    res = tuimon("diagnose", "--json", str(run_file))
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["name"] == "diverge" and doc["records"] > 150
    (div,) = [a for a in doc["alerts"] if a["rule"] == "loss_divergence"]
    assert div["max_severity"] in ("warning", "critical") and div["episodes"] >= 1
    live = [r.data for r in alert_records(run_file) if r.data["rule"] == "loss_divergence"]
    assert div["first_step"] == live[0]["first_step"]  # the same verdict as the agent thread's
    table = tuimon("diagnose", "--table", str(run_file), str(run_file))
    assert table.returncode == 0
    row = next(line for line in table.stdout.splitlines() if line.startswith("loss_divergence"))
    assert row.split()[1:] in (["W", "W"], ["C", "C"])


def test_diagnose_rejects_what_is_not_a_run_file(tmp_path: Path) -> None:
    bogus = tmp_path / "run.sqlite"
    bogus.write_bytes(b"not sqlite at all" * 10)
    res = tuimon("diagnose", str(bogus))
    assert res.returncode == 1 and str(bogus) in res.stderr and "Traceback" not in res.stderr
    res = tuimon("diagnose", "no-such-run")
    assert res.returncode == 1 and "no-such-run" in res.stderr


def test_export_jsonl_carries_the_alert_records(run_file: Path) -> None:
    res = tuimon("export", "--format", "jsonl", str(run_file))
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    exported = [d for d in lines if d["kind"] == "alert"]
    assert exported and exported[0]["rule"] == "loss_divergence" and exported[0]["remedies"]


def test_alerts_false_raises_none(tmp_path: Path) -> None:
    path, _ = diverging_run(tmp_path, steps=120, alerts=False)
    assert alert_records(path) == []


class Raises(Rule):
    """A broken rule: raises on the 20th metrics record."""

    name = "broken"
    kinds = frozenset({protocol.METRICS})

    def __init__(self) -> None:
        self.n = 0

    def feed(self, record: protocol.Record, ctx: alerts.Context) -> None:
        self.n += 1
        if self.n == 20:
            raise ZeroDivisionError("on purpose")


def test_a_failing_rule_is_disabled_and_training_and_the_other_rules_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(alerts, "RULE_CLASSES", [Raises, *alerts.RULE_CLASSES])
    path, done = diverging_run(tmp_path, steps=150)
    assert done == 150
    with RunFileReader(path) as reader:
        recs = list(reader.records())
    errors = [r.data for r in recs if r.kind == protocol.EVENT and r.data.get("what") == "rule_error"]
    assert (
        len(errors) == 1 and "broken" in errors[0]["message"] and "ZeroDivisionError" in errors[0]["message"]
    )
    assert any(r.kind == protocol.ALERT and r.data["rule"] == "loss_divergence" for r in recs)
    assert capfd.readouterr().err.count("alert rule 'broken'") == 1


def test_alerts_are_published_on_the_stream(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = tuimon_agent.watch(model, opt, run="pub", dir=tmp_path)
    (info,) = [i for i in discovery.live_runs() if i.run_id == mon.run_id]
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, protocol.topic(protocol.ALERT))
    sub.connect(info.pub)
    try:
        time.sleep(0.3)  # the slow joiner: let the subscription reach the agent before anything is sent
        rng = np.random.default_rng(0)
        with mon:
            for step in range(1, 120):  # a loss that explodes: 2.3, then 200+
                mon.log(loss=float(2.3 if step < 5 else 200 * rng.lognormal(0, 0.2)))
            time.sleep(0.2)
            got = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not got:
                if sub.poll(100):
                    frames = sub.recv_multipart()
                    got = [protocol.decode(b) for b in frames[1:]]
        assert got and got[0].kind == protocol.ALERT and got[0].data["rule"] == "loss_divergence"
        assert got[0].seq > 0
    finally:
        sub.close(linger=0)
        ctx.term()
