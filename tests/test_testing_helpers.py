"""tuimon_agent.testing: each assert_* passes on a healthy model and raises a readable AssertionError on a bug."""

from __future__ import annotations

import pytest
import torch
from test_checks_gradients_training import CE, DetachedBody, HandLinear, SmallCNN, WithUnused, digits, mlp
from torch import nn

from tuimon_agent.testing import (
    assert_can_overfit,
    assert_gradients_match,
    assert_loss_decreases,
    assert_shapes,
)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    """Every test here runs on one torch thread (see conftest)."""


def test_assert_gradients_match() -> None:
    x, y = digits(4)
    result = assert_gradients_match(SmallCNN(), x, y, CE, max_entries=16)
    assert result.verdict == "pass"
    assert assert_gradients_match(WithUnused(), x, y, CE).verdict == "warn"  # a warning is not a failure
    buggy = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), HandLinear(5, 3, scale_grad_w=2.0))
    with pytest.raises(AssertionError) as caught:
        assert_gradients_match(buggy, torch.randn(4, 6), torch.tensor([0, 1, 2, 0]), CE)
    message = str(caught.value)
    assert message.startswith("[FAIL ] gradient_check: 2.weight[") and "MISMATCH" in message
    assert "custom torch.autograd.Function" in message


def test_assert_can_overfit() -> None:
    x, y = digits(16)
    assert assert_can_overfit(mlp(), x, y, CE).numbers["reached"]
    x, y = digits(64)
    with pytest.raises(AssertionError) as caught:
        assert_can_overfit(DetachedBody(), x, y, CE, steps=100)
    message = str(caught.value)
    assert message.startswith("[FAIL ] overfit_one_batch: could not memorize one batch")
    assert (
        "cannot memorize one small batch has a bug" in message and "detached/unused: body.1.weight" in message
    )


def test_assert_loss_decreases() -> None:
    batches = [digits(32, seed=s) for s in range(3)]
    assert assert_loss_decreases(mlp(), batches, CE).verdict == "pass"
    with pytest.raises(AssertionError) as caught:
        assert_loss_decreases(
            mlp(), batches, CE, optimizer_factory=lambda ps: torch.optim.SGD(ps, lr=0.5, maximize=True)
        )
    assert "[FAIL ] loss_decreases: the loss went up" in str(caught.value)
    assert "maximize=True" in str(caught.value)


def test_options_reach_the_check() -> None:
    with pytest.raises(ValueError, match="invalid steps=0"):
        assert_can_overfit(mlp(), *digits(8), CE, steps=0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'stepz'"):
        assert_loss_decreases(mlp(), digits(8), CE, stepz=3)


def test_assert_shapes() -> None:
    pytest.importorskip("tuimon_agent.checks.shapes")
    x, y = digits(8)
    model = SmallCNN()
    result = assert_shapes(
        model, x, expected={"head": (None, 10), "features.4": (8, 16, 4, 4)}, targets=y, loss_fn=CE
    )
    assert result.name == "shape_trace"
    with pytest.raises(AssertionError, match=r"'head': output shape \(8, 10\), expected \(any, 11\)"):
        assert_shapes(model, x, expected={"head": (None, 11)})
    with pytest.raises(AssertionError, match="'tail': not called in the forward pass"):
        assert_shapes(model, x, expected={"tail": (None, 10)})
    with pytest.raises(AssertionError, match=r"\[FAIL \] shape_trace"):
        assert_shapes(SmallCNN(softmax=True), x, targets=y, loss_fn=CE)
