"""dmx.mixmatch: each formula pinned on hand-computed numbers, plus invariants."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dmx.mixmatch import (
    co_guess,
    co_refine,
    confidence_penalty,
    linear_rampup,
    mix_lambda,
    mixup,
    mse_consistency,
    sharpen,
    soft_cross_entropy,
    uniform_prior_penalty,
)

LOG2 = math.log(2.0)


def _logits(*rows):
    """Logits whose softmax is exactly the given probability rows (log p)."""
    return torch.log(torch.tensor(rows, dtype=torch.float64))


# --- sharpen ---------------------------------------------------------------------------------


def test_sharpen_hand_computed():
    out = sharpen(torch.tensor([[0.6, 0.4], [0.5, 0.5]], dtype=torch.float64), 0.5)
    expected = torch.tensor([[0.36, 0.16], [0.25, 0.25]], dtype=torch.float64)
    expected = expected / expected.sum(1, keepdim=True)  # [0.36, 0.16] / 0.52
    torch.testing.assert_close(out, expected)


def test_sharpen_identity_at_T1_and_sharper_at_lower_T():
    p = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]], dtype=torch.float64)
    torch.testing.assert_close(sharpen(p, 1.0), p)
    max_hi, max_lo = sharpen(p, 0.8).amax(1), sharpen(p, 0.3).amax(1)
    assert torch.all(max_lo > max_hi) and torch.all(max_hi > p.amax(1))


def test_sharpen_small_T_does_not_underflow_to_nan():
    out = sharpen(torch.tensor([[0.5, 0.3, 0.2]]), 0.005)  # float32; 0.5**200 underflows
    assert torch.all(torch.isfinite(out))
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.0, 0.0]]))


@pytest.mark.parametrize("T", [0, -0.5, float("nan"), float("inf")])
def test_sharpen_rejects_bad_temperature(T):
    with pytest.raises(ValueError, match="T="):
        sharpen(torch.tensor([[0.5, 0.5]]), T)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.floats(0.01, 1.0), min_size=2, max_size=6),
    st.floats(0.1, 2.0),
)
def test_sharpen_rows_sum_to_one_and_keep_argmax(row, T):
    p = torch.tensor([row], dtype=torch.float64)
    p = p / p.sum()
    out = sharpen(p, T)
    torch.testing.assert_close(out.sum(1), torch.ones(1, dtype=torch.float64))
    assert out[0, p.argmax()] == out.max()


# --- co_guess / co_refine --------------------------------------------------------------------


def test_co_guess_hand_computed():
    # mean of softmaxes = ([.7,.3] + [.5,.5] + [.9,.1] + [.5,.5]) / 4 = [.65, .35]
    out = co_guess(
        _logits([0.7, 0.3]), _logits([0.5, 0.5]), _logits([0.9, 0.1]), _logits([0.5, 0.5]), T=0.5
    )
    expected = torch.tensor([[0.65**2, 0.35**2]], dtype=torch.float64) / (0.65**2 + 0.35**2)
    torch.testing.assert_close(out, expected)


def test_co_guess_is_detached_and_normalised():
    z = [torch.randn(5, 4, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    z = [t.requires_grad_() for t in z]
    out = co_guess(*z, T=0.5)
    assert out.shape == (5, 4) and not out.requires_grad
    torch.testing.assert_close(out.sum(1), torch.ones(5))
    with pytest.raises(ValueError, match="T="):
        co_guess(*z, T=0.0)


def test_co_refine_hand_computed():
    x1 = _logits([0.8, 0.2], [0.8, 0.2], [0.8, 0.2])
    x2 = _logits([0.6, 0.4], [0.6, 0.4], [0.6, 0.4])  # mean softmax [.7, .3] on every row
    onehot = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    w = torch.tensor([0.5, 1.0, 0.0])  # float32 weights, as the loop passes them
    out = co_refine(x1, x2, onehot, w, T=0.5)
    # row 0: .5*[0,1] + .5*[.7,.3] = [.35, .65]; row 1: the label; row 2: the prediction
    sq = torch.tensor([[0.35**2, 0.65**2], [1.0, 0.0], [0.7**2, 0.3**2]], dtype=torch.float64)
    torch.testing.assert_close(out, sq / sq.sum(1, keepdim=True))
    torch.testing.assert_close(co_refine(x1, x2, onehot, w.reshape(-1, 1), T=0.5), out)


def test_co_refine_is_detached_and_checks_shapes():
    x = torch.randn(3, 4, requires_grad=True)
    onehot = torch.eye(4)[:3]
    out = co_refine(x, x * 2, onehot, torch.full((3,), 0.3), T=0.5)
    assert not out.requires_grad
    torch.testing.assert_close(out.sum(1), torch.ones(3))
    with pytest.raises(ValueError, match="w must have"):
        co_refine(x, x, onehot, torch.ones(2), T=0.5)


# --- mix_lambda / mixup ----------------------------------------------------------------------


def test_mix_lambda_is_max_of_beta_draw():
    draw = np.random.default_rng(0).beta(4.0, 4.0)
    lam = mix_lambda(4.0, np.random.default_rng(0))
    assert isinstance(lam, float) and lam == max(draw, 1 - draw)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0.05, 8.0))
def test_mix_lambda_at_least_half(seed, alpha):
    lam = mix_lambda(alpha, np.random.default_rng(seed))
    assert 0.5 <= lam <= 1.0
    assert lam == mix_lambda(alpha, np.random.default_rng(seed))  # same generator state, same l


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan")])
def test_mix_lambda_rejects_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        mix_lambda(alpha, np.random.default_rng(0))


def test_mixup_hand_computed():
    inputs = torch.tensor([[1.0], [3.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mi, mt = mixup(inputs, targets, lam=0.75, perm=torch.tensor([1, 0]))
    torch.testing.assert_close(mi, torch.tensor([[1.5], [2.5]]))
    torch.testing.assert_close(mt, torch.tensor([[0.75, 0.25], [0.25, 0.75]]))


def test_mixup_lam_one_is_identity_and_rows_stay_normalised():
    g = torch.Generator().manual_seed(0)
    inputs = torch.randn(6, 3, 4, 4, generator=g)
    targets = torch.softmax(torch.randn(6, 5, generator=g), 1)
    perm = torch.randperm(6, generator=g)
    mi, mt = mixup(inputs, targets, lam=1.0, perm=perm)
    torch.testing.assert_close(mi, inputs)
    torch.testing.assert_close(mt, targets)
    _, mt = mixup(inputs, targets, lam=0.6, perm=perm)
    torch.testing.assert_close(mt.sum(1), torch.ones(6))
    with pytest.raises(ValueError, match="lam"):
        mixup(inputs, targets, lam=1.5, perm=perm)
    with pytest.raises(ValueError, match="batch size"):
        mixup(inputs, targets, lam=0.6, perm=perm[:5])


# --- losses ----------------------------------------------------------------------------------


def test_soft_cross_entropy_hand_computed():
    logits = _logits([0.5, 0.25, 0.25], [0.5, 0.25, 0.25])
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]], dtype=torch.float64)
    # row 0: -log .5 = log 2; row 1: -(.5 log .5 + .5 log .25) = 1.5 log 2; mean 1.25 log 2
    torch.testing.assert_close(
        soft_cross_entropy(logits, targets), torch.tensor(1.25 * LOG2, dtype=torch.float64)
    )


def test_soft_cross_entropy_equals_ce_for_one_hot_targets():
    g = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(7, 4, generator=g), torch.randint(0, 4, (7,), generator=g)
    expected = torch.nn.functional.cross_entropy(logits, labels)
    torch.testing.assert_close(soft_cross_entropy(logits, torch.eye(4)[labels]), expected)


def test_mse_consistency_hand_computed():
    logits = _logits([0.5, 0.25, 0.25])
    targets = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    # mean over B AND C: (.25 + .0625 + .0625) / 3 = 0.125
    torch.testing.assert_close(
        mse_consistency(logits, targets), torch.tensor(0.125, dtype=torch.float64)
    )
    with pytest.raises(ValueError, match="does not match"):
        mse_consistency(logits, targets[:, :2])


def test_gradients_flow_through_mixed_logits():
    g = torch.Generator().manual_seed(2)
    net = torch.nn.Linear(3, 4)
    inputs, targets = (
        torch.randn(8, 3, generator=g),
        torch.softmax(torch.randn(8, 4, generator=g), 1),
    )
    mi, mt = mixup(inputs, targets, lam=0.7, perm=torch.randperm(8, generator=g))
    logits = net(mi)  # (8, 4)
    loss = soft_cross_entropy(logits[:4], mt[:4]) + 3.0 * mse_consistency(logits[4:], mt[4:])
    loss = loss + uniform_prior_penalty(logits)
    loss.backward()
    assert net.weight.grad is not None and net.weight.grad.abs().sum() > 0


# --- linear_rampup ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "progress, expected",
    [(0.0, 0.0), (9.5, 0.0), (10.0, 0.0), (14.0, 0.25), (18.0, 0.5), (26.0, 1.0), (300.0, 1.0)],
)
def test_linear_rampup_clip(progress, expected):
    out = linear_rampup(progress, warmup_epochs=10)
    assert isinstance(out, float) and out == pytest.approx(expected)


def test_linear_rampup_custom_length_and_validation():
    assert linear_rampup(31.0, warmup_epochs=30, length=4) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="length"):
        linear_rampup(1.0, warmup_epochs=0, length=0)


# --- penalties -------------------------------------------------------------------------------


def test_uniform_prior_penalty_hand_computed():
    # mean prediction [.75, .25]: .5 log(.5/.75) + .5 log(.5/.25) = .5 log(4/3)
    out = uniform_prior_penalty(_logits([0.75, 0.25]))
    torch.testing.assert_close(out, torch.tensor(0.5 * math.log(4 / 3), dtype=torch.float64))


def test_uniform_prior_penalty_zero_for_uniform_mean_prediction():
    # Confident rows whose batch mean is uniform: no penalty.
    logits = _logits([0.9, 0.1], [0.1, 0.9])
    torch.testing.assert_close(
        uniform_prior_penalty(logits), torch.tensor(0.0, dtype=torch.float64)
    )
    torch.testing.assert_close(uniform_prior_penalty(torch.zeros(3, 5)), torch.tensor(0.0))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000))
def test_uniform_prior_penalty_is_non_negative(seed):
    logits = 3 * torch.randn(4, 3, generator=torch.Generator().manual_seed(seed))
    assert uniform_prior_penalty(logits) >= -1e-6


def test_confidence_penalty_hand_computed():
    # .5 log .5 + 2 * .25 log .25 = -1.5 log 2
    out = confidence_penalty(_logits([0.5, 0.25, 0.25]))
    torch.testing.assert_close(out, torch.tensor(-1.5 * LOG2, dtype=torch.float64))


@pytest.mark.parametrize("C", [2, 10, 100])
def test_confidence_penalty_is_minus_log_C_for_uniform(C):
    torch.testing.assert_close(confidence_penalty(torch.zeros(4, C)), torch.tensor(-math.log(C)))


def test_confidence_penalty_finite_for_saturated_logits():
    out = confidence_penalty(torch.tensor([[1000.0, 0.0, -1000.0]]))
    assert torch.isfinite(out) and out == pytest.approx(0.0, abs=1e-6)
