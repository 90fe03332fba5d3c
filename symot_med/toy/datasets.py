"""The four 2-D toy pairs of the SyMOT-Flow illustrative experiments, generated from a seed.

Each pair has a source distribution p (samples x) and a target distribution q (samples z),
both in R^2 with coordinates in arbitrary length units. SyMOT-Flow (Xiong, Ding and Zhang,
Section 5.2 and Appendix A) names the pairs, draws 2000 points per side and gives the moons
and circles noise 0.05, but it gives no centres or covariances. The values
below are our own choices, so the paper's numbers measure other data and compare with ours
only in their ordering and rough size:

=================  ===================================================  ==================================================
pair               source p                                             target q
=================  ===================================================  ==================================================
moons-circles      two moons, centred on the origin, noise 0.05         two circles, radii 1 and 0.5, noise 0.05
gauss-gauss        N((0, 0), I)                                         N((4, 4), [[2, 0.8], [0.8, 1]])
8gauss-8gauss      8 Gaussians, centres on a circle of radius 3,        8 Gaussians, centres on a circle of radius 5
                   angles 2 pi k / 8, covariance 0.1^2 I                 rotated by pi / 12, covariance 0.15^2 along the
                                                                        radius and 0.45^2 along the tangent
linear-gauss       5 Gaussians, centres (-8 + 4 k, 0), k = 0..4,        5 Gaussians, centres (0, 8) + (-8 + 4 k) (0.6, 0.8),
                   covariance 0.5^2 I                                   covariance diag(0.8^2, 0.3^2)
=================  ===================================================  ==================================================

"Noise 0.05" is isotropic Gaussian noise with standard deviation 0.05, added to every point.
Mixtures have equal weights, and each point picks its component independently. In 8 Gauss to
8 Gauss the rotation pi / 12 makes each source component closest to one target component.
With pi / 8 every source component would be equally close to two, and a smooth map would have
to tear each component in two.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

Side = Literal["source", "target"]
SIDES: tuple[str, ...] = ("source", "target")

# Standard deviation of the isotropic noise on the moons and the circles.
MOONS_CIRCLES_NOISE = 0.05


@dataclass(frozen=True)
class ToyPair:
    """One toy pair: a name, a title for tables and a sampler per side.

    Attributes:
        name: identifier used on the command line and in file names.
        title: the pair's name in the SyMOT-Flow tables.
        source: ``source(n, rng)`` returns (n, 2) float64 samples of p.
        target: ``target(n, rng)`` returns (n, 2) float64 samples of q.
    """

    name: str
    title: str
    source: Callable[[int, np.random.Generator], np.ndarray]
    target: Callable[[int, np.random.Generator], np.ndarray]


def sample_moons(n: int, rng: np.random.Generator, noise: float = MOONS_CIRCLES_NOISE) -> np.ndarray:
    """Draw ``n`` points of the two-moons distribution, centred on the origin.

    A point picks the upper or the lower moon with probability 1/2 and an angle t ~ U[0, pi].
    The upper moon is (cos t, sin t), the lower one (1 - cos t, 0.5 - sin t), both shifted by
    (-0.5, -0.25) so the mean is about 0. Gaussian noise with standard deviation ``noise`` is
    added to both coordinates.

    Returns:
        (n, 2) float64 array.
    """
    _check_count(n)
    angle = rng.uniform(0.0, math.pi, size=n)
    lower = rng.random(n) < 0.5
    points = np.stack([np.cos(angle), np.sin(angle)], axis=1)  # (n, 2)
    points[lower] = np.stack([1.0 - np.cos(angle[lower]), 0.5 - np.sin(angle[lower])], axis=1)
    points -= np.array([0.5, 0.25])
    return points + noise * rng.standard_normal((n, 2))


def sample_circles(
    n: int,
    rng: np.random.Generator,
    radii: tuple[float, float] = (1.0, 0.5),
    noise: float = MOONS_CIRCLES_NOISE,
) -> np.ndarray:
    """Draw ``n`` points on two concentric circles around the origin.

    A point picks one of the ``radii`` with probability 1/2 and an angle t ~ U[0, 2 pi), and
    lies at r (cos t, sin t) plus Gaussian noise with standard deviation ``noise``.

    Returns:
        (n, 2) float64 array.
    """
    _check_count(n)
    angle = rng.uniform(0.0, 2.0 * math.pi, size=n)
    radius = np.where(rng.random(n) < 0.5, radii[0], radii[1])
    points = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)  # (n, 2)
    return points + noise * rng.standard_normal((n, 2))


def sample_gaussian_mixture(
    n: int,
    rng: np.random.Generator,
    means: np.ndarray,
    covariances: np.ndarray,
) -> np.ndarray:
    """Draw ``n`` points of an equal-weight Gaussian mixture.

    Args:
        n: number of points.
        rng: NumPy generator, the only source of randomness.
        means: (K, 2) component means.
        covariances: (K, 2, 2) symmetric positive definite component covariances.

    Returns:
        (n, 2) float64 array. Component k is chosen with probability 1/K per point.
    """
    _check_count(n)
    means = np.asarray(means, dtype=np.float64)
    covariances = np.asarray(covariances, dtype=np.float64)
    if means.ndim != 2 or means.shape[1] != 2 or covariances.shape != (means.shape[0], 2, 2):
        raise ValueError(
            f"Expected means (K, 2) and covariances (K, 2, 2), got {means.shape} and "
            f"{covariances.shape}."
        )
    factors = np.linalg.cholesky(covariances)  # (K, 2, 2), raises for a non-SPD covariance
    component = rng.integers(0, means.shape[0], size=n)
    normal = rng.standard_normal((n, 2))
    # (n, 2, 2) @ (n, 2, 1) -> (n, 2): L_k e for each point's component k.
    return means[component] + np.einsum("nij,nj->ni", factors[component], normal)


def _gauss_source(n: int, rng: np.random.Generator) -> np.ndarray:
    return sample_gaussian_mixture(n, rng, GAUSS_SOURCE_MEAN[None], GAUSS_SOURCE_COV[None])


def _gauss_target(n: int, rng: np.random.Generator) -> np.ndarray:
    return sample_gaussian_mixture(n, rng, GAUSS_TARGET_MEAN[None], GAUSS_TARGET_COV[None])


def _radial_covariances(angles: np.ndarray, radial_std: float, tangential_std: float) -> np.ndarray:
    """Return (K, 2, 2) covariances with the given standard deviations along and across each radius."""
    directions = np.stack([np.cos(angles), np.sin(angles)], axis=1)  # (K, 2)
    normals = np.stack([-np.sin(angles), np.cos(angles)], axis=1)  # (K, 2)
    return radial_std**2 * np.einsum("ki,kj->kij", directions, directions) + tangential_std**2 * np.einsum(
        "ki,kj->kij", normals, normals
    )


def _eight_gauss_source(n: int, rng: np.random.Generator) -> np.ndarray:
    angles = 2.0 * math.pi * np.arange(8) / 8
    means = 3.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return sample_gaussian_mixture(n, rng, means, _radial_covariances(angles, 0.1, 0.1))


def _eight_gauss_target(n: int, rng: np.random.Generator) -> np.ndarray:
    angles = 2.0 * math.pi * np.arange(8) / 8 + math.pi / 12
    means = 5.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return sample_gaussian_mixture(n, rng, means, _radial_covariances(angles, 0.15, 0.45))


def _linear_gauss_source(n: int, rng: np.random.Generator) -> np.ndarray:
    offsets = -8.0 + 4.0 * np.arange(5)
    means = np.stack([offsets, np.zeros(5)], axis=1)
    return sample_gaussian_mixture(n, rng, means, np.tile(0.5**2 * np.eye(2), (5, 1, 1)))


def _linear_gauss_target(n: int, rng: np.random.Generator) -> np.ndarray:
    offsets = -8.0 + 4.0 * np.arange(5)
    means = np.array([0.0, 8.0]) + offsets[:, None] * np.array([0.6, 0.8])
    return sample_gaussian_mixture(n, rng, means, np.tile(np.diag([0.8**2, 0.3**2]), (5, 1, 1)))


GAUSS_SOURCE_MEAN = np.array([0.0, 0.0])
GAUSS_SOURCE_COV = np.eye(2)
GAUSS_TARGET_MEAN = np.array([4.0, 4.0])
GAUSS_TARGET_COV = np.array([[2.0, 0.8], [0.8, 1.0]])

PAIRS: dict[str, ToyPair] = {
    pair.name: pair
    for pair in (
        ToyPair("moons-circles", "Moons to Circles", sample_moons, sample_circles),
        ToyPair("gauss-gauss", "Gauss to Gauss", _gauss_source, _gauss_target),
        ToyPair("8gauss-8gauss", "8 Gauss to 8 Gauss", _eight_gauss_source, _eight_gauss_target),
        ToyPair("linear-gauss", "Linear Gauss", _linear_gauss_source, _linear_gauss_target),
    )
}
PAIR_NAMES: tuple[str, ...] = tuple(PAIRS)


def get_pair(name: str) -> ToyPair:
    """Return the toy pair called ``name``; raise ValueError for an unknown name."""
    try:
        return PAIRS[name]
    except KeyError:
        raise ValueError(f"Unknown toy pair {name!r}; expected one of {PAIR_NAMES}.") from None


def draw(pair: str, side: Side, n: int, seed: int, draw_index: int = 0) -> np.ndarray:
    """Draw ``n`` points of one side of a pair, reproducibly.

    The generator is ``np.random.default_rng([seed, pair_index, side_index, draw_index])``,
    so the two sides, the pairs and the repeated draws use independent streams, and the same
    arguments always return the same points.

    Args:
        pair: pair name, one of ``PAIR_NAMES``.
        side: "source" (p, the x samples) or "target" (q, the z samples).
        n: number of points, at least 1.
        seed: non-negative base seed.
        draw_index: index of an independent repeat draw; 0 is the training set.

    Returns:
        (n, 2) float64 array.
    """
    toy_pair = get_pair(pair)
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}.")
    for name, value in (("seed", seed), ("draw_index", draw_index)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}.")
    rng = np.random.default_rng([seed, PAIR_NAMES.index(pair), SIDES.index(side), draw_index])
    sampler = toy_pair.source if side == "source" else toy_pair.target
    return sampler(n, rng)


def gaussian_w2_squared(
    mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray
) -> float:
    """Return the squared 2-Wasserstein distance between two Gaussians, in squared units.

    W2^2 = |m_a - m_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^(1/2) S_b S_a^(1/2))^(1/2)),
    the known closed form for Gaussians. It is the cost of the optimal map from
    N(m_a, S_a) to N(m_b, S_b) under c(a, b) = |a - b|^2.
    """
    mean_a, mean_b = np.asarray(mean_a, float), np.asarray(mean_b, float)
    root_a = _sqrtm_spd(np.asarray(cov_a, float))
    cross = _sqrtm_spd(root_a @ np.asarray(cov_b, float) @ root_a)
    bures = np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(cross)
    return float(np.sum((mean_a - mean_b) ** 2) + bures)


def gauss_pair_w2_squared() -> float:
    """Return W2^2 between the two Gaussians of the "gauss-gauss" pair, in squared length units."""
    return gaussian_w2_squared(GAUSS_SOURCE_MEAN, GAUSS_SOURCE_COV, GAUSS_TARGET_MEAN, GAUSS_TARGET_COV)


def _sqrtm_spd(matrix: np.ndarray) -> np.ndarray:
    """Return the symmetric square root of a symmetric positive semi-definite matrix."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def _check_count(n: object) -> None:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}.")
