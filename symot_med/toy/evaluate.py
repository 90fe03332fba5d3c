"""Evaluation of learned toy maps against exact discrete optimal transport.

Reported quantities, all on the 2000-point training sets x ~ p and z ~ q:

- transport cost of the learned map, forward (1/N) sum_i |x_i - T(x_i)|^2 and backward
  (1/M) sum_j |T^-1(z_j) - z_j|^2, summed over coordinates (squared length units);
- full biased MMD^2 (equation (3) of SyMOT-Flow), forward MMD^2(T(x), z) and backward
  MMD^2(T^-1(z), x), with one fixed kernel for every pair, method and direction
  (``REPORT_SCALES`` times bandwidth 1 length unit);
- the exact discrete OT cost between the sets x and z, from POT's network simplex;
- the exact OT cost between each set and its own images, x and T(x) forward, T^-1(z) and z
  backward: the minimum cost at which any one-to-one assignment reaches the points the map
  reaches. The map's cost is never below it, and equals it when the map is optimal for the
  distribution it produces, whether or not that is the target;
- the MMD noise floor: the same MMD^2 between two independent draws of the target
  distribution of the same size, which a perfect map would reach on average;
- an estimate of W2^2(p, q), the least mean cost E|x - T(x)|^2 of any map T that carries p
  onto q: the mean exact OT cost between independent draws of p and q.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import ot
import torch

from symot_med.losses import mmd2
from symot_med.toy.datasets import draw

logger = logging.getLogger(__name__)

# Fixed Gaussian bandwidths sigma_k (length units) of the reporting kernel
# k(a, b) = sum_k exp(-|a - b|^2 / (2 sigma_k^2)): 2^-3 .. 2^3, covering the noise scale of the
# moons (0.05) up to the spread of the mixtures (about 10).
REPORT_SCALES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
REPORT_BANDWIDTH = 1.0

# On the 2000-point toy sets, POT 0.9.7's network simplex needed between 3 x 10^4 and 10^5
# iterations, close to its default limit of 10^5. At the limit it returns a too-large cost with
# only a warning (33.4 instead of 31.98 on Gauss to Gauss at 10^4 iterations).
DEFAULT_NUM_ITER_MAX = 100_000_000

# First draw index of the independent draws behind the W2^2(p, q) estimate. The noise floors
# use draws 1 .. 2 * repeats and the training sets draw 0, so these indices stay clear of both.
W2_DRAW_INDEX = 1_000_000


class ExactOTError(RuntimeError):
    """Raised when POT's network simplex does not reach the optimum."""


def report_mmd2(a: np.ndarray, b: np.ndarray) -> float:
    """Return the full biased MMD^2 of (N, D) ``a`` and (M, D) ``b`` with the reporting kernel.

    MMD_b^2 = mean k(a, a') + mean k(b, b') - 2 mean k(a, b) over all pairs, including i = j,
    so it is 0 for identical sets and never negative in exact arithmetic. Dimensionless, in
    [0, 2 K] with K = len(REPORT_SCALES). Computed in float64.
    """
    return float(
        mmd2(
            torch.as_tensor(np.asarray(a), dtype=torch.float64),
            torch.as_tensor(np.asarray(b), dtype=torch.float64),
            estimator="biased",
            scales=REPORT_SCALES,
            bandwidth=REPORT_BANDWIDTH,
            chunk_size=1024,
        )
    )


def mean_transport_cost(a: np.ndarray, b: np.ndarray) -> float:
    """Return (1/N) sum_i |a_i - b_i|^2 of paired (N, D) points, in squared length units."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"a and b must be paired (N, D) arrays, got {a.shape} and {b.shape}.")
    return float(np.mean(np.sum((a - b) ** 2, axis=1)))


def transport_cost_standard_error(a: np.ndarray, b: np.ndarray) -> float:
    """Return the standard error of :func:`mean_transport_cost` over the N pairs, in squared length units.

    SE = s / sqrt(N), with s the sample standard deviation (N - 1 in the denominator) of the
    per-point costs |a_i - b_i|^2. It measures how much the mean cost of a fixed map would vary
    between N-point draws of its inputs. 0 for N = 1.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"a and b must be paired (N, D) arrays, got {a.shape} and {b.shape}.")
    if a.shape[0] < 2:
        return 0.0
    costs = np.sum((a - b) ** 2, axis=1)  # (N,)
    return float(np.std(costs, ddof=1) / np.sqrt(costs.shape[0]))


def exact_ot_cost(x: np.ndarray, z: np.ndarray, num_iter_max: int = DEFAULT_NUM_ITER_MAX) -> float:
    """Solve the discrete OT problem between two point sets with uniform weights.

    OT = min_P sum_ij P_ij |x_i - z_j|^2 over couplings P with row sums 1/N and column sums
    1/M, with the cost matrix ``ot.dist(x, z)`` (squared Euclidean, summed over coordinates)
    and POT's ``ot.emd2``. For N = M an optimal P is a permutation matrix / N, so OT is the
    smallest mean cost of any one-to-one assignment.

    Args:
        x: (N, D) points.
        z: (M, D) points.
        num_iter_max: iteration limit of the network simplex.

    Returns:
        OT cost in squared length units.

    Raises:
        ExactOTError: if the solver stops before the optimum (its iteration limit, or an
            infeasible or unbounded problem), which POT reports only as a warning.
    """
    x, z = np.asarray(x, dtype=np.float64), np.asarray(z, dtype=np.float64)
    if x.ndim != 2 or z.ndim != 2 or x.shape[1] != z.shape[1]:
        raise ValueError(f"x and z must be (N, D) and (M, D) arrays, got {x.shape} and {z.shape}.")
    weights_x = np.full(x.shape[0], 1.0 / x.shape[0])
    weights_z = np.full(z.shape[0], 1.0 / z.shape[0])
    cost_matrix = ot.dist(x, z)  # (N, M), |x_i - z_j|^2

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cost, log = ot.emd2(weights_x, weights_z, cost_matrix, numItermax=num_iter_max, log=True)
    messages = [str(warning.message) for warning in caught]
    # POT's network simplex returns result code 1 for an optimal solution.
    if log["result_code"] != 1 or any("numItermax" in message for message in messages):
        raise ExactOTError(
            f"ot.emd2 did not reach the optimum (result code {log['result_code']}, warning "
            f"{log['warning']!r}, messages {messages}); raise num_iter_max (now {num_iter_max})."
        )
    return float(cost)


def mmd_noise_floor(pair: str, side: str, n: int, seed: int, repeats: int = 5) -> dict[str, float]:
    """Estimate the MMD^2 between two independent n-point draws of one side of a pair.

    Draw pairs (2k + 1, 2k + 2), k = 0..repeats-1, of :func:`symot_med.toy.datasets.draw`
    are compared with :func:`report_mmd2`; draw 0, the training set, is not used.

    Returns:
        {"mean": ..., "std": ..., "repeats": ...}, dimensionless like the MMD^2.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}.")
    values = [
        report_mmd2(draw(pair, side, n, seed, 2 * k + 1), draw(pair, side, n, seed, 2 * k + 2))
        for k in range(repeats)
    ]
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "repeats": repeats}


def w2_estimate(pair: str, n: int, seed: int, repeats: int = 4) -> dict[str, float]:
    """Estimate W2^2(p, q) by the exact OT cost between independent n-point draws of p and q.

    W2^2(p, q) is the least mean cost E|x - T(x)|^2 of any map T that carries p onto q, so a
    map that reaches the target cannot cost less on average. The OT cost between two n-point
    draws lies above W2^2(p, q) on average (the OT cost is jointly convex in the two
    distributions) and approaches it as n grows. Draw pair k uses draw index
    ``W2_DRAW_INDEX + k`` of :func:`symot_med.toy.datasets.draw` on both sides,
    independent of the training sets and the noise-floor draws.

    Peak memory grows as n^2: about 1 GB for the process at n = 4000 with POT 0.9.7.

    Returns:
        {"mean": ..., "std": ... over the draw pairs, in squared length units, "repeats": ...,
        "points": n}.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}.")
    values = [
        exact_ot_cost(
            draw(pair, "source", n, seed, W2_DRAW_INDEX + k), draw(pair, "target", n, seed, W2_DRAW_INDEX + k)
        )
        for k in range(repeats)
    ]
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "repeats": repeats, "points": n}


def evaluate_map(x: np.ndarray, z: np.ndarray, t_x: np.ndarray, t_inv_z: np.ndarray) -> dict[str, float]:
    """Return the transport costs and report MMD^2 of a learned map in both directions.

    Args:
        x: (N, 2) source points.
        z: (M, 2) target points.
        t_x: (N, 2) T(x).
        t_inv_z: (M, 2) T^-1(z).

    Returns:
        {"cost_forward", "cost_backward"} in squared length units, and their standard errors
        over the points {"cost_forward_se", "cost_backward_se"};
        {"mmd_forward", "mmd_backward"}: MMD^2(T(x), z) and MMD^2(T^-1(z), x); and
        {"image_ot_forward", "image_ot_backward"}: the exact OT cost between x and T(x) and
        between T^-1(z) and z, in squared length units, a lower bound of the matching cost.
    """
    return {
        "cost_forward": mean_transport_cost(x, t_x),
        "cost_backward": mean_transport_cost(t_inv_z, z),
        "cost_forward_se": transport_cost_standard_error(x, t_x),
        "cost_backward_se": transport_cost_standard_error(t_inv_z, z),
        "mmd_forward": report_mmd2(t_x, z),
        "mmd_backward": report_mmd2(t_inv_z, x),
        "image_ot_forward": exact_ot_cost(x, t_x),
        "image_ot_backward": exact_ot_cost(t_inv_z, z),
    }
