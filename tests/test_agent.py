"""The agent in the training process: what it records, and that it never blocks, raises or leaks into children."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tuimon_agent
from tuimon_agent import discovery, protocol
from tuimon_agent.runfile import RunFileReader


def _model() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)


def _train(mon: tuimon_agent.Monitor, model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    for _ in range(steps):
        x = torch.randn(16, 4)
        loss = torch.nn.functional.cross_entropy(model(x), (x[:, 0] > 0).long())
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.log(loss=loss, acc=0.5)


def _records(mon: tuimon_agent.Monitor) -> list[protocol.Record]:
    assert mon.run_file is not None
    with RunFileReader(mon.run_file) as r:
        return list(r.records())


def test_records_hello_metrics_lr_eval_and_end(tmp_path: Path) -> None:
    model, opt = _model()
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.1)
    with tuimon_agent.watch(model, opt, run="unit", dir=tmp_path) as mon:
        for _ in range(30):
            _train(mon, model, opt, 1)
            sched.step()
            if mon.step % 10 == 0:
                mon.log_eval(val_loss=torch.tensor(0.5), val_acc=0.75)
    recs = _records(mon)
    assert [r.seq for r in recs] == list(range(1, len(recs) + 1))
    hello = recs[0]
    assert hello.kind == protocol.HELLO and hello.data["name"] == "unit" and hello.data["pid"] == os.getpid()
    assert hello.data["torch"] == torch.__version__ and hello.data["device"] == "cpu"
    assert [p["name"] for p in hello.data["model"]["params"]] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert hello.data["model"]["total_params"] == 4 * 8 + 8 + 8 * 2 + 2
    assert (
        hello.data["optimizer"]["type"] == "SGD" and hello.data["optimizer"]["groups"][0]["momentum"] == 0.9
    )
    metrics = [r for r in recs if r.kind == protocol.METRICS]
    assert [r.step for r in metrics] == list(range(1, 31))
    assert all(type(r.data["values"]["loss"]) is float for r in metrics)
    lrs = [r.data["values"]["opt/lr"] for r in metrics]
    assert (
        lrs[:10] == [0.1] * 10
        and lrs[10:20] == pytest.approx([0.01] * 10)
        and lrs[20] == pytest.approx(0.001)
    )
    assert (
        metrics[0].data["values"]["opt/momentum"] == 0.9
        and metrics[0].data["values"]["opt/weight_decay"] == 1e-4
    )
    evals = [r for r in recs if r.kind == protocol.EVAL]
    assert [(r.step, r.data["values"]) for r in evals] == [
        (s, {"val_loss": 0.5, "val_acc": 0.75}) for s in (10, 20, 30)
    ]
    assert recs[-1].kind == protocol.END and recs[-1].data == {"reason": "closed", "dropped": 0, "steps": 30}


def test_adam_betas_and_param_groups(tmp_path: Path) -> None:
    model, _ = _model()
    opt = torch.optim.Adam(
        [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 1e-4}], lr=1e-3
    )
    with tuimon_agent.watch(model, opt, dir=tmp_path, publish=False) as mon:
        _train(mon, model, opt, 3)
    values = [r for r in _records(mon) if r.kind == protocol.METRICS][-1].data["values"]
    assert values["opt/lr"] == 1e-3 and values["opt/g1/lr"] == 1e-4
    assert values["opt/beta1"] == 0.9 and values["opt/beta2"] == 0.999


def test_explicit_steps_and_step_counter(tmp_path: Path) -> None:
    with tuimon_agent.watch(dir=tmp_path, publish=False) as mon:
        mon.log(loss=1.0)
        mon.log(step=100, loss=0.5)
        mon.log(loss=0.25)
        assert mon.step == 101
    assert [r.step for r in _records(mon) if r.kind == protocol.METRICS] == [1, 100, 101]


def test_log_takes_a_mapping_for_names_that_are_not_identifiers(tmp_path: Path) -> None:
    with tuimon_agent.watch(dir=tmp_path, publish=False) as mon:
        mon.log({"train/loss": 1.0, "step": 3.0}, step=5)
        mon.log(6, loss=2.0)  # the step as the first positional argument, as before
        mon.log({"train/loss": 0.5}, acc=0.9)
        mon.log_eval({"eval/loss": 1.5})
    metrics = [(r.step, r.data["values"]) for r in _records(mon) if r.kind == protocol.METRICS]
    evals = [(r.step, r.data["values"]) for r in _records(mon) if r.kind == protocol.EVAL]
    assert [s for s, _ in metrics] == [5, 6, 7]
    assert metrics[0][1]["train/loss"] == 1.0 and metrics[0][1]["step"] == 3.0
    assert metrics[2][1]["train/loss"] == 0.5 and metrics[2][1]["acc"] == 0.9
    assert evals == [(7, {"eval/loss": 1.5})]


def test_a_full_queue_drops_the_oldest_and_counts_it(tmp_path: Path) -> None:
    mon = tuimon_agent.watch(dir=tmp_path, publish=False, queue_size=64)
    for i in range(200_000):
        mon.log(loss=float(i))
    mon.close()
    assert mon.dropped > 0
    recs = _records(mon)
    end = recs[-1]
    assert end.kind == protocol.END and end.data["dropped"] == mon.dropped
    steps = [r.step for r in recs if r.kind == protocol.METRICS]
    assert steps[-1] == 200_000  # the newest survive
    assert len(steps) + mon.dropped == 200_000
    assert steps == sorted(steps)


def test_bad_values_are_skipped_with_one_event_and_training_goes_on(tmp_path: Path) -> None:
    with tuimon_agent.watch(dir=tmp_path, publish=False) as mon:
        for _ in range(3):
            mon.log(loss=1.0, name="text", vec=torch.ones(3))
    recs = _records(mon)
    events = [r.data["what"] for r in recs if r.kind == protocol.EVENT]
    assert events == ["bad_value", "bad_value"]
    assert [r.data["values"] for r in recs if r.kind == protocol.METRICS] == [{"loss": 1.0}] * 3


def test_an_internal_error_disables_the_agent_with_one_warning(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bug inside the agent thread itself (a user's odd value is only dropped: tests/test_hostile_values.py).
    def bug(self: object) -> None:
        raise ZeroDivisionError("a bug inside the agent")

    from tuimon_agent import transport

    monkeypatch.setattr(transport.AgentThread, "_commit", bug)
    model, opt = _model()
    mon = tuimon_agent.watch(model, opt, dir=tmp_path, publish=False)
    mon.log(loss=1.0)
    mon._thread.join(5)  # the agent thread stops after the error
    assert not mon.enabled
    _train(mon, model, opt, 5)  # training goes on; log() is a no-op
    mon.log(loss=1.0)
    mon.close()
    err = capfd.readouterr().err
    assert err.count("tuimon: monitoring disabled after an internal error (ZeroDivisionError") == 1


def test_unwritable_run_dir_turns_persistence_off_and_keeps_publishing(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with tuimon_agent.watch(dir="/proc/no-such-place") as mon:
        mon.log(loss=1.0)
        info = discovery.live_runs()[0]
        assert info.run_id == mon.run_id
    assert "run file persistence is off" in capfd.readouterr().err


def test_close_twice_and_log_after_close(tmp_path: Path) -> None:
    mon = tuimon_agent.watch(dir=tmp_path)
    assert discovery.live_runs()[0].run_id == mon.run_id
    mon.close()
    mon.close()
    mon.log(loss=1.0)
    assert discovery.live_runs() == []  # connection file and sockets removed
    assert [r["run_id"] for r in discovery.recent_runs()] == [mon.run_id]


def test_connection_file_is_private_and_complete(tmp_path: Path) -> None:
    with tuimon_agent.watch(run="private", dir=tmp_path) as mon:
        info = discovery.live_runs()[0]
        assert info.path is not None
        assert stat.S_IMODE(os.stat(info.path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(discovery.runtime_dir()).st_mode) == 0o700
        assert info.name == "private" and info.pid == os.getpid() and len(info.key) == 64
        assert info.pub.startswith("ipc://") and Path(info.run_file) == mon.run_file


def test_a_runtime_dir_open_to_others_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    wide = tmp_path / "wide"
    wide.mkdir(mode=0o755)
    wide.chmod(0o755)
    monkeypatch.setenv("TUIMON_RUNTIME_DIR", str(wide))
    with pytest.raises(discovery.RuntimeDirError, match="mode 755"):
        discovery.runtime_dir()
    with tuimon_agent.watch(dir=tmp_path / "runs") as mon:
        mon.log(loss=1.0)
    assert "live publishing is off" in capfd.readouterr().err
    assert [r.kind for r in _records(mon)] == ["hello", "metrics", "end"]
    assert list(wide.iterdir()) == []


def test_stale_connection_files_are_cleaned(private_runtime_dir: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    info = discovery.ConnectionInfo(
        "dead-run", "dead", "ipc:///x.pub", "ipc:///x.req", "k", int(dead.stdout), "", 0.0, None
    )
    discovery.write_connection_file(info, private_runtime_dir)
    assert discovery.live_runs() == []
    assert not (private_runtime_dir / "dead-run.json").exists()
    assert discovery.recent_runs()[0]["state"] == "dead"


def test_disabled_by_environment_and_on_nonzero_ranks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANK", "1")
    mon = tuimon_agent.watch(dir=tmp_path)
    mon.log(loss=1.0)
    assert not mon.enabled and not (tmp_path / mon.run_id).exists()
    mon.close()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("TUIMON_DISABLE", "1")
    assert not tuimon_agent.watch(dir=tmp_path).enabled


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_publishes_or_writes(tmp_path: Path) -> None:
    mon = tuimon_agent.watch(dir=tmp_path)
    mon.log(loss=1.0)
    pid = os.fork()
    if pid == 0:  # the child: log, close, exit without running the parent's atexit
        try:
            for i in range(1000):
                mon.log(loss=float(i), child=1.0)
            mon.close()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert discovery.live_runs()[0].run_id == mon.run_id  # the child did not remove the parent's files
    mon.log(loss=2.0)
    mon.close()
    metrics = [r.data["values"] for r in _records(mon) if r.kind == protocol.METRICS]
    assert metrics == [{"loss": 1.0}, {"loss": 2.0}]


def test_dataloader_workers_do_not_publish(tmp_path: Path) -> None:
    class Data(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 64

        def __getitem__(self, i: int) -> torch.Tensor:
            mon.log(in_worker=1.0)  # a worker touching the monitor must be a no-op
            return torch.randn(4)

    mon = tuimon_agent.watch(dir=tmp_path)
    loader = torch.utils.data.DataLoader(Data(), batch_size=16, num_workers=2, multiprocessing_context="fork")
    for batch in loader:
        mon.log(loss=float(batch.sum()))
    mon.close()
    names = {n for r in _records(mon) if r.kind == protocol.METRICS for n in r.data["values"]}
    assert names == {"loss"}


def test_importing_the_agent_pulls_in_no_ui_and_no_torch() -> None:
    code = (
        "import sys, tuimon_agent, tuimon_agent.protocol, tuimon_agent.runfile, tuimon_agent.discovery\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich', 'tuimon', 'torch', 'plotext'))\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_odd_steps_are_converted_or_kept_without_a_step(tmp_path: Path) -> None:
    import numpy as np

    with tuimon_agent.watch(dir=tmp_path, publish=False) as mon:
        mon.log(step=np.int64(5), loss=1.0)
        mon.log(step=torch.tensor(7), loss=1.0)
        mon.log(step=9.0, loss=1.0)
        mon.log(step="ten", loss=1.0)
        mon.log(step=2**70, loss=1.0)
        mon.log(step=1.5, loss=1.0)
    recs = _records(mon)
    assert [r.step for r in recs if r.kind == protocol.METRICS] == [5, 7, 9, None, None, None]
    assert [r.data["what"] for r in recs if r.kind == protocol.EVENT] == ["bad_step"]
    assert recs[-1].kind == protocol.END and mon.enabled is False  # closed normally, not disabled by an error
