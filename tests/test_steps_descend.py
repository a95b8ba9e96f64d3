"""steps.descend as a unit (issue 23): the gradients are cleared before backpropagating, the norm is clipped to
grad_clip, the parameters move by the clipped gradient, and the norm before clipping is returned."""

import math

import pytest
import torch

from stemweave.engine.steps import descend


def setup(stale=None):
    """w = (3, 4) with loss w . x, x = (1, 2): the gradient is x exactly, norm sqrt(5)."""
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    if stale is not None:
        w.grad = torch.tensor(stale, dtype=torch.float64)  # left over from an earlier step
    x = torch.tensor([1.0, 2.0], dtype=torch.float64)
    return w, (w * x).sum(), torch.optim.SGD([w], lr=0.1)


def test_returns_the_norm_before_clipping_and_steps_by_the_clipped_gradient():
    w, loss, opt = setup()
    norm = descend(loss, opt, [w], grad_clip=1.0)
    assert norm == pytest.approx(math.sqrt(5), rel=1e-12)
    clipped = torch.tensor([1.0, 2.0], dtype=torch.float64) / math.sqrt(5)  # norm 1
    torch.testing.assert_close(w.detach(), torch.tensor([3.0, 4.0], dtype=torch.float64) - 0.1 * clipped,
                               rtol=1e-6, atol=0)
    torch.testing.assert_close(w.grad, clipped, rtol=1e-6, atol=0)  # the stored gradient is the clipped one


def test_a_norm_below_the_clip_is_left_alone():
    w, loss, opt = setup()
    norm = descend(loss, opt, [w], grad_clip=10.0)
    assert norm == pytest.approx(math.sqrt(5), rel=1e-12)
    torch.testing.assert_close(w.detach(), torch.tensor([2.9, 3.8], dtype=torch.float64), rtol=1e-12, atol=0)


def test_stale_gradients_are_cleared_before_backpropagating():
    w, loss, opt = setup(stale=[100.0, -50.0])
    norm = descend(loss, opt, [w], grad_clip=10.0)
    assert norm == pytest.approx(math.sqrt(5), rel=1e-12)  # accumulated: |(101, -48)| = 111.8
    torch.testing.assert_close(w.detach(), torch.tensor([2.9, 3.8], dtype=torch.float64), rtol=1e-12, atol=0)


def test_gradients_are_set_to_none_so_an_unused_parameter_does_not_move():
    # SGD with weight decay moves a parameter whose gradient is zero, and skips one whose gradient is None.
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    unused = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    unused.grad = torch.tensor([0.5], dtype=torch.float64)
    opt = torch.optim.SGD([w, unused], lr=0.1, weight_decay=0.5)
    descend((w * w).sum() / 2, opt, [w, unused], grad_clip=100.0)
    assert unused.grad is None and unused.item() == 1.0
    torch.testing.assert_close(w.detach(), torch.tensor([3.0, 4.0], dtype=torch.float64) * (1 - 0.1 * 1.5),
                               rtol=1e-12, atol=0)


def test_clipping_applies_to_the_parameters_given():
    a = torch.nn.Parameter(torch.tensor([3.0], dtype=torch.float64))
    b = torch.nn.Parameter(torch.tensor([4.0], dtype=torch.float64))
    opt = torch.optim.SGD([a, b], lr=1.0)
    norm = descend((a * 3.0 + b * 4.0).sum(), opt, [a, b], grad_clip=2.5)  # gradient (3, 4), norm 5 -> half
    assert norm == pytest.approx(5.0, rel=1e-12)
    assert a.item() == pytest.approx(3.0 - 1.5, rel=1e-6) and b.item() == pytest.approx(4.0 - 2.0, rel=1e-6)
    assert isinstance(norm, float)
