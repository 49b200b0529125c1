"""tuimon_agent.SummaryWriter: a training loop written for torch.utils.tensorboard.SummaryWriter, run unchanged with
ours, and its run file read back (scalars, eval tags, add_scalars pairs, histograms in the viewer's histogram view,
hparams, unsupported methods, close twice, the context manager, model= and optimizer=)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tuimon import state as viewer_state
from tuimon_agent import SummaryWriter, protocol
from tuimon_agent.runfile import RunFileReader


def _records(path: Path | str) -> list[protocol.Record]:
    with RunFileReader(path) as r:
        return list(r.records())


def _series(recs: list[protocol.Record], kind: str, name: str) -> dict[int, float]:
    return {
        r.step: protocol.values_of(r)[name] for r in recs if r.kind == kind and name in protocol.values_of(r)
    }


def _tensorboard_loop(writer, steps: int = 12) -> dict[tuple[str, int], np.ndarray]:  # type: ignore[no-untyped-def]
    """A loop as TensorBoard users write it; returns the values handed to add_histogram, by (tag, step)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    seen: dict[tuple[str, int], np.ndarray] = {}
    for step in range(1, steps + 1):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        writer.add_scalar("loss/train", loss.item(), step)
        writer.add_scalar("lr", torch.tensor(opt.param_groups[0]["lr"]), global_step=step, new_style=True)
        if step % 4 == 0:
            with torch.no_grad():
                val = nn.functional.mse_loss(model(x[:16]), y[:16])
            writer.add_scalar("Loss/test", val, step)
            writer.add_scalar("val_loss", val.item(), step)
            writer.add_scalars(
                "mse", {"train": loss.item(), "val": val.item(), "gap": val.item() - loss.item()}, step
            )
            for name, p in model.named_parameters():
                writer.add_histogram(name, p, step)
                seen[(name, step)] = p.detach().numpy().ravel().copy()
            writer.add_histogram("preds", np.array([0.5, np.nan, np.inf, 1.5, 1.5]), step, bins="auto")
            seen[("preds", step)] = np.array([0.5, np.nan, np.inf, 1.5, 1.5])
    writer.add_hparams(
        {"lr": 0.1, "hidden": 8, "act": "tanh", "opt": torch.optim.SGD}, {"hparam/loss": loss.item()}
    )
    writer.add_image("img", torch.zeros(3, 4, 4), steps)
    writer.add_graph(model, x)
    writer.add_text("note", "hello", steps)
    writer.add_text("note", "again", steps)
    writer.add_embedding(torch.randn(5, 3))
    return seen


def test_a_tensorboard_loop_streams_to_tuimon(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    writer = SummaryWriter("runs/exp-sw", comment="-a", dir=tmp_path, publish=False)
    assert writer.monitor.name == "exp-sw-a" and writer.get_logdir() == "runs/exp-sw"
    seen = _tensorboard_loop(writer)
    writer.close()
    writer.close()  # safe twice
    writer.add_scalar("loss/train", 1.0, 99)  # after close: ignored, no error
    err = capfd.readouterr().err
    for method in ("add_image", "add_graph", "add_text", "add_embedding"):
        assert err.count(f"SummaryWriter.{method} is not supported") == 1, err
    assert not Path("runs/exp-sw").exists()  # no TensorBoard event files

    recs = _records(writer.monitor.run_file)
    train = _series(recs, protocol.METRICS, "loss/train")
    assert sorted(train) == list(range(1, 13))
    assert _series(recs, protocol.METRICS, "lr") == {s: pytest.approx(0.1) for s in range(1, 13)}
    for name in ("Loss/test", "val_loss", "val/mse"):
        assert sorted(_series(recs, protocol.EVAL, name)) == [4, 8, 12], name
        assert not _series(recs, protocol.METRICS, name)
    assert sorted(_series(recs, protocol.METRICS, "train/mse")) == [4, 8, 12]
    assert sorted(_series(recs, protocol.METRICS, "mse/gap")) == [4, 8, 12]
    assert _series(recs, protocol.EVAL, "val/mse")[8] == pytest.approx(
        _series(recs, protocol.METRICS, "train/mse")[8] + _series(recs, protocol.METRICS, "mse/gap")[8]
    )

    hp = [r for r in recs if r.kind == protocol.EVENT and r.data.get("what") == "hparams"]
    assert len(hp) == 1
    assert hp[0].data["hparams"] == {"lr": 0.1, "hidden": 8, "act": "tanh", "opt": str(torch.optim.SGD)}
    assert hp[0].data["metrics"]["hparam/loss"] == pytest.approx(train[12], rel=1e-6)

    # The histograms, as the protocol defines them and as the viewer's histogram view holds them.
    layers = [r for r in recs if r.kind == protocol.LAYERS]
    names = ["0.weight", "0.bias", "2.weight", "2.bias", "preds"]
    assert len(layers) == 1 and [p["name"] for p in layers[0].data["params"]] == names
    assert layers[0].data["params"][0]["shape"] == [8, 4]
    hists = [r for r in recs if r.kind == protocol.HISTOGRAMS]
    assert [r.step for r in hists] == [4, 8, 12]
    for rec in hists:
        assert rec.data["bins"] == 32
        w, g = rec.data["weight"], rec.data["grad"]
        for j, name in enumerate(names):
            x = seen[(name, rec.step)].astype(np.float64)
            f = x[np.isfinite(x)]
            want, _ = np.histogram(f, bins=32, range=(f.min(), f.max()))
            if f.min() == f.max():  # the protocol: every value in bin B // 2
                want = np.zeros(32, dtype=np.int64)
                want[16] = f.size
            assert w["counts"][j].tolist() == want.tolist(), name
            assert (w["lo"][j], w["hi"][j]) == (np.float32(f.min()), np.float32(f.max()))
            assert (w["nan"][j], w["inf"][j]) == (int(np.isnan(x).sum()), int(np.isinf(x).sum()))
        assert np.isnan(g["lo"]).all() and not g["counts"].any()
    state = viewer_state.RunState()
    state.apply_many(recs)
    assert state.hists.received == 3 and state.hists.mismatched == 0
    s = state.hists.series(state.hists.index("2.weight"), "weight")
    assert s.steps.tolist() == [4, 8, 12] and s.counts.sum() == 3 * 8
    assert state.eval_for("train/mse") is state.series("val/mse")
    end = [r for r in recs if r.kind == protocol.END]
    assert len(end) == 1 and end[0].data["reason"] == "closed"


def test_context_manager_model_optimizer_and_steps_without_global_step(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    with SummaryWriter(
        dir=tmp_path, publish=False, model=model, optimizer=opt, stats_every=5, hist_every=5
    ) as w:
        assert w.get_logdir().startswith("runs")
        for step in range(1, 11):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            w.add_scalar("train/loss", loss, step)
            w.add_scalar(
                "grad_seen", 1.0
            )  # no global_step: the latest step, as TensorBoard's writer would not
            w.add_histogram("ignored", loss.detach().expand(3), step)  # the model's own histograms win
    recs = _records(w.monitor.run_file)
    assert sorted(_series(recs, protocol.METRICS, "train/loss")) == list(range(1, 11))
    assert sorted(_series(recs, protocol.METRICS, "grad_seen")) == list(range(1, 11))
    assert [r.step for r in recs if r.kind == protocol.PARAM_STATS] == [5, 10]
    hists = [r for r in recs if r.kind == protocol.HISTOGRAMS]
    assert [r.step for r in hists] == [5, 10] and hists[0].data["weight"]["counts"].shape[0] == 4
    assert _series(recs, protocol.METRICS, "opt/lr") == {s: pytest.approx(1e-3) for s in range(1, 11)}


def test_an_exception_in_the_with_block_is_recorded_and_raised(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), SummaryWriter(dir=tmp_path, publish=False) as w:
        w.add_scalar("loss", 1.0, 1)
        raise RuntimeError("boom")
    end = [r for r in _records(w.monitor.run_file) if r.kind == protocol.END]
    assert end[0].data["reason"] == "exception"


def test_bad_values_never_raise(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    w = SummaryWriter(dir=tmp_path, publish=False)
    w.add_scalar("loss", 1.0, 1)
    w.add_histogram("h", ["not", "numbers"], 1)
    w.add_scalars("x", None, 2)  # type: ignore[arg-type]
    w.add_histogram("h", [], 2)
    w.add_scalar("loss", 2.0, 2)
    w.close()
    err = capfd.readouterr().err
    assert "add_histogram('h', ...) not recorded" in err and "add_scalars('x', ...) not recorded" in err
    recs = _records(w.monitor.run_file)
    assert _series(recs, protocol.METRICS, "loss") == {1: 1.0, 2: 2.0}


async def test_the_histograms_show_in_the_viewers_histogram_view(tmp_path: Path) -> None:
    from test_app import wait_loaded

    from tuimon.app import make_app
    from tuimon.screens import LayersScreen
    from tuimon.source import FileSource
    from tuimon.widgets import HistView

    writer = SummaryWriter("runs/hist-view", dir=tmp_path, publish=False)
    _tensorboard_loop(writer)
    writer.close()
    app = make_app(FileSource(writer.monitor.run_file))
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_loaded(pilot)
        await pilot.press("g")
        await pilot.pause()
        screen = pilot.app.screen
        assert isinstance(screen, LayersScreen)
        await pilot.press("down", "h")
        await pilot.pause()
        view = screen.query_one(HistView)
        assert view.display and view.param == "0.bias"
        first = "".join(s.text for s in view.render_line(0))
        assert first.lstrip().startswith("weights · step 12"), first


def test_the_writer_and_the_integrations_package_import_no_framework() -> None:
    code = (
        "import sys, tuimon_agent, tuimon_agent.integrations\n"
        "from tuimon_agent import SummaryWriter\n"
        "bad = [m for m in ('torch', 'lightning', 'pytorch_lightning', 'transformers', 'accelerate') if m in sys.modules]\n"
        "print(SummaryWriter.__name__, bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy(), timeout=60
    )
    assert out.stdout.strip() == "SummaryWriter []", out.stderr
