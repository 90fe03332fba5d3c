"""Tests of the squared-MMD estimators against direct double loops and known properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist

from symot_med.losses import DEFAULT_SCALES, ESTIMATORS, MMDLoss, median_bandwidth, mmd2, pairwise_sq_dists


def _double_loop_mmd2(
    x: np.ndarray, z: np.ndarray, estimator: str, bandwidth: float, scales=DEFAULT_SCALES
) -> float:
    """Reference estimate written pair by pair in float64, independent of the code under test."""

    def kernel(a: np.ndarray, b: np.ndarray) -> float:
        squared = float(np.sum((a - b) ** 2))
        return sum(math.exp(-squared / (2.0 * (scale * bandwidth) ** 2)) for scale in scales)

    def mean_kernel(a: np.ndarray, b: np.ndarray, skip_same_index: bool) -> float:
        total, count = 0.0, 0
        for i in range(len(a)):
            for j in range(len(b)):
                if skip_same_index and i == j:
                    continue
                total += kernel(a[i], b[j])
                count += 1
        return total / count

    x = x.reshape(len(x), -1)
    z = z.reshape(len(z), -1)
    unbiased = estimator == "unbiased"
    mean_xx = mean_kernel(x, x, skip_same_index=unbiased)
    mean_zz = mean_kernel(z, z, skip_same_index=unbiased)
    mean_xz = mean_kernel(x, z, skip_same_index=False)
    if estimator == "reduced":
        return mean_xx - 2.0 * mean_xz
    return mean_xx + mean_zz - 2.0 * mean_xz


def _samples(n: int, m: int, dim: int, *, shift: float = 0.5, seed: int = 0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=generator, dtype=dtype)
    z = torch.randn(m, dim, generator=generator, dtype=dtype) * 1.5 + shift
    return x, z


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_mmd2_matches_double_loop_fixed_bandwidth(estimator):
    x, z = _samples(5, 7, 3)
    expected = _double_loop_mmd2(x.numpy(), z.numpy(), estimator, bandwidth=1.3)

    result = mmd2(x, z, estimator=estimator, bandwidth=1.3)

    assert result.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_mmd2_matches_double_loop_median_bandwidth(estimator):
    # 5 + 6 pooled points give 55 pairs: an odd count, so the median is one distance.
    x, z = _samples(5, 6, 4)
    x = x.reshape(5, 2, 2)
    z = z.reshape(6, 2, 2)
    pooled = np.concatenate([x.reshape(5, -1).numpy(), z.reshape(6, -1).numpy()])
    reference_bandwidth = float(np.median(pdist(pooled)))
    expected = _double_loop_mmd2(x.numpy(), z.numpy(), estimator, bandwidth=reference_bandwidth)

    result = mmd2(x, z, estimator=estimator)

    assert result.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("n, m", [(5, 6), (4, 4)], ids=["odd-pair-count", "even-pair-count"])
def test_median_bandwidth_matches_numpy(n, m):
    x, z = _samples(n, m, 3)
    pooled = np.concatenate([x.numpy(), z.numpy()])

    result = median_bandwidth(x, z)

    assert result.item() == pytest.approx(float(np.median(pdist(pooled))), rel=1e-12)


def test_median_bandwidth_is_detached():
    x, z = _samples(6, 6, 2)
    x.requires_grad_(True)

    result = median_bandwidth(x, z)

    assert not result.requires_grad


def test_median_bandwidth_subset_is_deterministic():
    x, z = _samples(300, 200, 2, seed=1)

    first = median_bandwidth(x, z, max_points=64)
    second = median_bandwidth(x, z, max_points=64)
    full = median_bandwidth(x, z, max_points=10_000)

    assert first.item() == second.item()
    assert first.item() != full.item()
    assert first.item() == pytest.approx(full.item(), rel=0.25)


def test_median_bandwidth_skips_coincident_pairs():
    z = torch.tensor([[0.0], [0.0], [0.0], [0.0], [3.0]], dtype=torch.float64)

    with pytest.warns(UserWarning, match="non-zero distances"):
        result = median_bandwidth(z[:3], z[3:])

    assert result.item() == pytest.approx(3.0)


def test_mmd2_default_bandwidth_is_median():
    x, z = _samples(8, 9, 3)

    default = mmd2(x, z)
    explicit = mmd2(x, z, bandwidth=median_bandwidth(x, z))

    assert default.item() == explicit.item()


def test_mmd2_biased_zero_for_identical_sets():
    x, _ = _samples(20, 1, 5, dtype=torch.float32)

    result = mmd2(x, x.clone(), estimator="biased")

    assert abs(result.item()) < 1e-6


def test_mmd2_biased_grows_with_shift():
    x, _ = _samples(50, 1, 2, seed=3)
    shifts = [0.0, 0.25, 0.5, 1.0, 2.0]

    values = [mmd2(x, x + shift, estimator="biased", bandwidth=1.0).item() for shift in shifts]

    assert values[0] == pytest.approx(0.0, abs=1e-12)
    for smaller, larger in zip(values, values[1:]):
        assert larger > smaller


def test_mmd2_unbiased_mean_near_zero():
    generator = torch.Generator().manual_seed(7)
    unbiased, biased = [], []
    for _ in range(300):
        x = torch.randn(12, 2, generator=generator, dtype=torch.float64)
        z = torch.randn(12, 2, generator=generator, dtype=torch.float64)
        unbiased.append(mmd2(x, z, estimator="unbiased", bandwidth=1.0).item())
        biased.append(mmd2(x, z, estimator="biased", bandwidth=1.0).item())
    unbiased_mean = float(np.mean(unbiased))
    standard_error = float(np.std(unbiased) / math.sqrt(len(unbiased)))

    assert abs(unbiased_mean) < 4.0 * standard_error
    # The biased estimator is biased upwards by O(1/N), far outside that band.
    assert float(np.mean(biased)) > 10.0 * standard_error


def test_mmd2_reduced_is_biased_minus_target_term():
    x, z = _samples(6, 9, 3)

    reduced = mmd2(x, z, estimator="reduced", bandwidth=0.8)
    biased = mmd2(x, z, estimator="biased", bandwidth=0.8)
    # reduced(z, z) = mean k(z, z') - 2 mean k(z, z') = -mean k(z, z').
    target_term = mmd2(z, z, estimator="reduced", bandwidth=0.8)

    assert reduced.item() == pytest.approx(biased.item() + target_term.item(), rel=1e-12)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("chunk_size", [None, 2], ids=["unchunked", "chunked"])
def test_mmd2_gradcheck_float64(estimator, chunk_size):
    x, z = _samples(4, 5, 3)
    x.requires_grad_(True)
    z.requires_grad_(True)

    def function(x_input, z_input):
        return mmd2(x_input, z_input, estimator=estimator, bandwidth=1.1, chunk_size=chunk_size)

    assert torch.autograd.gradcheck(function, (x, z), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("chunk_size", [1, 3, 16])
def test_mmd2_chunked_equals_unchunked(estimator, chunk_size):
    x, z = _samples(11, 7, 3, dtype=torch.float32)
    x_chunked = x.clone().requires_grad_(True)
    x_full = x.clone().requires_grad_(True)

    chunked = mmd2(x_chunked, z, estimator=estimator, chunk_size=chunk_size)
    full = mmd2(x_full, z, estimator=estimator)
    chunked.backward()
    full.backward()

    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x_chunked.grad, x_full.grad, rtol=1e-4, atol=1e-6)


def test_pairwise_sq_dists_matches_cdist():
    a, b = _samples(9, 13, 6)

    result = pairwise_sq_dists(a, b)

    assert result.shape == (9, 13)
    torch.testing.assert_close(result, torch.cdist(a, b) ** 2, rtol=1e-10, atol=1e-10)


def test_pairwise_sq_dists_nonnegative_for_equal_rows():
    a = torch.full((4, 100), 1234.5678, dtype=torch.float32)

    result = pairwise_sq_dists(a, a)

    assert bool((result >= 0).all())


def test_mmd2_half_precision_computed_in_float32():
    x, z = _samples(10, 10, 4, dtype=torch.float32)
    reference = mmd2(x, z, bandwidth=1.0)

    result = mmd2(x.bfloat16(), z.bfloat16(), bandwidth=1.0)

    assert result.dtype == torch.float32
    assert result.item() == pytest.approx(reference.item(), rel=0.05)


def test_mmd_loss_module_matches_function():
    x, z = _samples(6, 8, 3)
    module = MMDLoss(estimator="unbiased", scales=(0.5, 1.0), bandwidth=2.0, chunk_size=3)

    result = module(x, z)

    expected = mmd2(x, z, estimator="unbiased", scales=(0.5, 1.0), bandwidth=2.0)
    assert result.item() == pytest.approx(expected.item(), rel=1e-12)


_X, _Z = _samples(4, 5, 3)
_INVALID_CALLS = {
    "unknown-estimator": (dict(x=_X, z=_Z, estimator="linear"), ValueError, "estimator.*'linear'"),
    "feature-mismatch": (dict(x=_X, z=_Z[:, :2]), ValueError, "features.*3.*2"),
    "empty-x": (dict(x=_X[:0], z=_Z), ValueError, "x is empty"),
    "nan-in-z": (dict(x=_X, z=_Z.clone().fill_(math.nan)), ValueError, "z contains NaN"),
    "chunk-size-zero": (dict(x=_X, z=_Z, chunk_size=0), ValueError, "chunk_size.*0"),
    "empty-scales": (dict(x=_X, z=_Z, scales=()), ValueError, "scales"),
    "negative-scale": (dict(x=_X, z=_Z, scales=(1.0, -2.0)), ValueError, "scales.*-2.0"),
    "negative-bandwidth": (dict(x=_X, z=_Z, bandwidth=-1.0), ValueError, "bandwidth.*-1.0"),
    "unbiased-one-sample": (dict(x=_X[:1], z=_Z, estimator="unbiased"), ValueError, "N=1"),
    "dtype-mismatch": (dict(x=_X, z=_Z.float()), TypeError, "dtype"),
    "integer-input": (dict(x=_X.long(), z=_Z.long()), TypeError, "floating-point"),
}


@pytest.mark.parametrize("case", list(_INVALID_CALLS), ids=list(_INVALID_CALLS))
def test_mmd2_rejects_invalid_input(case):
    arguments, error, message = _INVALID_CALLS[case]

    with pytest.raises(error, match=message):
        mmd2(**arguments)


def test_mmd_loss_rejects_unknown_estimator():
    with pytest.raises(ValueError, match="estimator.*'mean'"):
        MMDLoss(estimator="mean")
