"""gradient_check, overfit_one_batch, loss_decreases and initial_loss on real small models, healthy and with bugs.

Each planted bug is one a real user makes; its test docstring says which. The models are built here, seeded, and
small enough that the whole file runs in seconds on two CPU cores.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tuimon_agent.checks.gradients import gradient_check
from tuimon_agent.checks.loss import initial_loss
from tuimon_agent.checks.training import PLAYBOOK, loss_decreases, overfit_one_batch

CE = nn.CrossEntropyLoss()


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    """Every test here runs on one torch thread (see conftest)."""


def digits(n: int = 16, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random 1×8×8 "digit" images and labels in 0..9, drawn from their own generator (not the global RNG)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


class SmallCNN(nn.Module):
    """The demo's shape, smaller: two 3×3 convolutions with ReLU, a 2×2 max-pool and a linear head, 10 classes."""

    def __init__(self, *, seed: int = 0, softmax: bool = False) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(16 * 16, 10)
        self.softmax = softmax  # the planted bug of test_initial_loss_fails_on_a_softmax_before_cross_entropy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a batch of 1×8×8 images to 10 logits (probabilities with ``softmax=True``)."""
        logits = self.head(self.features(x).flatten(1))
        return logits.softmax(dim=1) if self.softmax else logits


def mlp(*, seed: int = 0, dropout: float = 0.0) -> nn.Sequential:
    """An MLP on flattened 8×8 images: 64 -> 32 -> 10, with ReLU (and dropout, if asked)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 10))


# --- gradient_check ---------------------------------------------------------------------------------------------


class _LinearFn(torch.autograd.Function):
    """``x @ w.T + b`` with a hand-written backward; ``scale_grad_w=2`` is the planted bug."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, scale_grad_w: float
    ) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.scale_grad_w = scale_grad_w
        return x @ w.t() + b

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w = ctx.saved_tensors
        return g @ w, ctx.scale_grad_w * g.t() @ x, g.sum(0), None


class HandLinear(nn.Linear):
    """A linear layer through :class:`_LinearFn`."""

    def __init__(self, n_in: int, n_out: int, *, scale_grad_w: float = 1.0) -> None:
        super().__init__(n_in, n_out)
        self.scale_grad_w = scale_grad_w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ weight.T + bias``, with the hand-written backward."""
        return _LinearFn.apply(x, self.weight, self.bias, self.scale_grad_w)


class _SwishFn(torch.autograd.Function):
    """``x * sigmoid(beta * x)``; ``forget_term=True`` drops the product rule's second term from ``d/dx``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, beta: torch.Tensor, forget_term: bool) -> torch.Tensor:
        s = torch.sigmoid(beta * x)
        ctx.save_for_backward(x, beta, s)
        ctx.forget_term = forget_term
        return x * s

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, beta, s = ctx.saved_tensors
        ds = s * (1 - s)
        dx = s if ctx.forget_term else s + beta * x * ds
        return g * dx, (g * x * x * ds).sum().reshape(beta.shape), None


class Swish(nn.Module):
    """A learnable-``beta`` swish activation through :class:`_SwishFn`."""

    def __init__(self, *, forget_term: bool = False) -> None:
        super().__init__()
        self.beta = nn.Parameter(torch.tensor(1.3))
        self.forget_term = forget_term

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Swish with the hand-written backward."""
        return _SwishFn.apply(x, self.beta, self.forget_term)


def test_gradient_check_passes_on_the_cnn_and_the_mlp() -> None:
    x, y = digits(4)
    for model in (SmallCNN(), mlp()):
        result = gradient_check(model, x, y, CE)
        assert result.verdict == "pass", result.report()
        assert result.name == "gradient_check" and result.numbers["mode"].startswith("float64, eval mode")
        assert {r["status"] for r in result.table} == {"ok"}
        assert result.numbers["forward_passes"] <= 1 + 2 * 64 * len(result.table)


def test_gradient_check_without_a_loss_projects_the_outputs_and_checks_a_single_module() -> None:
    model = SmallCNN()
    x, _ = digits(4)
    assert gradient_check(model, x).verdict == "pass"
    features = model.features(x).flatten(1).detach()
    result = gradient_check(model.head, features, max_entries=8)
    assert result.verdict == "pass" and [r["name"] for r in result.table] == ["weight", "bias"]
    assert result.table[0]["checked"] == 8


def test_gradient_check_runs_batchnorm_dropout_and_random_layers_repeatably() -> None:
    """Eval mode turns dropout off and BatchNorm to its running statistics; the RNG is reseeded before every
    forward pass, so a layer that draws noise even in eval mode draws the same noise each time."""

    class Noisy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + 0.1 * torch.randn_like(x)

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.5),
        Noisy(),
        nn.Flatten(),
        nn.Linear(144, 10),
    )
    x, y = digits(4)
    result = gradient_check(model, x, y, CE, max_entries=16)
    assert result.verdict == "pass", result.report()


def test_gradient_check_fails_on_a_custom_function_whose_backward_doubles_the_weight_gradient() -> None:
    """Planted bug: a hand-written backward returns 2x the true weight gradient (e.g. a term counted twice)."""
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), HandLinear(5, 3, scale_grad_w=2.0))
    result = gradient_check(model, torch.randn(4, 6), torch.tensor([0, 1, 2, 0]), CE)
    assert result.verdict == "fail", result.report()
    assert result.summary.startswith("2.weight[")
    status = {r["name"]: r["status"] for r in result.table}
    assert status == {"0.weight": "ok", "0.bias": "ok", "2.weight": "MISMATCH", "2.bias": "ok"}
    row = next(r for r in result.table if r["name"] == "2.weight")
    assert row["analytic"] == pytest.approx(2 * row["numeric"], rel=1e-6)
    assert "custom torch.autograd.Function" in result.explanation and "2.weight" in result.explanation


def test_gradient_check_passes_on_the_correct_custom_function() -> None:
    model = nn.Sequential(nn.Linear(6, 5), Swish(), HandLinear(5, 3))
    result = gradient_check(model, torch.randn(4, 6), torch.tensor([0, 1, 2, 0]), CE)
    assert result.verdict == "pass", result.report()


def test_gradient_check_fails_upstream_of_a_backward_that_forgets_a_term() -> None:
    """Planted bug: swish's d/dx forgets the product rule's second term: the layer before gets wrong gradients."""
    model = nn.Sequential(nn.Linear(6, 5), Swish(forget_term=True), nn.Linear(5, 3))
    result = gradient_check(model, torch.randn(4, 6), torch.tensor([0, 1, 2, 0]), CE)
    assert result.verdict == "fail", result.report()
    status = {r["name"]: r["status"] for r in result.table}
    assert status["0.weight"] == "MISMATCH" and status["1.beta"] == "ok" and status["2.weight"] == "ok"


def test_gradient_check_skips_relu_kinks_instead_of_failing() -> None:
    """A zero input row and zero biases put units 0-3 exactly on ReLU's kink: +-eps on their bias straddles it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        model[0].bias.copy_(torch.tensor([0.0] * 4 + [0.5] * 4))
    x = torch.randn(4, 4)
    x[0] = 0.0
    result = gradient_check(model, x, torch.tensor([0, 1, 2, 0]), CE)
    assert result.verdict == "pass", result.report()
    assert result.numbers["kinks"] == 4 and "4 kink entries skipped" in result.summary
    assert next(r for r in result.table if r["name"] == "0.bias")["kinks"] == 4


class WithUnused(nn.Module):
    """An MLP with a layer built in ``__init__`` and never called in ``forward``."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.spare = mlp(), nn.Linear(10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Only ``body`` runs."""
        return self.body(x)


def test_gradient_check_warns_about_an_unused_parameter() -> None:
    x, y = digits(4)
    result = gradient_check(WithUnused(), x, y, CE)
    assert result.verdict == "warn" and result.ok, result.report()
    assert "unused parameter: spare.weight, spare.bias" in result.summary
    assert result.numbers["unused_tensors"] == 2


def test_gradient_check_fails_on_a_detached_path_that_still_changes_the_loss() -> None:
    """Planted bug: an auxiliary branch is ``.detach()``-ed, yet its output is added to the logits."""

    class Detached(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.aux = mlp(), nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x) + self.aux(x.flatten(1)).detach()

    x, y = digits(4)
    result = gradient_check(Detached(), x, y, CE)
    assert result.verdict == "fail", result.report()
    assert {r["name"] for r in result.table if r["status"] == "no gradient"} == {"aux.weight", "aux.bias"}
    assert "detached" in result.explanation


def test_gradient_check_skips_frozen_parameters_and_rejects_bad_options() -> None:
    model = mlp()
    model[1].requires_grad_(False)
    x, y = digits(4)
    result = gradient_check(model, x, y, CE)
    assert result.verdict == "pass" and result.numbers["frozen_tensors"] == 2
    with pytest.raises(ValueError, match=r"invalid eps=0: must be a finite number > 0"):
        gradient_check(model, x, y, CE, eps=0)
    with pytest.raises(ValueError, match=r"invalid max_entries=0: must be an int >= 1"):
        gradient_check(model, x, y, CE, max_entries=0)
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        gradient_check(lambda t: t, x)  # type: ignore[arg-type]


# --- overfit_one_batch ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [SmallCNN, mlp], ids=["cnn", "mlp"])
def test_overfit_one_batch_memorizes_with_a_correct_model(make: Callable[[], nn.Module]) -> None:
    x, y = digits(16)
    result = overfit_one_batch(make(), x, y, CE)
    assert result.verdict == "pass", result.report()
    n = result.numbers
    assert n["reached"] and n["final_loss"] < 0.05 and n["target"] == 0.05 and n["steps_taken"] < 200
    assert n["initial_loss"] == pytest.approx(math.log(10), rel=0.25)
    assert result.table[0] == {"step": 0, "loss": n["initial_loss"]} and len(result.table) <= 22


class DetachedBody(nn.Module):
    """Planted bug: ``body(x).detach()`` before a head that sees 3 features: only the head trains."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
        self.head = nn.Linear(3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Only ``head`` can learn: 3 frozen random features cannot separate 64 samples of 10 classes."""
        return self.head(self.body(x).detach())


def test_overfit_one_batch_fails_on_a_detached_body_and_names_it() -> None:
    x, y = digits(64)
    result = overfit_one_batch(DetachedBody(), x, y, CE)
    assert result.verdict == "fail", result.report()
    assert PLAYBOOK in result.explanation
    assert "detached/unused: body.1.weight, body.1.bias, body.3.weight, body.3.bias" in result.explanation
    assert "head" not in result.numbers["detached_params"]


def test_overfit_one_batch_fails_when_the_output_is_detached() -> None:
    """Planted bug: the model returns the copy it keeps for logging, ``logits.detach()``; the loss has no grad_fn."""

    class LogsLogits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.last_logits = self.net(x).detach()
            return self.last_logits

    x, y = digits(16)
    result = overfit_one_batch(LogsLogits(), x, y, CE)
    assert result.verdict == "fail" and "has no gradient" in result.summary, result.report()
    assert "no grad_fn" in result.explanation and "detached/unused: net.1.weight" in result.explanation


def test_overfit_one_batch_fails_when_the_loss_redraws_labels_independently_of_the_inputs() -> None:
    """Planted bug: a "mixup" loss that mixes the targets with a permutation drawn inside the loss, while the
    inputs were never mixed with that permutation: each call pairs the inputs with different labels."""

    def mixup_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        perm = torch.randperm(len(y))
        return 0.5 * F.cross_entropy(out, y) + 0.5 * F.cross_entropy(out, y[perm])

    x, y = digits(16)
    result = overfit_one_batch(SmallCNN(), x, y, mixup_loss)
    assert result.verdict == "fail", result.report()
    assert result.numbers["min_loss"] > 0.5 and result.numbers["steps_taken"] == 200
    assert "differs between two calls on the same batch" in result.explanation
    assert "the labels (misaligned with inputs)" in result.explanation


def test_overfit_one_batch_names_parameters_left_out_of_the_optimizer() -> None:
    """Planted bug: the optimizer is built from the head's bias only (a wrong slice of the parameter list)."""
    x, y = digits(16)
    result = overfit_one_batch(
        mlp(), x, y, CE, optimizer_factory=lambda ps: torch.optim.Adam(ps[-1:], lr=0.01)
    )
    assert result.verdict == "fail", result.report()
    assert "not in the optimizer: 1.weight, 1.bias, 4.weight" in result.explanation


def test_overfit_one_batch_targets_and_the_halfway_warning() -> None:
    x, y = digits(16)
    slow = overfit_one_batch(mlp(), x, y, CE, steps=60, target=1e-6)
    assert slow.verdict == "warn" and "at least halfway" in slow.explanation, slow.report()
    smoothed = overfit_one_batch(mlp(), x, y, nn.CrossEntropyLoss(label_smoothing=0.1), lr=0.01)
    assert (
        smoothed.verdict == "pass" and 0.5 < smoothed.numbers["target"] < 0.6
    )  # the least smoothed CE + 0.05
    torch.manual_seed(0)
    regression = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1))
    xr, yr = torch.randn(16, 5), torch.randn(16, 1)
    result = overfit_one_batch(regression, xr, yr, nn.MSELoss(), lr=0.01)
    assert result.verdict == "pass" and result.numbers["target"] == pytest.approx(
        0.01 * result.numbers["initial_loss"]
    )


def test_overfit_one_batch_options() -> None:
    x, y = digits(16)
    result = overfit_one_batch(mlp(), x, y, CE, steps=5, target=-1.0, lr=0.01)
    assert result.numbers["steps_taken"] == 5 and result.numbers["lr"] == 0.01 and result.verdict == "fail"
    sgd = overfit_one_batch(mlp(), x, y, CE, optimizer_factory=lambda ps: torch.optim.SGD(ps, lr=1.0), lr=0.5)
    assert sgd.numbers["optimizer"] == "SGD" and sgd.numbers["lr"] == 0.5
    with pytest.raises(ValueError, match=r"invalid steps=0: must be an int >= 1"):
        overfit_one_batch(mlp(), x, y, CE, steps=0)
    with pytest.raises(ValueError, match=r"invalid lr=-1: must be a finite number > 0"):
        overfit_one_batch(mlp(), x, y, CE, lr=-1)


# --- loss_decreases ---------------------------------------------------------------------------------------------


def test_loss_decreases_passes_on_real_batches_and_on_one_batch() -> None:
    batches = [digits(32, seed=s) for s in range(4)]
    result = loss_decreases(SmallCNN(), batches, CE)
    assert result.verdict == "pass", result.report()
    assert result.numbers["batches"] == 4 and result.numbers["steps"] == 10 and len(result.table) == 11
    one = loss_decreases(mlp(dropout=0.2), digits(32), CE, steps=5)
    assert one.verdict == "pass" and one.numbers["batches"] == 1, one.report()


@pytest.mark.parametrize(
    ("factory", "words"),
    [
        (lambda ps: torch.optim.SGD(ps, lr=50.0), ("went up", "NaN")),
        (lambda ps: torch.optim.SGD(ps, lr=0.5, maximize=True), ("went up",)),
        (lambda ps: torch.optim.SGD(ps, lr=1e-7), ("did not decrease",)),
    ],
    ids=["lr-far-too-high", "sign-flipped-gradient", "lr-far-too-low"],
)
def test_loss_decreases_fails_on_broken_training(factory: Callable[..., Any], words: tuple[str, ...]) -> None:
    """Planted bugs: lr 1000x too high; gradient ascent (``maximize=True`` copied from an RL snippet); lr ~0."""
    result = loss_decreases(mlp(), [digits(32, seed=s) for s in range(3)], CE, optimizer_factory=factory)
    assert result.verdict == "fail", result.report()
    assert any(w in result.summary for w in words), result.summary


def test_loss_decreases_rejects_bad_batches() -> None:
    with pytest.raises(ValueError, match="invalid batches: empty"):
        loss_decreases(mlp(), [], CE)
    with pytest.raises(ValueError, match="invalid batch 0 of type Tensor: must be \\(inputs, targets\\)"):
        loss_decreases(mlp(), [torch.zeros(3)], CE)


# --- initial_loss -----------------------------------------------------------------------------------------------


def test_initial_loss_of_a_fresh_classifier_is_ln_10() -> None:
    x, y = digits(64)
    for model in (SmallCNN(), mlp()):
        result = initial_loss(model, x, y, CE)
        assert result.verdict == "pass", result.report()
        assert result.numbers["num_classes"] == 10 and 0.75 <= result.numbers["ratio"] <= 1.25


def test_initial_loss_fails_on_a_softmax_before_cross_entropy() -> None:
    """Planted bug: the model ends with a softmax and CrossEntropyLoss applies log_softmax again."""
    x, y = digits(64)
    result = initial_loss(SmallCNN(softmax=True), x, y, CE)
    assert result.verdict == "fail", result.report()
    assert (
        0.75 <= result.numbers["ratio"] <= 1.25
    )  # the loss itself looks fine: only the outputs give it away
    assert "softmax" in result.summary and "Remove the final softmax" in result.explanation


def test_initial_loss_flags_a_huge_init_of_the_last_layer() -> None:
    """Planted bug: the head's weights scaled 50x: confidently wrong logits."""
    model = SmallCNN()
    with torch.no_grad():
        model.head.weight.mul_(50)
    x, y = digits(64)
    result = initial_loss(model, x, y, CE)
    assert result.verdict in ("warn", "fail") and result.numbers["ratio"] > 1.25, result.report()
    assert "logits are too large" in result.explanation


def test_initial_loss_other_losses_and_other_bugs() -> None:
    x, y = digits(64)
    mse = initial_loss(mlp(), x, torch.randn(64, 10), nn.MSELoss())
    assert mse.verdict == "pass" and "no reference for this loss" in mse.summary
    summed = initial_loss(mlp(), x, y, nn.CrossEntropyLoss(reduction="sum"))
    assert summed.verdict == "fail" and "reduction='sum'" in summed.explanation
    flipped = initial_loss(mlp(), x, y, lambda out, t: -F.cross_entropy(out, t))
    assert (
        flipped.verdict == "fail" and "sign" in flipped.explanation and flipped.numbers["num_classes"] == 10
    )
    nll = initial_loss(mlp(), x, y, nn.NLLLoss())
    assert nll.verdict == "fail" and "log_softmax" in nll.explanation
    assert initial_loss(nn.Sequential(mlp(), nn.LogSoftmax(1)), x, y, nn.NLLLoss()).verdict == "pass"
    binary = initial_loss(
        nn.Sequential(mlp(), nn.Linear(10, 1)), x, (y > 4).float()[:, None], nn.BCEWithLogitsLoss()
    )
    assert binary.numbers["reference"] == "ln 2"


# --- every check leaves the user's model alone ------------------------------------------------------------------


def _all_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Callable[[], Any]]:
    return {
        "gradient_check": lambda: gradient_check(model, x[:4], y[:4], CE, max_entries=8),
        "overfit_one_batch": lambda: overfit_one_batch(model, x, y, CE, steps=20),
        "loss_decreases": lambda: loss_decreases(model, (x, y), CE, steps=3),
        "initial_loss": lambda: initial_loss(model, x, y, CE),
    }


@pytest.mark.parametrize("check", ["gradient_check", "overfit_one_batch", "loss_decreases", "initial_loss"])
@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_the_users_model_is_left_as_it_was(check: str, mode: str) -> None:
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 10)
    )
    model.train(mode != "eval")
    if mode == "mixed":
        model[4].eval()
    x, y = digits(16)
    x_before = x.clone()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    result = _all_checks(model, x, y)[check]()
    assert result.name == check and result.seconds > 0
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng) and torch.equal(x, x_before)


def test_existing_gradients_are_kept() -> None:
    model = mlp()
    x, y = digits(16)
    CE(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    for run in _all_checks(model, x, y).values():
        run()
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters(), strict=True))


def test_user_bugs_are_verdicts_not_exceptions() -> None:
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    x, y = digits(8)
    for run in _all_checks(nn.Sequential(Broken()), x, y).values():
        result = run()
        assert result.verdict == "error" and "mat1 and mat2" in result.summary, result.report()
    per_sample = nn.CrossEntropyLoss(reduction="none")
    result = overfit_one_batch(mlp(), x, y, per_sample)
    assert result.verdict == "error" and "not a scalar" in result.summary
    assert loss_decreases(mlp(), (x, y), per_sample).verdict == "error"
