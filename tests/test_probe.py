"""Feature maps of a fixed probe input (``feature_maps``): equal to an independent reference, harmless to training
(outputs, gradients, buffers, modes and RNG bit-identical), hooks gone after close, failures contained."""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import tuimon_agent
from tuimon_agent import probe as probe_mod
from tuimon_agent import protocol
from tuimon_agent.runfile import RunFileReader


class Noisy(nn.Module):
    """Draws random numbers in every forward, eval mode included: the probe must not shift the training's RNG."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.01 * torch.randn_like(x)


def make_cnn() -> nn.Sequential:
    """A small CNN on 1×40×40 images: conv → norm → ReLU, dropout, a second conv and ReLU, a linear head. Its maps
    (40×40 and 20×20) are bigger than the 32-pixel limit for the first layer and smaller for the second."""
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 6, 3, padding=1),
            bn1=nn.BatchNorm2d(6),
            relu1=nn.ReLU(),
            drop=nn.Dropout(0.3),
            noise=Noisy(),
            conv2=nn.Conv2d(6, 10, 3, stride=2, padding=1),
            relu2=nn.ReLU(),
            flat=nn.Flatten(),
            fc=nn.Linear(10 * 20 * 20, 3),
        )
    )


def _records(mon: tuimon_agent.Monitor, kind: str) -> list[protocol.Record]:
    assert mon.run_file is not None
    with RunFileReader(mon.run_file) as r:
        return [rec for rec in r.records() if rec.kind == kind]


def _batch(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(8, 1, 40, 40, generator=gen), torch.randint(0, 3, (8,), generator=gen)


# -- an independent reference: numpy pooling and scaling ----------------------------------------------------------


def _np_adaptive_avg(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """``adaptive_avg_pool2d`` written out: output cell i covers rows floor(i·H/oh) .. ceil((i+1)·H/oh)."""
    c, h, w = x.shape
    out = np.empty((c, out_h, out_w), dtype=np.float64)
    for i in range(out_h):
        r0, r1 = (i * h) // out_h, -((-(i + 1) * h) // out_h)
        for j in range(out_w):
            c0, c1 = (j * w) // out_w, -((-(j + 1) * w) // out_w)
            out[:, i, j] = x[:, r0:r1, c0:c1].astype(np.float64).mean(axis=(1, 2))
    return out


def _reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels, per-channel min and max of ``[C, H, W]`` maps, as the protocol describes them."""
    c, h, w = x.shape
    s = 32 / max(h, w)
    size = (h, w) if max(h, w) <= 32 else (max(1, round(h * s)), max(1, round(w * s)))
    pooled = _np_adaptive_avg(x, *size) if size != (h, w) else x.astype(np.float64)
    lo = pooled.reshape(c, -1).min(1)
    hi = pooled.reshape(c, -1).max(1)
    span = np.where(hi > lo, hi - lo, 1.0)
    px = np.where((hi > lo)[:, None, None], (pooled - lo[:, None, None]) / span[:, None, None], 0.0)
    return np.round(np.clip(px, 0, 1) * 255).astype(np.int64), lo, hi


def _reference_maps(model: nn.Module, probe: torch.Tensor, names: list[str]) -> dict[str, np.ndarray]:
    """Run ``model`` on the probe as the test itself would (eval, no_grad), capture the named outputs."""
    got: dict[str, np.ndarray] = {}
    mods = dict(model.named_modules())

    def keep(name: str) -> Any:
        def hook(module: nn.Module, args: Any, out: torch.Tensor) -> None:
            got.setdefault(name, out[0].detach().numpy().copy())

        return hook

    hooks = [mods[n].register_forward_hook(keep(n)) for n in names]
    modes = {m: m.training for m in model.modules()}
    state = torch.random.get_rng_state()
    try:
        model.eval()
        with torch.no_grad():
            model(probe[None])
    finally:
        for h in hooks:
            h.remove()
        for m, t in modes.items():
            m.training = t
        torch.random.set_rng_state(state)
    return got


def test_recorded_feature_maps_equal_an_independent_reference(one_torch_thread: None) -> None:
    torch.manual_seed(0)
    model = make_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    probe = torch.randn(1, 40, 40)
    mon = tuimon_agent.watch(model, opt, publish=False, probe=probe, probe_every=1, probe_channels=8)
    expected: dict[int, dict[str, np.ndarray]] = {}
    gen = torch.Generator().manual_seed(1)
    try:
        for step in range(1, 5):
            x, y = _batch(gen)
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()  # the probe runs here, after the update
            expected[step] = _reference_maps(model, probe, ["relu1", "relu2"])
            mon.log(loss=loss)
    finally:
        mon.close()
    recs = _records(mon, protocol.FEATURE_MAPS)
    assert [r.step for r in recs] == [1, 2, 3, 4]
    for rec in recs:
        d = rec.data
        assert d["every"] == 1
        assert [layer["name"] for layer in d["layers"]] == ["relu1", "relu2"]  # each conv seen after its ReLU
        for layer in d["layers"]:
            raw = expected[rec.step][layer["name"]]
            assert layer["type"] == "ReLU"
            assert layer["shape"] == list(raw.shape)
            assert layer["channels"] == list(range(min(8, raw.shape[0])))
            px, lo, hi = _reference(raw[layer["channels"]])
            assert layer["maps"].dtype == np.uint8 and layer["maps"].shape == px.shape
            assert np.abs(layer["maps"].astype(np.int64) - px).max() <= 1  # float32 vs float64 rounding
            np.testing.assert_allclose(layer["min"], lo, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(layer["max"], hi, rtol=1e-5, atol=1e-6)
            assert not layer["nonfinite"].any()
        assert [layer["maps"].shape for layer in d["layers"]] == [(6, 32, 32), (8, 20, 20)]
        img = d["input"]
        assert img["shape"] == [1, 40, 40] and img["rgb"] is False
        px, lo, hi = _reference(probe.numpy())
        assert np.abs(img["maps"].astype(np.int64) - px).max() <= 1
        np.testing.assert_allclose(img["min"], lo, rtol=1e-5)
    # The maps change as the model learns.
    assert not np.array_equal(recs[0].data["layers"][1]["maps"], recs[-1].data["layers"][1]["maps"])


def _train_run(with_probe: bool, steps: int = 6) -> dict[str, Any]:
    """Train the CNN from a fixed seed with the monitor (statistics every step), with or without the probe; return
    every output, gradient, parameter and buffer, the module modes and the RNG state at the end."""
    torch.manual_seed(0)
    model = make_cnn()
    model.drop.eval()  # a module the user switched off: its mode must come back as it was, not as train() sets it
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    image = torch.randn(1, 40, 40, generator=torch.Generator().manual_seed(5))  # leaves the global RNG alone
    probe = {"probe": image, "probe_every": 1} if with_probe else {}
    mon = tuimon_agent.watch(model, opt, publish=False, stats_every=1, hist_every=0, **probe)
    seen: list[list[torch.Tensor]] = []
    modes: list[list[bool]] = []
    try:
        for _ in range(steps):
            x, y = torch.randn(8, 1, 40, 40), torch.randint(0, 3, (8,))  # the global RNG: must not be shifted
            out = model(x)
            loss = nn.functional.cross_entropy(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.log(loss=loss)
            seen.append([out.detach().clone()] + [p.grad.clone() for p in model.parameters()])
            seen[-1] += [t.detach().clone() for t in model.state_dict().values()]
            modes.append([m.training for m in model.modules()])
    finally:
        mon.close()
    return {"seen": seen, "modes": modes, "rng": torch.random.get_rng_state(), "mon": mon}


def test_training_is_bit_identical_with_and_without_the_probe(one_torch_thread: None) -> None:
    a = _train_run(with_probe=False)
    b = _train_run(with_probe=True)
    assert len(_records(b["mon"], protocol.FEATURE_MAPS)) == 6  # the probe did run at every step
    assert not _records(a["mon"], protocol.FEATURE_MAPS)
    for step, (ta, tb) in enumerate(zip(a["seen"], b["seen"], strict=True), 1):
        for i, (x, y) in enumerate(zip(ta, tb, strict=True)):
            assert torch.equal(x, y), f"tensor {i} differs at step {step}"
    assert a["modes"] == b["modes"]
    assert a["modes"][0][4] is False and all(a["modes"][0][:4])  # drop stayed off, the rest training
    # bn1 trains (its running statistics move) and the probe's eval forward wrote none of them: compared above.
    assert torch.equal(a["rng"], b["rng"])
    # The activation statistics measured the same training forwards: the probe's forward was not one of them.
    acts_a, acts_b = (_records(r["mon"], protocol.ACT_STATS) for r in (a, b))
    assert [r.step for r in acts_a] == [r.step for r in acts_b] == list(range(1, 7))
    for ra, rb in zip(acts_a, acts_b, strict=True):
        np.testing.assert_array_equal(ra.data["mean"], rb.data["mean"])


def _hook_counts(model: nn.Module, opt: torch.optim.Optimizer) -> tuple[int, ...]:
    per_module = tuple(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return (*per_module, len(opt._optimizer_step_pre_hooks), len(opt._optimizer_step_post_hooks))


def test_capture_hooks_live_for_one_call_and_every_hook_is_gone_after_close() -> None:
    torch.manual_seed(0)
    model = make_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    before = _hook_counts(model, opt)
    mon = tuimon_agent.watch(model, opt, publish=False, probe=torch.randn(1, 40, 40), probe_every=1)
    installed = _hook_counts(model, opt)
    assert installed[-1] > before[-1]  # the probe's step hook (among others)
    x, y = torch.randn(4, 1, 40, 40), torch.randint(0, 3, (4,))
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.log(loss=loss)
        assert _hook_counts(model, opt) == installed  # no capture hook left behind
    mon.close()
    assert _hook_counts(model, opt) == before
    assert len(_records(mon, protocol.FEATURE_MAPS)) == 3


def test_an_exception_in_the_probe_turns_it_off_with_one_warning(capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    model = make_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    bad_probe = torch.randn(
        3, 40, 40
    )  # three channels for a one-channel convolution: the probe's forward raises
    mon = tuimon_agent.watch(model, opt, publish=False, stats_every=1, probe=bad_probe, probe_every=1)
    x, y = torch.randn(4, 1, 40, 40), torch.randint(0, 3, (4,))
    try:
        for _ in range(5):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.log(loss=loss)
            assert model.training and model.conv1.training  # modes restored although the forward raised
        assert mon.enabled  # only the probe is off
    finally:
        mon.close()
    err = capsys.readouterr().err
    assert err.count("feature-map probe disabled") == 1
    assert "RuntimeError" in err
    events = [r.data for r in _records(mon, protocol.EVENT) if r.data["what"] == "probe_off"]
    assert len(events) == 1 and "RuntimeError" in events[0]["message"]
    assert not _records(mon, protocol.FEATURE_MAPS)
    assert [r.step for r in _records(mon, protocol.PARAM_STATS)] == [1, 2, 3, 4, 5]  # the rest went on
    assert len(_records(mon, protocol.METRICS)) == 5


def test_sampling_layers_and_channels_as_asked(one_torch_thread: None) -> None:
    torch.manual_seed(0)
    model = make_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = tuimon_agent.watch(
        model,
        opt,
        publish=False,
        probe=torch.randn(2, 1, 40, 40),  # a batch: its first sample is the probe
        probe_every=3,
        probe_layers=["conv2", "fc"],
        probe_channels=[1, 3, 99],
    )
    x, y = torch.randn(4, 1, 40, 40), torch.randint(0, 3, (4,))
    try:
        for _ in range(7):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.log(loss=loss)
    finally:
        mon.close()
    recs = _records(mon, protocol.FEATURE_MAPS)
    assert [r.step for r in recs] == [1, 3, 6]  # the first step, then every third
    layers = recs[0].data["layers"]
    assert [(la["name"], la["type"], la["channels"]) for la in layers] == [
        ("conv2", "Conv2d", [1, 3]),
        (
            "fc",
            "Linear",
            [1],
        ),  # a Linear output has one "pixel" per feature; index 3 is out of range (3 logits)
    ]
    assert layers[0]["maps"].shape == (2, 20, 20)


def test_default_layers_follow_each_conv_to_its_activation_and_spread_over_many() -> None:
    small = nn.Sequential(
        OrderedDict(
            c1=nn.Conv2d(1, 2, 3),
            n1=nn.BatchNorm2d(2),
            a1=nn.GELU(),
            c2=nn.Conv2d(2, 2, 3),
            p2=nn.MaxPool2d(2),  # a pool comes first: the convolution itself
            a2=nn.ReLU(),
        )
    )
    assert probe_mod.default_layers(small) == ["a1", "c2"]
    deep = nn.Sequential(*[m for _ in range(7) for m in (nn.Conv2d(2, 2, 3, padding=1), nn.ReLU())])
    assert probe_mod.default_layers(deep) == ["1", "5", "9", "13"]  # the first, the last and two between
    assert probe_mod.default_layers(nn.Sequential(nn.Linear(2, 2))) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"probe_layers": ["conv1", "nope"]}, "'nope'"),
        ({"probe_channels": 0}, "probe_channels=0"),
        ({"probe_channels": [-1]}, "probe_channels=[-1]"),
        ({"probe_every": -1}, "probe_every=-1"),
        ({"probe": [[1.0]]}, "probe=list"),
        ({"probe": torch.randn(1, 1, 1, 4, 4)}, "(1, 1, 1, 4, 4)"),
    ],
)
def test_bad_probe_options_raise_with_the_value(options: dict[str, Any], message: str) -> None:
    model = make_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    kwargs = {"probe": torch.randn(1, 40, 40), **options}
    with pytest.raises(ValueError, match=None) as info:
        tuimon_agent.watch(model, opt, publish=False, **kwargs)
    assert message in str(info.value)


def test_a_probe_needs_an_optimizer_and_a_conv_or_named_layers() -> None:
    with pytest.raises(ValueError, match="needs watch"):
        tuimon_agent.watch(make_cnn(), None, publish=False, probe=torch.randn(1, 40, 40))
    mlp = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="no Conv2d"):
        tuimon_agent.watch(
            mlp, torch.optim.SGD(mlp.parameters(), lr=0.1), publish=False, probe=torch.randn(4)
        )


def test_downsample_scales_each_channel_and_reports_non_finite_values() -> None:
    x = torch.zeros(4, 2, 3)
    x[0] = torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])
    x[1] = 7.0  # constant: all zero pixels, min = max
    x[2] = torch.tensor([[math.nan, 1.0, 3.0], [math.inf, -1.0, 0.0]])
    x[3] = math.nan  # no finite pixel
    px, ranges, bad = probe_mod.downsample(x)
    assert px[0].tolist() == [[0, 51, 102], [153, 204, 255]]
    assert px[1].tolist() == [[0, 0, 0], [0, 0, 0]]
    assert px[2].tolist() == [[0, 128, 255], [255, 0, 64]]  # NaN → 0, +Inf → 255; range over finite values
    assert ranges[:, :3].tolist() == [[0.0, 7.0, -1.0], [5.0, 7.0, 3.0]]
    assert math.isnan(ranges[0, 3]) and math.isnan(ranges[1, 3])
    assert bad.tolist() == [0.0, 0.0, 1.0, 1.0]
    assert probe_mod.map_size(64, 128) == (16, 32) and probe_mod.map_size(8, 8) == (8, 8)
    assert probe_mod.map_size(1, 1000) == (1, 32)


def test_rgb_probe_image_keeps_its_colours() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    img = torch.zeros(3, 4, 4)
    img[0] = 1.0  # pure red
    mon = tuimon_agent.watch(model, opt, publish=False, probe=img)
    try:
        model(torch.randn(2, 3, 4, 4)).sum().backward()
        opt.step()
    finally:
        mon.close()
    (rec,) = _records(mon, protocol.FEATURE_MAPS)
    inp = rec.data["input"]
    assert inp["rgb"] is True and inp["maps"].shape == (3, 4, 4)
    assert (inp["maps"][0] == 255).all() and (inp["maps"][1:] == 0).all()  # one range for the three channels


def test_the_probe_follows_the_models_floating_dtype() -> None:
    """The probe is converted at watch() to the model's device and floating dtype, and again if the model is cast
    later (here to float64 after watch())."""
    model = make_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = tuimon_agent.watch(model, opt, publish=False, probe=torch.randn(1, 40, 40), probe_every=1)
    try:
        for dtype in (torch.float32, torch.float64):
            model.to(dtype)
            model(torch.randn(2, 1, 40, 40, dtype=dtype)).sum().backward()
            opt.step()
            mon.log(loss=0.0)
    finally:
        mon.close()
    assert [r.step for r in _records(mon, protocol.FEATURE_MAPS)] == [1, 2]
    assert not [r for r in _records(mon, protocol.EVENT) if r.data["what"] == "probe_off"]


def test_feature_maps_records_round_trip_through_the_protocol(tmp_path: Path) -> None:
    d = probe_mod.probe_payload(
        [torch.arange(8, dtype=torch.uint8), torch.tensor([[0.0, -1.0], [1.0, 2.0], [0.0, 1.0]])],
        None,
        [{"name": "a", "type": "ReLU", "shape": [2, 2, 2], "channels": [0, 5], "size": [2, 2, 2]}],
        None,
        7,
    )
    rec = protocol.decode(protocol.encode(protocol.Record(protocol.FEATURE_MAPS, 1, 3, 0.0, d)))
    (layer,) = rec.data["layers"]
    assert layer["maps"].tolist() == [[[0, 1], [2, 3]], [[4, 5], [6, 7]]]
    assert layer["min"].tolist() == [0.0, -1.0] and layer["max"].tolist() == [1.0, 2.0]
    assert layer["nonfinite"].tolist() == [0, 1] and layer["channels"] == [0, 5]
    assert rec.data["input"] is None and rec.data["every"] == 7


def test_a_compiled_model_is_probed_eagerly_without_recompiling(tmp_path: Path) -> None:
    """Under ``torch.compile`` the probe runs the user's module eagerly; its temporary hooks and eval mode never
    make the compiled training forward recompile (dynamo's ``error_on_recompile`` would raise)."""
    import torch._dynamo as dynamo

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    compiled = torch.compile(model, backend="eager")  # dynamo only: no C compiler needed
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = tuimon_agent.watch(
        compiled, opt, dir=tmp_path, publish=False, probe=torch.randn(1, 8, 8), probe_every=1
    )
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 3, (4,))
    try:
        for step in range(4):
            loss = nn.functional.cross_entropy(compiled(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.log(loss=loss)
            if step == 0:
                dynamo.config.error_on_recompile = True
    finally:
        dynamo.config.error_on_recompile = False
        mon.close()
        dynamo.reset()
    recs = _records(mon, protocol.FEATURE_MAPS)
    assert [r.step for r in recs] == [1, 2, 3, 4]
    assert [layer["name"] for layer in recs[0].data["layers"]] == [
        "1"
    ]  # names of the user's module, unwrapped
