"""Tests of the toy pairs and of the closed-form Gaussian OT cost."""

from __future__ import annotations

import numpy as np
import ot
import pytest

from symot_med.toy.datasets import (
    GAUSS_SOURCE_COV,
    GAUSS_SOURCE_MEAN,
    GAUSS_TARGET_COV,
    GAUSS_TARGET_MEAN,
    PAIR_NAMES,
    draw,
    gaussian_w2_squared,
    sample_circles,
    sample_gaussian_mixture,
    sample_moons,
)


@pytest.mark.parametrize("pair", PAIR_NAMES)
@pytest.mark.parametrize("side", ["source", "target"])
def test_draw_shape_and_reproducible(pair, side):
    first = draw(pair, side, 300, seed=3)
    second = draw(pair, side, 300, seed=3)

    assert first.shape == (300, 2)
    assert first.dtype == np.float64
    np.testing.assert_array_equal(first, second)


def test_draw_streams_are_independent():
    training = draw("gauss-gauss", "source", 100, seed=0)

    assert not np.allclose(training, draw("gauss-gauss", "source", 100, seed=1))
    assert not np.allclose(training, draw("gauss-gauss", "source", 100, seed=0, draw_index=1))
    assert not np.allclose(training, draw("moons-circles", "source", 100, seed=0))


def test_gauss_pair_moments():
    source = draw("gauss-gauss", "source", 40_000, seed=0)
    target = draw("gauss-gauss", "target", 40_000, seed=0)

    np.testing.assert_allclose(source.mean(axis=0), GAUSS_SOURCE_MEAN, atol=0.03)
    np.testing.assert_allclose(np.cov(source.T), GAUSS_SOURCE_COV, atol=0.05)
    np.testing.assert_allclose(target.mean(axis=0), GAUSS_TARGET_MEAN, atol=0.03)
    np.testing.assert_allclose(np.cov(target.T), GAUSS_TARGET_COV, atol=0.05)


def test_circles_radii():
    points = sample_circles(20_000, np.random.default_rng(0), noise=0.0)
    radii = np.hypot(points[:, 0], points[:, 1])

    assert set(np.round(radii, 9)) == {0.5, 1.0}
    assert np.mean(np.isclose(radii, 1.0)) == pytest.approx(0.5, abs=0.02)


def test_moons_lie_on_shifted_unit_arcs():
    points = sample_moons(5000, np.random.default_rng(0), noise=0.0) + np.array([0.5, 0.25])
    upper = np.hypot(points[:, 0], points[:, 1])
    lower = np.hypot(points[:, 0] - 1.0, points[:, 1] - 0.5)

    on_an_arc = np.isclose(upper, 1.0) | np.isclose(lower, 1.0)
    assert on_an_arc.all()
    assert np.abs(points.mean(axis=0) - [0.5, 0.25]).max() < 0.05


def test_mixture_uses_every_component_equally():
    means = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    covariances = np.tile(0.01 * np.eye(2), (3, 1, 1))

    points = sample_gaussian_mixture(30_000, np.random.default_rng(0), means, covariances)

    nearest = np.argmin(((points[:, None, :] - means[None]) ** 2).sum(axis=2), axis=1)
    np.testing.assert_allclose(np.bincount(nearest) / len(points), [1 / 3] * 3, atol=0.01)


def test_gaussian_w2_same_covariance_is_mean_shift():
    covariance = np.array([[2.0, 0.3], [0.3, 0.5]])

    result = gaussian_w2_squared([0.0, 0.0], covariance, [3.0, -1.0], covariance)

    assert result == pytest.approx(10.0, abs=1e-10)


def test_gaussian_w2_isotropic_scaling():
    # N(0, a^2 I) -> N(0, b^2 I) in 2-D: W2^2 = 2 (a - b)^2.
    result = gaussian_w2_squared([0.0, 0.0], 4.0 * np.eye(2), [0.0, 0.0], 9.0 * np.eye(2))

    assert result == pytest.approx(2.0, abs=1e-10)


def test_gauss_pair_discrete_ot_near_closed_form():
    closed_form = gaussian_w2_squared(GAUSS_SOURCE_MEAN, GAUSS_SOURCE_COV, GAUSS_TARGET_MEAN, GAUSS_TARGET_COV)
    x = draw("gauss-gauss", "source", 800, seed=5)
    z = draw("gauss-gauss", "target", 800, seed=5)
    weights = np.full(800, 1 / 800)

    discrete = ot.emd2(weights, weights, ot.dist(x, z), numItermax=10_000_000)

    assert discrete == pytest.approx(closed_form, rel=0.05)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: draw("spirals", "source", 10, 0), "Unknown toy pair 'spirals'"),
        (lambda: draw("gauss-gauss", "middle", 10, 0), "side"),
        (lambda: draw("gauss-gauss", "source", 0, 0), "n must be a positive int"),
        (lambda: draw("gauss-gauss", "source", 10, -1), "seed"),
        (lambda: sample_gaussian_mixture(5, np.random.default_rng(0), np.zeros((2, 2)), np.zeros((3, 2, 2))), "means"),
    ],
    ids=["unknown-pair", "unknown-side", "zero-points", "negative-seed", "shape-mismatch"],
)
def test_draw_rejects_invalid_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()
