"""Tests of the toy evaluation: exact OT against brute force, the POT warning, report MMD, SW."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from symot_med.losses import mmd2
from symot_med.toy.datasets import (
    GAUSS_SOURCE_COV,
    GAUSS_SOURCE_MEAN,
    GAUSS_TARGET_COV,
    GAUSS_TARGET_MEAN,
    draw,
    gaussian_w2_squared,
)
from symot_med.toy.evaluate import (
    REPORT_SCALES,
    ExactOTError,
    evaluate_map,
    exact_ot_cost,
    mean_transport_cost,
    mmd_noise_floor,
    report_mmd2,
    transport_cost_standard_error,
    w2_estimate,
)
from symot_med.toy.methods import METHODS, method_loss, needs_inverse, sliced_wasserstein2


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run on one torch thread: these tensors are tiny, and on a loaded machine two threads
    spend most of their time waiting for each other."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_exact_ot_matches_brute_force_permutations():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 2))
    z = rng.normal(size=(6, 2)) + [1.0, 0.0]
    # With equal sizes and uniform weights an optimal coupling is a permutation, so the
    # optimum is the cheapest of the 6! one-to-one assignments.
    brute_force = min(
        np.mean(np.sum((x - z[list(permutation)]) ** 2, axis=1))
        for permutation in itertools.permutations(range(6))
    )

    assert exact_ot_cost(x, z) == pytest.approx(brute_force, rel=1e-12)


def test_exact_ot_of_shuffled_shift():
    # z is x shifted by (0.5, 1) and shuffled. A translation is optimal for the squared
    # cost, so OT = |(0.5, 1)|^2 = 1.25 whatever the order of z.
    x = np.stack([np.arange(50.0), np.zeros(50)], axis=1)
    z = (x + [0.5, 1.0])[np.random.default_rng(1).permutation(50)]

    assert exact_ot_cost(x, z) == pytest.approx(1.25, rel=1e-12)


def test_exact_ot_raises_when_iteration_limit_reached():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 2))
    z = rng.normal(size=(300, 2))

    with pytest.raises(ExactOTError, match="numItermax"):
        exact_ot_cost(x, z, num_iter_max=10)


def test_report_mmd2_matches_double_loop():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(5, 2))
    b = rng.normal(size=(4, 2)) + 0.7

    def kernel(u, v):
        squared = float(np.sum((u - v) ** 2))
        return sum(math.exp(-squared / (2 * scale**2)) for scale in REPORT_SCALES)

    expected = (
        np.mean([[kernel(u, v) for v in a] for u in a])
        + np.mean([[kernel(u, v) for v in b] for u in b])
        - 2 * np.mean([[kernel(u, v) for v in b] for u in a])
    )

    assert report_mmd2(a, b) == pytest.approx(expected, rel=1e-10)


def test_report_mmd2_zero_for_identical_sets():
    points = np.random.default_rng(4).normal(size=(50, 2))

    assert report_mmd2(points, points.copy()) == pytest.approx(0.0, abs=1e-12)


def test_noise_floor_is_small_and_reproducible():
    first = mmd_noise_floor("gauss-gauss", "target", 200, seed=0, repeats=2)
    second = mmd_noise_floor("gauss-gauss", "target", 200, seed=0, repeats=2)
    shifted = report_mmd2(
        np.random.default_rng(5).normal(size=(200, 2)), np.random.default_rng(6).normal(size=(200, 2)) + 1.0
    )

    assert first == second
    assert first["repeats"] == 2
    assert 0 < first["mean"] < shifted


def test_w2_estimate_near_gaussian_closed_form():
    closed_form = gaussian_w2_squared(GAUSS_SOURCE_MEAN, GAUSS_SOURCE_COV, GAUSS_TARGET_MEAN, GAUSS_TARGET_COV)
    training_ot = exact_ot_cost(draw("gauss-gauss", "source", 400, 0), draw("gauss-gauss", "target", 400, 0))

    estimate = w2_estimate("gauss-gauss", 400, seed=0, repeats=4)

    assert estimate["mean"] == pytest.approx(closed_form, rel=0.05)
    assert 0 < estimate["std"] < 0.05 * closed_form
    assert (estimate["repeats"], estimate["points"]) == (4, 400)
    assert w2_estimate("gauss-gauss", 400, seed=0, repeats=4) == estimate
    # The draws are not the training sets of the same seed.
    assert w2_estimate("gauss-gauss", 400, seed=0, repeats=1)["mean"] != training_ot


def test_evaluate_map_of_translation():
    x = np.random.default_rng(7).normal(size=(40, 2))
    z = x + [3.0, 4.0]

    metrics = evaluate_map(x, z, t_x=x + [3.0, 4.0], t_inv_z=z - [3.0, 4.0])

    assert metrics["cost_forward"] == pytest.approx(25.0)
    assert metrics["cost_backward"] == pytest.approx(25.0)
    assert metrics["mmd_forward"] == pytest.approx(0.0, abs=1e-12)
    assert metrics["mmd_backward"] == pytest.approx(0.0, abs=1e-12)
    assert metrics["image_ot_forward"] == pytest.approx(25.0)
    assert metrics["cost_forward_se"] == pytest.approx(0.0, abs=1e-12)


def test_transport_cost_standard_error():
    a = np.zeros((3, 2))
    b = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])  # per-point costs 1, 4, 9

    standard_error = transport_cost_standard_error(a, b)

    # Sample variance ((1 - 14/3)^2 + (4 - 14/3)^2 + (9 - 14/3)^2) / 2 = 49/3, over N = 3 points.
    assert standard_error == pytest.approx(math.sqrt(49 / 3 / 3))
    assert transport_cost_standard_error(a[:1], b[:1]) == 0.0


def test_image_ot_of_gradient_map():
    # T(x) = A x + b with A symmetric positive definite is the gradient of a convex function,
    # so by Brenier's theorem no assignment of x onto T(x) costs less than T's own.
    rng = np.random.default_rng(8)
    x, z = rng.normal(size=(60, 2)), rng.normal(size=(60, 2))
    a = np.array([[2.0, 0.6], [0.6, 0.8]])
    b = np.array([1.0, -3.0])

    metrics = evaluate_map(x, z, t_x=x @ a + b, t_inv_z=(z - b) @ np.linalg.inv(a))

    assert metrics["image_ot_forward"] == pytest.approx(metrics["cost_forward"], rel=1e-9)
    assert metrics["image_ot_backward"] == pytest.approx(metrics["cost_backward"], rel=1e-9)


def test_image_ot_of_reflection():
    # x -> -x sends each point across the origin, but a centred cloud and its mirror image
    # overlap, so an optimal assignment onto the same images is far cheaper.
    x = np.random.default_rng(9).normal(size=(200, 2))
    x = x - x.mean(axis=0)

    metrics = evaluate_map(x, x, t_x=-x, t_inv_z=x)

    assert metrics["cost_forward"] == pytest.approx(4 * np.mean(np.sum(x**2, axis=1)))
    assert metrics["image_ot_forward"] < 0.25 * metrics["cost_forward"]
    assert metrics["image_ot_backward"] == pytest.approx(0.0, abs=1e-12)


def test_mean_transport_cost_rejects_unpaired():
    with pytest.raises(ValueError, match="paired"):
        mean_transport_cost(np.zeros((3, 2)), np.zeros((4, 2)))


def test_sliced_wasserstein_of_shift():
    # For a shift s, each projection is shifted by <theta, s>, so W2^2 = <theta, s>^2 and its
    # mean over directions uniform on the circle is |s|^2 / 2.
    # The standard error with 4000 directions is about 1 % of the mean.
    a = torch.randn(200, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    shift = torch.tensor([1.0, 2.0], dtype=torch.float64)

    value = sliced_wasserstein2(a, a + shift, 4000, torch.Generator().manual_seed(1))

    assert value.item() == pytest.approx(5.0 / 2, rel=0.05)


def test_sliced_wasserstein_zero_for_permuted_set():
    a = torch.randn(100, 2, generator=torch.Generator().manual_seed(2))

    value = sliced_wasserstein2(a, a[torch.randperm(100)], 16, torch.Generator().manual_seed(3))

    assert value.item() == pytest.approx(0.0, abs=1e-10)


def test_sliced_wasserstein_one_direction_matches_sorting():
    # In 1-D the only directions are +1 and -1, and both give the sorted-order W2^2.
    a = torch.tensor([[3.0], [0.0], [1.0]], dtype=torch.float64)
    b = torch.tensor([[2.0], [5.0], [1.0]], dtype=torch.float64)

    value = sliced_wasserstein2(a, b, 4, torch.Generator().manual_seed(0))

    assert value.item() == pytest.approx(((0 - 1) ** 2 + (1 - 2) ** 2 + (3 - 5) ** 2) / 3)


def test_sliced_wasserstein_rejects_unequal_sizes():
    with pytest.raises(ValueError, match="same shape"):
        sliced_wasserstein2(torch.zeros(3, 2), torch.zeros(4, 2), 5)


@pytest.mark.parametrize("method", METHODS)
def test_method_loss_terms(method):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(20, 2, generator=generator, dtype=torch.float64)
    z = torch.randn(20, 2, generator=generator, dtype=torch.float64) + 1.0
    t_x, t_inv_z = x + 0.9, z - 0.9

    terms = method_loss(method, x, z, t_x, t_inv_z if needs_inverse(method) else None, beta=0.5, bandwidth=1.0)

    forward_mmd = mmd2(t_x, z, estimator="reduced", bandwidth=1.0, scales=(0.25, 0.5, 1.0, 2.0, 4.0))
    expected_keys = {
        "symot": {"total", "mmd_forward", "mmd_inverse", "cost_forward", "cost_inverse"},
        "single-mmd": {"total", "mmd_forward", "mmd_inverse", "cost_forward", "cost_inverse"},
        "one-direction": {"total", "mmd_forward", "cost_forward"},
        "swot": {"total", "sw_forward", "sw_inverse", "cost_forward", "cost_inverse"},
    }[method]
    assert set(terms) == expected_keys
    assert terms["cost_forward"].item() == pytest.approx(2 * 0.9**2)
    if "mmd_forward" in terms:
        assert terms["mmd_forward"].item() == pytest.approx(forward_mmd.item())
    weight = 0.0 if method == "single-mmd" else 0.5
    cost_terms = terms["cost_forward"] + terms.get("cost_inverse", 0.0)
    distance_terms = sum(value for key, value in terms.items() if key.startswith(("mmd", "sw")))
    assert terms["total"].item() == pytest.approx((distance_terms + weight * cost_terms).item())


def test_method_loss_rejects_unknown_method():
    x = torch.zeros(4, 2)

    with pytest.raises(ValueError, match="Unknown method 'ot'"):
        method_loss("ot", x, x, x, x, beta=1.0)
