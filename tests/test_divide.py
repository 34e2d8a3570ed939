"""dmx.divide: normalisation, loss history, GMM fit and clean probability, co-divide."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture

from dmx.divide import (
    GMMFit,
    as_numpy,
    clean_probability,
    co_divide,
    fit_gmm,
    history_input,
    normalize_losses,
)


def _bimodal(seed=0):
    """80 low losses near 0.1 (clean) then 20 high losses near 0.9 (noisy)."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0.1, 0.03, 80), rng.normal(0.9, 0.03, 20)])


# --- normalize_losses ------------------------------------------------------------------------


def test_normalize_losses_hand_computed():
    # min 1, max 5: (l - 1) / 4
    out = normalize_losses(np.array([1.0, 3.0, 2.0, 5.0]))
    np.testing.assert_allclose(out, [0.0, 0.5, 0.25, 1.0])
    assert out.dtype == np.float64


def test_normalize_losses_keeps_torch():
    out = normalize_losses(torch.tensor([2.0, 4.0, 3.0]))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([0.0, 1.0, 0.5]))


@pytest.mark.parametrize("losses", [[2.0, 2.0, 2.0], [7.0]])
def test_normalize_losses_constant_is_zeros_not_nan(losses):
    np.testing.assert_array_equal(normalize_losses(np.array(losses)), np.zeros(len(losses)))
    torch.testing.assert_close(normalize_losses(torch.tensor(losses)), torch.zeros(len(losses)))


def test_normalize_losses_empty_and_bad_shape():
    assert normalize_losses(np.array([])).shape == (0,)
    with pytest.raises(ValueError, match="1-D"):
        normalize_losses(np.zeros((2, 2)))


# --- history_input ---------------------------------------------------------------------------


def test_history_input_means_last_rows():
    h = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])  # (k=3, N=3)
    np.testing.assert_allclose(history_input(h, window=1), [3.0, 4.0, 5.0])  # current epoch
    np.testing.assert_allclose(history_input(h, window=2), [2.0, 3.0, 4.0])
    # fewer rows than the window: all rows, as history[-5:] in the reference
    np.testing.assert_allclose(history_input(h, window=5), [4 / 3, 2.0, 8 / 3])
    out = history_input(torch.tensor(h, dtype=torch.float32), window=2)
    torch.testing.assert_close(out, torch.tensor([2.0, 3.0, 4.0]))


@pytest.mark.parametrize("window", [0, -1, 1.5])
def test_history_input_rejects_bad_window(window):
    with pytest.raises(ValueError, match="window"):
        history_input(np.zeros((2, 3)), window=window)


def test_history_input_rejects_bad_history():
    with pytest.raises(ValueError, match="2-D"):
        history_input(np.zeros(3), window=1)
    with pytest.raises(ValueError, match="empty"):
        history_input(np.zeros((0, 3)), window=1)


# --- clean_probability -----------------------------------------------------------------------


def test_clean_probability_separates_bimodal_losses():
    prob = clean_probability(_bimodal(), seed=0)
    assert prob.shape == (100,) and prob.dtype == np.float64
    assert np.all(prob[:80] > 0.5), "low-loss samples must be called clean"
    assert np.all(prob[80:] < 0.5), "high-loss samples must be called noisy"
    assert np.all((prob >= 0) & (prob <= 1))


def test_clean_probability_matches_direct_sklearn_call():
    # Pins the constants: n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4, random_state.
    x = _bimodal(seed=3)
    gmm = GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4, random_state=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gmm.fit(x.reshape(-1, 1))
    expected = gmm.predict_proba(x.reshape(-1, 1))[:, gmm.means_.argmin()]
    np.testing.assert_array_equal(clean_probability(x, seed=7), expected)


def test_clean_probability_lower_mean_component():
    # Posterior of the LOW-mean component whatever order sklearn assigns the components in.
    x = _bimodal()
    for seed in range(4):
        prob = clean_probability(x, seed=seed)
        assert prob[:80].mean() > 0.9 and prob[80:].mean() < 0.1


def test_clean_probability_is_deterministic_per_seed_and_accepts_torch():
    x = _bimodal(seed=1)
    a = clean_probability(x, seed=11)
    np.testing.assert_array_equal(a, clean_probability(x, seed=11))
    np.testing.assert_array_equal(a, clean_probability(torch.tensor(x), seed=11))


def test_clean_probability_silences_only_convergence_warning():
    x = _bimodal(seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning escaping would fail the test
        clean_probability(x, seed=0, max_iter=1, tol=0.0)


@pytest.mark.parametrize(
    "losses, expected",
    [([], []), ([0.3], [1.0]), ([0.5] * 6, [1.0] * 6), ([0.0, 0.0], [1.0, 1.0])],
)
def test_clean_probability_degenerate_inputs_are_all_clean(losses, expected):
    prob = clean_probability(np.array(losses, dtype=np.float64), seed=0)
    assert prob.dtype == np.float64
    np.testing.assert_array_equal(prob, expected)


def test_clean_probability_two_distinct_values_does_not_crash():
    prob = clean_probability(np.array([0.0, 1.0]), seed=0)
    assert prob.shape == (2,) and np.all(np.isfinite(prob)) and prob[0] >= prob[1]


def test_clean_probability_rejects_non_finite():
    with pytest.raises(ValueError, match="non-finite"):
        clean_probability(np.array([0.1, np.nan, 0.9]), seed=0)


# --- fit_gmm ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 7])
def test_fit_gmm_clean_prob_is_clean_probability(seed):
    x = _bimodal(seed=seed)
    fit = fit_gmm(x, seed=seed, max_iter=5, tol=1e-3, reg_covar=1e-4)
    assert isinstance(fit, GMMFit)
    np.testing.assert_array_equal(
        fit.clean_prob, clean_probability(x, seed=seed, max_iter=5, tol=1e-3, reg_covar=1e-4)
    )


def test_fit_gmm_parameters_are_sorted_and_match_sklearn():
    x = _bimodal(seed=3)
    fit = fit_gmm(x, seed=7)
    gmm = GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4, random_state=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gmm.fit(x.reshape(-1, 1))
    order = np.argsort(gmm.means_.ravel())
    for values in (fit.means, fit.stds, fit.weights):
        assert values.shape == (2,) and values.dtype == np.float64
    np.testing.assert_array_equal(fit.means, gmm.means_.ravel()[order])
    np.testing.assert_array_equal(fit.stds, np.sqrt(gmm.covariances_.ravel())[order])
    np.testing.assert_array_equal(fit.weights, gmm.weights_[order])
    assert fit.means[0] < fit.means[1]  # clean (lower-mean) component first
    assert fit.weights.sum() == pytest.approx(1.0)
    # 80 clean losses near 0.1, 20 noisy near 0.9, spread 0.03
    np.testing.assert_allclose(fit.means, [0.1, 0.9], atol=0.02)
    np.testing.assert_allclose(fit.weights, [0.8, 0.2], atol=0.01)
    np.testing.assert_allclose(fit.stds, [0.03, 0.03], atol=0.015)


@pytest.mark.parametrize("losses", [[], [0.3], [0.5] * 6])
def test_fit_gmm_degenerate_is_one_point_mass(losses):
    fit = fit_gmm(np.array(losses, dtype=np.float64), seed=0)
    np.testing.assert_array_equal(fit.clean_prob, np.ones(len(losses)))
    np.testing.assert_array_equal(fit.weights, [1.0, 0.0])
    np.testing.assert_array_equal(fit.stds, [0.0, 0.0])
    expected_mean = losses[0] if losses else np.nan
    np.testing.assert_array_equal(fit.means, [expected_mean, expected_mean])


def test_as_numpy_converts_tensors_and_keeps_arrays():
    x = np.arange(3.0)
    assert as_numpy(x) is x
    out = as_numpy(torch.tensor([1.0, 2.0], dtype=torch.bfloat16, requires_grad=True))
    assert out.dtype == np.float32 and out.tolist() == [1.0, 2.0]


# --- co_divide -------------------------------------------------------------------------------


def test_co_divide_is_strict_threshold():
    prob = np.array([0.2, 0.5, 0.51, 0.9])
    mask = co_divide(prob, p_threshold=0.5)
    assert mask.dtype == np.bool_
    np.testing.assert_array_equal(mask, [False, False, True, True])
    np.testing.assert_array_equal(co_divide(torch.tensor(prob), p_threshold=0.6), [0, 0, 0, 1])


def test_co_divide_rejects_bad_threshold():
    with pytest.raises(ValueError, match="p_threshold"):
        co_divide(np.array([0.5]), p_threshold=1.5)
