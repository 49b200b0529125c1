"""``shape_trace`` and ``data_check`` on real torch models and data, each planted bug caught with the right advice.

Every model is built under a fixed seed so the numbers (and therefore the verdicts) are the same on every run.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset, TensorDataset  # noqa: E402

from tuimon_agent.checks.data import data_check  # noqa: E402
from tuimon_agent.checks.shapes import shape_trace  # noqa: E402

ROW_KEYS = ["module", "type", "in_shape", "out_shape", "dtype", "device", "params", "nonfinite"]


def cnn(*tail: nn.Module) -> nn.Sequential:
    """A correct small CNN for 1×8×8 images and 10 classes, with optional extra final layers."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 10), *tail
    )


@pytest.fixture
def batch() -> tuple[Any, Any]:
    """Eight standard-normal 1×8×8 images and their class labels, seeded."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything shape_trace must leave alone: weights, buffers, modes."""
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "modes": [m.training for m in model.modules()],
    }


def assert_untouched(model: nn.Module, before: dict[str, Any]) -> None:
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
        assert not m._forward_hooks_with_kwargs and not m._forward_pre_hooks_with_kwargs
    assert [m.training for m in model.modules()] == before["modes"]
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before["state"].items())


# shape_trace ---------------------------------------------------------------------------------------------------


def test_correct_cnn_passes_with_a_row_per_call(batch: tuple[Any, Any]) -> None:
    model = cnn()
    before, rng = snapshot(model), torch.get_rng_state()
    r = shape_trace(model, batch[0], targets=batch[1], loss_fn=nn.CrossEntropyLoss())
    assert r.name == "shape_trace" and r.verdict == "pass", r.report()
    assert [list(row) for row in r.table] == [ROW_KEYS] * 6
    assert [
        (row["module"], row["type"], row["in_shape"], row["out_shape"], row["params"]) for row in r.table
    ] == [
        ("(model)", "Sequential", "8×1×8×8", "8×10", 0),
        ("0", "Conv2d", "8×1×8×8", "8×4×8×8", 40),
        ("1", "ReLU", "8×4×8×8", "8×4×8×8", 0),
        ("2", "MaxPool2d", "8×4×8×8", "8×4×4×4", 0),
        ("3", "Flatten", "8×4×4×4", "8×64", 0),
        ("4", "Linear", "8×64", "8×10", 650),
    ]
    assert all(
        row["dtype"] == "float32" and row["device"] == "cpu" and not row["nonfinite"] for row in r.table
    )
    assert r.numbers["params"] == 690 and r.numbers["calls"] == 6 and r.numbers["fails"] == 0
    assert 0 < r.seconds < 5 and r.to_data()["table"][0]["module"] == "(model)"
    assert_untouched(model, before)
    assert torch.equal(torch.get_rng_state(), rng)


class Twice(nn.Module):
    """Calls the same activation twice, and takes two inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(3, 5), nn.Linear(5, 2), nn.Tanh()

    def forward(self, x: Any, scale: Any) -> Any:
        return self.fc2(self.act(self.fc1(x))) * self.act(scale)


@pytest.mark.parametrize("as_dict", [False, True])
def test_a_module_called_twice_has_two_rows_and_inputs_may_be_a_tuple_or_dict(as_dict: bool) -> None:
    x, scale = torch.randn(4, 3), torch.ones(4, 1)
    r = shape_trace(Twice(), {"x": x, "scale": scale} if as_dict else (x, scale))
    assert r.verdict == "pass", r.report()
    assert [row["module"] for row in r.table] == ["(model)", "fc1", "act", "fc2", "act"]
    assert r.table[0]["in_shape"] == "4×3, 4×1" and r.table[-1]["in_shape"] == "4×1"


def test_train_mode_and_batchnorm_statistics_are_restored(batch: tuple[Any, Any]) -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Dropout(0.5), nn.Flatten(), nn.Linear(72, 3)
    )
    model.train()
    model[2].eval()  # a mixed mode must come back exactly
    before, rng = snapshot(model), torch.get_rng_state()
    assert shape_trace(model, batch[0]).verdict == "pass"
    assert_untouched(model, before)
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize(
    ("loss_fn", "verdict", "name"),
    [
        (nn.MSELoss(), "fail", "MSELoss"),
        (nn.BCEWithLogitsLoss(), "fail", "BCEWithLogitsLoss"),
        (nn.functional.l1_loss, "fail", "l1_loss"),
        (None, "warn", "an elementwise loss"),
    ],
)
def test_n_by_1_predictions_against_n_targets_broadcast(loss_fn: Any, verdict: str, name: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
    r = shape_trace(model, torch.randn(8, 3), targets=torch.rand(8), loss_fn=loss_fn)
    assert r.verdict == verdict and r.summary == f"prediction 8×1 and target 8 broadcast to 8×8 in {name}", (
        r.report()
    )
    assert "squeeze(-1)" in r.explanation
    ok = shape_trace(model, torch.randn(8, 3), targets=torch.rand(8, 1), loss_fn=loss_fn)
    assert ok.verdict == "pass", ok.report()


@pytest.mark.parametrize("final", [nn.Softmax(dim=1), nn.LogSoftmax(dim=1)])
def test_softmax_or_log_softmax_into_cross_entropy_fails(batch: tuple[Any, Any], final: nn.Module) -> None:
    r = shape_trace(cnn(final), batch[0], targets=batch[1], loss_fn=nn.CrossEntropyLoss())
    assert r.verdict == "fail", r.report()
    assert f"CrossEntropyLoss is fed a final {type(final).__name__}" in r.summary
    assert "applies log-softmax itself" in r.explanation and "NLLLoss" in r.explanation
    if isinstance(final, nn.LogSoftmax):  # the right pairing for LogSoftmax passes
        assert shape_trace(cnn(final), batch[0], targets=batch[1], loss_fn=nn.NLLLoss()).verdict == "pass"


class FunctionalSoftmax(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 4)

    def forward(self, x: Any) -> Any:
        return torch.softmax(self.fc(x), dim=-1)


def test_probabilities_from_a_functional_softmax_are_recognized() -> None:
    r = shape_trace(
        FunctionalSoftmax(),
        torch.randn(8, 6),
        targets=torch.zeros(8, dtype=torch.long),
        loss_fn=nn.CrossEntropyLoss(),
    )
    assert r.verdict == "fail" and "outputs that are probabilities" in r.summary, r.report()


@pytest.mark.parametrize(
    ("dtype", "text"), [(torch.long, "will error or be silently cast"), (torch.float64, "float64 input")]
)
def test_integer_or_float64_inputs_fail_even_though_the_forward_raises(
    batch: tuple[Any, Any], dtype: Any, text: str
) -> None:
    model = cnn()
    before = snapshot(model)
    r = shape_trace(model, batch[0].to(dtype), targets=batch[1], loss_fn=nn.CrossEntropyLoss())
    assert r.verdict == "fail" and text in r.report(), r.report()
    assert "reaches '0' (Conv2d)" in r.summary and "raised RuntimeError" in r.summary
    assert "the forward raised in '0' (Conv2d): RuntimeError" in r.explanation
    assert [row["module"] for row in r.table] == ["(model)", "0"] and r.table[1]["out_shape"] == ""
    assert_untouched(model, before)


def test_integer_ids_into_an_embedding_pass() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(20, 4), nn.Flatten(), nn.Linear(12, 2))
    assert shape_trace(model, torch.randint(0, 20, (5, 3))).verdict == "pass"


def test_channels_last_images_into_conv2d_fail_with_the_permute(batch: tuple[Any, Any]) -> None:
    model = cnn()
    before = snapshot(model)
    r = shape_trace(model, batch[0].permute(0, 2, 3, 1), targets=batch[1], loss_fn=nn.CrossEntropyLoss())
    assert r.verdict == "fail" and "channels-last input 8×8×8×1" in r.summary, r.report()
    assert "permute(0, 3, 1, 2)" in r.explanation
    assert_untouched(model, before)


class ViewMixesBatch(nn.Module):
    """Flattens with ``view(-1, 32)`` where the real feature size is 64: a batch of 8 becomes 16 rows."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.pool, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.MaxPool2d(2), nn.Linear(32, 10)

    def forward(self, x: Any) -> Any:
        return self.fc(self.pool(self.conv(x)).view(-1, 32))


def test_a_view_that_mixes_the_batch_dimension_fails(batch: tuple[Any, Any]) -> None:
    r = shape_trace(ViewMixesBatch(), batch[0], targets=batch[1], loss_fn=nn.CrossEntropyLoss())
    assert r.verdict == "fail", r.report()
    assert "batch dimension changed from 8 to 16 before 'fc'" in r.summary
    assert "x.view(x.size(0), -1) instead of x.view(-1, k)" in r.explanation
    assert r.table[0]["out_shape"] == "16×10"


class SequenceModel(nn.Module):
    """Token and position embeddings and a sequence-first attention layer: dim 0 is not always the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(50, 16), nn.Embedding(6, 16)
        self.attn, self.head = nn.MultiheadAttention(16, 2), nn.Linear(16, 3)

    def forward(self, ids: Any) -> Any:
        h = (self.tok(ids) + self.pos(torch.arange(ids.shape[1]))).transpose(0, 1)
        return self.head(self.attn(h, h, h)[0].mean(0))


class BadView(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(48, 2)

    def forward(self, x: Any) -> Any:
        return self.fc(x.view(-1, 48))


def test_code_that_raises_in_the_model_itself_and_user_hooks_survive() -> None:
    model, calls = BadView(), []
    model.register_forward_pre_hook(lambda m, args: calls.append(1))
    r = shape_trace(model, torch.randn(8, 64))
    assert r.verdict == "fail" and "the forward raised in '(model)' (BadView): RuntimeError" in r.summary
    assert (
        [row["out_shape"] for row in r.table] == [""] and len(model._forward_pre_hooks) == 1 and calls == [1]
    )
    assert not model.fc._forward_hooks and not model.fc._forward_pre_hooks


def test_position_ids_and_sequence_first_layers_are_not_batch_mixing() -> None:
    torch.manual_seed(0)
    r = shape_trace(
        SequenceModel(),
        torch.randint(0, 50, (4, 6)),
        targets=torch.randint(0, 3, (4,)),
        loss_fn=nn.CrossEntropyLoss(),
    )
    assert r.verdict == "pass", r.report()


class Log(nn.Module):
    def forward(self, x: Any) -> Any:
        return torch.log(x - 10)  # NaN for every input below 10


def test_the_first_module_producing_nan_is_named() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), Log(), nn.Linear(4, 2))
    r = shape_trace(model, torch.randn(8, 3))
    assert r.verdict == "fail" and "NaN/Inf first appears in the output of '1' (Log)" in r.summary, r.report()
    assert "its inputs were finite" in r.explanation
    assert [row["nonfinite"] for row in r.table] == [True, False, True, True]


def test_invalid_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError, match="invalid model"):
        shape_trace("not a model", torch.zeros(1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="invalid inputs"):
        shape_trace(nn.Linear(1, 1), 3.0)
    with pytest.raises(ValueError, match="invalid loss_fn"):
        shape_trace(nn.Linear(1, 1), torch.zeros(1, 1), loss_fn=3)  # type: ignore[arg-type]


# data_check ----------------------------------------------------------------------------------------------------


@pytest.fixture
def images() -> tuple[Any, Any]:
    """64 standardized 1×8×8 images with labels 0-3, seeded."""
    g = torch.Generator().manual_seed(2)
    return torch.randn(64, 1, 8, 8, generator=g), torch.arange(64) % 4


def test_standardized_inputs_pass(images: tuple[Any, Any]) -> None:
    r = data_check(*images, num_classes=4)
    assert r.name == "data_check" and r.verdict == "pass", r.report()
    assert r.numbers["samples"] == 64 and r.numbers["classes_seen"] == 4 and abs(r.numbers["mean"]) < 0.1
    assert r.table[0]["channel"] == 0 and [row["count"] for row in r.table[1:]] == [16] * 4


def test_the_report_prints_the_channel_and_class_tables_apart(images: tuple[Any, Any]) -> None:
    lines = data_check(*images, num_classes=4).report().splitlines()
    header_channel = next(i for i, line in enumerate(lines) if line.split()[:1] == ["channel"])
    header_class = next(i for i, line in enumerate(lines) if line.split()[:1] == ["class"])
    assert header_channel < header_class
    assert "count" not in lines[header_channel] and "mean" not in lines[header_class]
    class_rows = lines[header_class + 1 : header_class + 5]
    assert [len(row.split()) for row in class_rows] == [len(lines[header_class].split())] * 4  # no blank cells


def test_raw_pixels_fail_with_divide_by_255(images: tuple[Any, Any]) -> None:
    pixels = (torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 255).round()
    for x in (pixels, pixels.to(torch.uint8), pixels.reshape(64, 64)):  # images, bytes, flattened digits
        r = data_check(x, images[1])
        assert r.verdict == "fail" and "255" in r.summary, r.report()
        assert "divide by 255 and normalize (x - mean) / std" in r.explanation


def test_nan_inputs_fail(images: tuple[Any, Any]) -> None:
    x = images[0].clone()
    x[3, 0, 2, 2] = float("nan")
    r = data_check(x, images[1])
    assert r.verdict == "fail" and r.numbers["nan"] == 1 and "NaN" in r.summary, r.report()
    assert abs(r.numbers["mean"] - float(images[0].mean())) < 0.05  # the NaN does not poison the statistics


def test_validation_samples_copied_from_training_are_leakage(images: tuple[Any, Any]) -> None:
    val = torch.randn(20, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    val[[2, 9, 15]] = images[0][[5, 6, 40]].double().float()
    r = data_check(*images, val=(val, torch.zeros(20, dtype=torch.long)))
    assert r.verdict == "fail" and r.numbers["val_overlap"] == 3, r.report()
    assert "3 validation samples also appear in training: leakage" in r.summary
    assert data_check(*images, val=val[:2]).verdict == "pass"


def test_labels_never_seen_out_of_range_single_or_imbalanced(images: tuple[Any, Any]) -> None:
    x, y = images
    r = data_check(x, y % 3, num_classes=4)
    assert r.verdict == "warn" and r.numbers["missing_classes"] == 1 and "class 3" in r.summary, r.report()
    r = data_check(x, y + 1, num_classes=4)
    assert r.verdict == "fail" and "num_classes=4" in r.summary, r.report()
    r = data_check(x, (torch.arange(64) < 60).long())
    assert r.verdict == "warn" and "imbalanced 15:1" in r.summary, r.report()


def test_features_on_different_scales_warn() -> None:
    x = torch.randn(256, 4, generator=torch.Generator().manual_seed(5)) * torch.tensor([1e-4, 1.0, 1.0, 2.0])
    r = data_check(x, torch.randn(256))
    assert r.verdict == "warn" and "standardize features" in r.explanation, r.report()
    assert r.table[0]["feature"] == 0 and len(r.table) == 4 and "target_mean" in r.numbers


class Counting(Dataset):
    """A dataset that counts the samples asked of it."""

    def __init__(self, x: Any, y: Any) -> None:
        self.x, self.y, self.reads = x, y, 0

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        self.reads += 1
        return self.x[i], self.y[i]


def test_a_loader_of_dicts_is_read(images: tuple[Any, Any]) -> None:
    loader = [{"image": images[0][i : i + 8], "label": images[1][i : i + 8]} for i in range(0, 64, 8)]
    r = data_check(loader=loader, batches=4, num_classes=4)
    assert r.verdict == "pass" and r.numbers["samples"] == 32 and r.numbers["labels"] == 32, r.report()


def test_a_loader_is_read_for_at_most_batches_batches(images: tuple[Any, Any]) -> None:
    data = Counting(*images)
    rng, py = torch.get_rng_state(), random.getstate()
    r = data_check(loader=DataLoader(data, batch_size=4, shuffle=True), batches=3, num_classes=4)
    assert r.verdict == "pass" and r.numbers["batches"] == 3 and r.numbers["samples"] == 12, r.report()
    assert data.reads == 12
    assert torch.equal(torch.get_rng_state(), rng) and random.getstate() == py


def test_an_unshuffled_loader_of_sorted_labels_fails(images: tuple[Any, Any]) -> None:
    loader = DataLoader(TensorDataset(images[0], torch.sort(images[1]).values), batch_size=4)
    r = data_check(loader=loader, batches=3)
    assert r.verdict == "fail" and "every one of the 12 labels is class 0" in r.summary, r.report()
    assert "shuffle=True" in r.explanation


class Broken(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> Any:
        raise KeyError(i)


def test_unreadable_data_is_an_error_and_bad_arguments_raise() -> None:
    r = data_check(loader=DataLoader(Broken(), batch_size=2))
    assert r.verdict == "error" and "KeyError on batch 0" in r.summary, r.report()
    assert data_check(loader=[(["a", "b"], None)]).verdict == "error"
    with pytest.raises(ValueError, match="neither"):
        data_check()
    with pytest.raises(ValueError, match="both"):
        data_check(torch.zeros(2, 1), loader=[])
    with pytest.raises(ValueError, match="invalid batches=0"):
        data_check(torch.zeros(2, 1), batches=0)
    with pytest.raises(ValueError, match="invalid num_classes"):
        data_check(torch.zeros(2, 1), num_classes=0)
