"""dmx.noise: the reference's noise definitions on hand-made label arrays."""

import numpy as np
import pytest

from dmx.data.cifar import CIFAR10_TRANSITION
from dmx.noise import asymmetric_noise, noise_rate, symmetric_noise


def _labels(n=10000, c=10, seed=0):
    return np.random.default_rng(seed).integers(0, c, n)


def test_symmetric_realised_rate_is_rate_times_one_minus_one_over_c():
    labels = _labels()
    noisy = symmetric_noise(labels, rate=0.5, num_classes=10, rng=np.random.default_rng(0))
    assert noisy.dtype == np.int64 and noisy.shape == labels.shape
    assert abs(noise_rate(labels, noisy) - 0.5 * 0.9) < 0.015
    assert noisy.min() >= 0 and noisy.max() < 10


def test_symmetric_touches_exactly_int_rate_n_samples():
    # with C=2 and exclude_true_class every chosen sample flips: exactly int(rate*N) changes
    labels = _labels(1000, 2)
    for rate in (0.0, 0.2, 0.37, 1.0):
        noisy = symmetric_noise(
            labels, rate=rate, num_classes=2, rng=np.random.default_rng(1), exclude_true_class=True
        )
        assert (noisy != labels).sum() == int(rate * 1000)


def test_exclude_true_class_changes_exactly_int_rate_n():
    labels = _labels()
    noisy = symmetric_noise(
        labels, rate=0.8, num_classes=10, rng=np.random.default_rng(0), exclude_true_class=True
    )
    assert (noisy != labels).sum() == 8000
    # the new labels cover all other classes
    changed = noisy != labels
    assert set(np.unique(noisy[changed & (labels == 3)])) == set(range(10)) - {3}


def test_same_seed_same_output():
    labels = _labels()
    a = symmetric_noise(labels, rate=0.3, num_classes=10, rng=np.random.default_rng(7))
    b = symmetric_noise(labels, rate=0.3, num_classes=10, rng=np.random.default_rng(7))
    c = symmetric_noise(labels, rate=0.3, num_classes=10, rng=np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    d = asymmetric_noise(
        labels, rate=0.4, transition=CIFAR10_TRANSITION, rng=np.random.default_rng(7)
    )
    e = asymmetric_noise(
        labels, rate=0.4, transition=CIFAR10_TRANSITION, rng=np.random.default_rng(7)
    )
    assert np.array_equal(d, e)


def test_asymmetric_maps_exactly_int_rate_n_through_transition():
    labels = _labels()
    # a transition that moves every class: the number of changed labels is exactly int(rate*N)
    shift = (np.arange(10) + 1) % 10
    noisy = asymmetric_noise(labels, rate=0.4, transition=shift, rng=np.random.default_rng(0))
    changed = noisy != labels
    assert changed.sum() == 4000
    assert np.array_equal(noisy[changed], shift[labels[changed]])


def test_asymmetric_cifar10_transition():
    assert CIFAR10_TRANSITION.tolist() == [0, 1, 0, 5, 7, 3, 6, 7, 8, 1]
    labels = _labels()
    noisy = asymmetric_noise(
        labels, rate=0.4, transition=CIFAR10_TRANSITION, rng=np.random.default_rng(0)
    )
    changed = noisy != labels
    assert np.array_equal(noisy[changed], CIFAR10_TRANSITION[labels[changed]])
    assert set(np.unique(labels[changed])) == {2, 3, 4, 5, 9}  # identity classes never change
    # samples are chosen from the whole set: about rate * (fraction of moving classes)
    assert abs(changed.mean() - 0.4 * 0.5) < 0.015


@pytest.mark.parametrize(
    "call,match",
    [
        (
            lambda: symmetric_noise(
                np.zeros(3, int), rate=1.5, num_classes=10, rng=np.random.default_rng()
            ),
            "in \\[0, 1\\]",
        ),
        (
            lambda: symmetric_noise(
                np.array([0, 10]), rate=0.5, num_classes=10, rng=np.random.default_rng()
            ),
            "num_classes",
        ),
        (
            lambda: symmetric_noise(
                np.zeros((2, 2), int), rate=0.5, num_classes=10, rng=np.random.default_rng()
            ),
            "1-D",
        ),
        (
            lambda: asymmetric_noise(
                np.array([0, 10]),
                rate=0.5,
                transition=CIFAR10_TRANSITION,
                rng=np.random.default_rng(),
            ),
            "num_classes",
        ),
        (
            lambda: asymmetric_noise(
                np.array([0]), rate=0.5, transition=np.array([0, 5]), rng=np.random.default_rng()
            ),
            "length must equal num_classes",
        ),
        (lambda: noise_rate(np.zeros(3), np.zeros(4)), "same length"),
    ],
)
def test_validation_messages(call, match):
    with pytest.raises(ValueError, match=match):
        call()
