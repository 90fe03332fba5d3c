"""Squared maximum mean discrepancy (MMD) with a multi-scale Gaussian kernel.

The biased estimator is equation (3) and the reduced estimator is the MMD part of the
training loss, equation (7), of Z. Xiong, Q. Ding and X. Zhang, "Arbitrary Distributions
Mapping via SyMOT-Flow: A Flow-based Approach Integrating Maximum Mean Discrepancy and
Optimal Transport". The unbiased estimator is the U-statistic that drops the i = j terms.

Shapes: samples are (N, ...) and (M, ...) and are flattened to (N, D) and (M, D).
"""

from __future__ import annotations

import logging
import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

logger = logging.getLogger(__name__)

Estimator = Literal["biased", "reduced", "unbiased"]
ESTIMATORS: tuple[str, ...] = get_args(Estimator)

# Geometric ladder 2^-2 .. 2^2 around the median pairwise distance.
DEFAULT_SCALES: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)

BandwidthLike = float | Tensor | None


def pairwise_sq_dists(a: Tensor, b: Tensor) -> Tensor:
    """Compute the squared Euclidean distance between every row of ``a`` and every row of ``b``.

    d[i, j] = |a_i|^2 + |b_j|^2 - 2 a_i . b_j, clamped at 0 because rounding can make the
    expansion slightly negative for nearly equal rows. The matrix-product form needs
    O(N M) memory and never builds an (N, M, D) difference tensor.

    Args:
        a: (N, D) floating-point tensor.
        b: (M, D) tensor with the same D, dtype and device as ``a``.

    Returns:
        (N, M) tensor of squared distances, in squared input units.

    Raises:
        TypeError: if an input is not a floating-point tensor or the dtypes differ.
        ValueError: if an input is not 2-D or the feature sizes D differ.
    """
    _check_floating_tensor("a", a)
    _check_floating_tensor("b", b)
    if a.dim() != 2 or b.dim() != 2:
        raise ValueError(
            f"pairwise_sq_dists expects 2-D tensors (N, D) and (M, D), got a of shape "
            f"{tuple(a.shape)} and b of shape {tuple(b.shape)}; flatten the samples first."
        )
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"a and b must have the same feature size D, got {a.shape[1]} and {b.shape[1]}."
        )
    if a.dtype != b.dtype:
        raise TypeError(f"a and b must have the same dtype, got {a.dtype} and {b.dtype}.")

    a_sq = a.pow(2).sum(dim=1, keepdim=True)  # (N, 1)
    b_sq = b.pow(2).sum(dim=1).unsqueeze(0)  # (1, M)

    # (1, M) - 2 (N, D) @ (D, M) -> (N, M), then + (N, 1) in place: one (N, M) buffer before
    # the clamp. addmm's backward does not need its output, so the in-place add is safe.
    sq_dists = torch.addmm(b_sq, a, b.T, beta=1.0, alpha=-2.0)
    sq_dists.add_(a_sq)
    return sq_dists.clamp_min(0.0)


def median_bandwidth(a: Tensor, b: Tensor, max_points: int = 2048) -> Tensor:
    """Compute the median pairwise Euclidean distance of the pooled samples, detached.

    The pooled set is ``a`` and ``b`` flattened to (N, D) and (M, D) and stacked. The
    median runs over all pairs i < j and averages the two middle values when the number
    of pairs is even. With more than ``max_points`` pooled points, an evenly spaced subset
    of ``max_points`` rows is used, so the result is deterministic and both sets are
    represented in proportion to their sizes. The cost is O(max_points^2) memory.

    If the median is 0 (more than half the pairs coincide), the median of the non-zero
    distances is used instead, and 1.0 if all points coincide. Both cases warn.

    Args:
        a: (N, ...) samples.
        b: (M, ...) samples with the same number of features as ``a``.
        max_points: maximum number of pooled points used, at least 2.

    Returns:
        0-dim tensor in input units (a distance, not squared), with no gradient.
    """
    if isinstance(max_points, bool) or not isinstance(max_points, numbers.Integral):
        raise TypeError(f"max_points must be an int, got {type(max_points).__name__}.")
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points}.")
    a_flat, b_flat = _flatten_pair(a, b, first_name="a", second_name="b")

    with torch.no_grad():
        pooled = torch.cat([a_flat, b_flat], dim=0)  # (N + M, D)
        n_pooled = pooled.shape[0]
        if n_pooled < 2:
            raise ValueError(
                f"median_bandwidth needs at least 2 pooled points, got {n_pooled}."
            )

        if n_pooled > max_points:
            # Integer spacing n_pooled / max_points > 1 keeps the indices distinct.
            index = torch.arange(max_points, device=pooled.device) * n_pooled // max_points
            pooled = pooled[index]

        n_used = pooled.shape[0]
        upper = torch.ones(n_used, n_used, dtype=torch.bool, device=pooled.device).triu(1)
        distances = pairwise_sq_dists(pooled, pooled)[upper].sqrt()  # (n_used (n_used - 1) / 2,)
        median = _median(distances)

        if median <= 0:
            positive = distances[distances > 0]
            if positive.numel() == 0:
                warnings.warn(
                    "All pooled points coincide, so the median distance is 0; using "
                    "bandwidth 1.0. Pass bandwidth= to choose another value.",
                    stacklevel=2,
                )
                return torch.ones((), dtype=pooled.dtype, device=pooled.device)
            warnings.warn(
                "More than half of the pooled point pairs coincide, so the median distance "
                "is 0; using the median of the non-zero distances.",
                stacklevel=2,
            )
            median = _median(positive)
    return median


def mmd2(
    x: Tensor,
    z: Tensor,
    *,
    estimator: Estimator = "biased",
    scales: Sequence[float] = DEFAULT_SCALES,
    bandwidth: BandwidthLike = None,
    chunk_size: int | None = None,
) -> Tensor:
    r"""Estimate the squared MMD between the samples ``x`` and ``z``.

    Kernel: k(a, b) = sum_k exp(-|a - b|^2 / (2 sigma_k^2)), with sigma_k = scales[k] *
    bandwidth. When ``bandwidth`` is None it is ``median_bandwidth(x, z)``, detached, so the
    kernel follows the data scale. Pairwise distances grow like sqrt(D), so a bandwidth fixed
    for one D makes the kernel values collapse to 0 or 1 at another. One (N, M) distance
    matrix serves every sigma_k.

    Let S_ab = sum_{i, j} k(a_i, b_j) over all pairs, S*_aa the same sum over i != j only,
    and K = len(scales), the value of k(a, a):

    ============  ===================================================================  ======
    estimator     formula                                                              sign
    ============  ===================================================================  ======
    "biased"      S_xx / N^2 + S_zz / M^2 - 2 S_xz / (N M)                             >= 0
    "reduced"     S_xx / N^2 - 2 S_xz / (N M)                                          any
    "unbiased"    S*_xx / (N (N - 1)) + S*_zz / (M (M - 1)) - 2 S_xz / (N M)           any
    ============  ===================================================================  ======

    "biased" is the V-statistic of SyMOT-Flow equation (3). It is a distance: 0 for
    identical sets and non-negative in exact arithmetic, but rounding can leave values
    slightly below 0 (of the order of 1e-7 times K in float32). It is biased upwards by
    O(1/N). "reduced" is the SyMOT-Flow training form of equation (7). It keeps only the
    terms that depend on the first argument, which is the generated set, so it equals
    "biased" minus the constant S_zz / M^2. It has the same gradient with respect to ``x``,
    but it is not a distance and is usually negative, so use it for optimisation only.
    "unbiased" is the U-statistic. It is unbiased for MMD^2, can be negative, and needs
    N, M >= 2.

    Inputs in float16 or bfloat16 are computed in float32 with autocast disabled, because
    |a|^2 overflows float16 for images with tens of thousands of pixels.

    Args:
        x: (N, ...) samples. For "reduced" this is the generated set, e.g. T(x).
        z: (M, ...) samples with the same number of features D as ``x``.
        estimator: "biased", "reduced" or "unbiased", see the table.
        scales: positive multipliers of the bandwidth, one Gaussian kernel each.
        bandwidth: base bandwidth in input units (a distance), a positive number or 0-dim
            tensor, detached before use. None uses the median pairwise distance.
        chunk_size: if given, kernel sums run over blocks of ``chunk_size`` rows, so memory
            is O(chunk_size * max(N, M)) instead of O(N M). When gradients are needed, each
            block is recomputed in the backward pass (activation checkpointing), and the
            backward pass of one block holds about (len(scales) + 2) * chunk_size * max(N, M)
            values. The result equals the unchunked one up to float rounding.

    Returns:
        0-dim tensor in the dtype of ``x`` (float32 for half-precision inputs). It is
        dimensionless, like the kernel, and lies between -2 K and 2 K.

    Raises:
        TypeError: for non-tensor or non-floating inputs, or dtypes that differ.
        ValueError: for an unknown estimator, invalid scales, bandwidth or chunk_size,
            empty sets, feature sizes that differ, NaN or infinite values, or fewer than
            2 samples per set for "unbiased".
    """
    scale_values = _validate_mmd_options(
        estimator=estimator, scales=scales, bandwidth=bandwidth, chunk_size=chunk_size
    )
    x_flat, z_flat = _flatten_pair(x, z, first_name="x", second_name="z")
    _check_finite("x", x_flat)
    _check_finite("z", z_flat)
    n_x, n_z = x_flat.shape[0], z_flat.shape[0]
    if estimator == "unbiased" and (n_x < 2 or n_z < 2):
        raise ValueError(
            f"The unbiased estimator needs at least 2 samples in each set, got N={n_x} and "
            f"M={n_z}; use estimator='biased' for smaller sets."
        )

    with torch.autocast(device_type=x_flat.device.type, enabled=False):
        if x_flat.dtype in (torch.float16, torch.bfloat16):
            x_flat = x_flat.float()
            z_flat = z_flat.float()

        if bandwidth is None:
            sigma = median_bandwidth(x_flat, z_flat)
        else:
            sigma = torch.as_tensor(bandwidth, dtype=x_flat.dtype, device=x_flat.device)
            sigma = sigma.detach()
        scale_tensor = torch.tensor(scale_values, dtype=x_flat.dtype, device=x_flat.device)
        gammas = 1.0 / (2.0 * (scale_tensor * sigma) ** 2)  # (K,), 1 / (2 sigma_k^2)

        # Distances do not change under a common shift. Subtracting the detached pooled mean
        # shrinks |a|^2 and with it the cancellation error of the matrix-product form.
        centre = (x_flat.detach().sum(dim=0) + z_flat.detach().sum(dim=0)) / (n_x + n_z)
        x_centred = x_flat - centre  # (N, D)
        z_centred = z_flat - centre  # (M, D)

        drop_diagonal = estimator == "unbiased"
        sum_xx = _kernel_sum(
            x_centred, x_centred, gammas, chunk_size, same_set=True, drop_diagonal=drop_diagonal
        )
        sum_xz = _kernel_sum(
            x_centred, z_centred, gammas, chunk_size, same_set=False, drop_diagonal=False
        )
        cross_term = 2.0 * sum_xz / (n_x * n_z)

        if estimator == "reduced":
            return sum_xx / (n_x * n_x) - cross_term

        sum_zz = _kernel_sum(
            z_centred, z_centred, gammas, chunk_size, same_set=True, drop_diagonal=drop_diagonal
        )
        if estimator == "biased":
            return sum_xx / (n_x * n_x) + sum_zz / (n_z * n_z) - cross_term
        elif estimator == "unbiased":
            return sum_xx / (n_x * (n_x - 1)) + sum_zz / (n_z * (n_z - 1)) - cross_term
        else:
            raise ValueError(f"Unknown estimator {estimator!r}; expected one of {ESTIMATORS}.")


class MMDLoss(nn.Module):
    """Module form of :func:`mmd2`: stores the options and computes ``mmd2(x, z)``.

    The options are validated at construction. See :func:`mmd2` for the formulas, shapes,
    units and which estimators can be negative.
    """

    def __init__(
        self,
        estimator: Estimator = "biased",
        scales: Sequence[float] = DEFAULT_SCALES,
        bandwidth: BandwidthLike = None,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        self.scales = _validate_mmd_options(
            estimator=estimator, scales=scales, bandwidth=bandwidth, chunk_size=chunk_size
        )
        self.estimator = estimator
        self.bandwidth = bandwidth
        self.chunk_size = chunk_size

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        """Compute the squared MMD of (N, ...) samples ``x`` and (M, ...) samples ``z``."""
        return mmd2(
            x,
            z,
            estimator=self.estimator,
            scales=self.scales,
            bandwidth=self.bandwidth,
            chunk_size=self.chunk_size,
        )

    def extra_repr(self) -> str:
        return (
            f"estimator={self.estimator!r}, scales={self.scales}, "
            f"bandwidth={self.bandwidth}, chunk_size={self.chunk_size}"
        )


def _validate_mmd_options(
    *,
    estimator: str,
    scales: Sequence[float],
    bandwidth: BandwidthLike,
    chunk_size: int | None,
) -> tuple[float, ...]:
    """Raise ValueError or TypeError for an invalid MMD option and return the scales as floats."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}.")

    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence):
        raise TypeError(f"scales must be a sequence of numbers, got {scales!r}.")
    if len(scales) == 0:
        raise ValueError("scales must contain at least one bandwidth multiplier, got ().")
    scale_values = []
    for scale in scales:
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            raise TypeError(f"scales must contain real numbers, got {scale!r} in {scales!r}.")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scales must be finite and positive, got {scale!r} in {scales!r}.")
        scale_values.append(float(scale))

    if bandwidth is not None:
        if isinstance(bandwidth, Tensor):
            if bandwidth.numel() != 1:
                raise ValueError(
                    f"bandwidth must be a number or a 0-dim tensor, got a tensor of shape "
                    f"{tuple(bandwidth.shape)}."
                )
            bandwidth_value = float(bandwidth.detach().reshape(()))
        elif isinstance(bandwidth, bool) or not isinstance(bandwidth, numbers.Real):
            raise TypeError(f"bandwidth must be a number, a tensor or None, got {bandwidth!r}.")
        else:
            bandwidth_value = float(bandwidth)
        if not (math.isfinite(bandwidth_value) and bandwidth_value > 0):
            raise ValueError(f"bandwidth must be finite and positive, got {bandwidth_value!r}.")

    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral):
            raise TypeError(f"chunk_size must be an int or None, got {chunk_size!r}.")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}.")

    return tuple(scale_values)


def _check_floating_tensor(name: str, value: object) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}.")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}.")


def _check_finite(name: str, value: Tensor) -> None:
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} contains NaN or infinite values; check the inputs for overflow.")


def _flatten_pair(
    first: Tensor, second: Tensor, *, first_name: str, second_name: str
) -> tuple[Tensor, Tensor]:
    """Flatten (N, ...) and (M, ...) samples to (N, D) and (M, D) after checking them."""
    _check_floating_tensor(first_name, first)
    _check_floating_tensor(second_name, second)
    for name, value in ((first_name, first), (second_name, second)):
        if value.dim() == 0:
            raise ValueError(f"{name} must have a sample dimension (N, ...), got a 0-dim tensor.")
        if value.shape[0] == 0:
            raise ValueError(f"{name} is empty: it has 0 samples, shape {tuple(value.shape)}.")
    if first.dtype != second.dtype:
        raise TypeError(
            f"{first_name} and {second_name} must have the same dtype, got {first.dtype} and "
            f"{second.dtype}."
        )
    if first.device != second.device:
        raise ValueError(
            f"{first_name} and {second_name} must be on the same device, got {first.device} "
            f"and {second.device}."
        )

    first_flat = first.reshape(first.shape[0], -1)  # (N, ...) -> (N, D)
    second_flat = second.reshape(second.shape[0], -1)  # (M, ...) -> (M, D)
    if first_flat.shape[1] != second_flat.shape[1]:
        raise ValueError(
            f"{first_name} and {second_name} must have the same number of features per sample, "
            f"got {first_flat.shape[1]} (shape {tuple(first.shape)}) and {second_flat.shape[1]} "
            f"(shape {tuple(second.shape)})."
        )
    return first_flat, second_flat


def _median(values: Tensor) -> Tensor:
    """Return the median of a 1-D tensor, averaging the two middle values for even sizes."""
    count = values.numel()
    lower = torch.kthvalue(values, (count + 1) // 2).values
    if count % 2 == 1:
        return lower
    upper = torch.kthvalue(values, count // 2 + 1).values
    return (lower + upper) / 2


def _kernel_sum(
    a: Tensor,
    b: Tensor,
    gammas: Tensor,
    chunk_size: int | None,
    *,
    same_set: bool,
    drop_diagonal: bool,
) -> Tensor:
    """Sum the multi-scale kernel over all pairs of rows of (N, D) ``a`` and (M, D) ``b``.

    ``same_set`` means ``b`` is ``a``. The chunked path then computes only the blocks on and
    above the diagonal and counts the off-diagonal ones twice, which saves a third of the
    work of a biased or unbiased estimate. With ``drop_diagonal`` the i = j pairs are
    excluded.
    """
    n_rows = a.shape[0]
    if chunk_size is None or chunk_size >= n_rows:
        return _block_kernel_sum(a, b, gammas, 0 if drop_diagonal else None)

    # Without checkpointing, autograd would keep every block's (chunk, M) kernel matrices
    # for the backward pass, and peak memory would be that of the unchunked computation.
    recompute = torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)

    def block_sum(block: Tensor, columns: Tensor, diagonal_offset: int | None) -> Tensor:
        if recompute:
            return checkpoint(
                _block_kernel_sum,
                block,
                columns,
                gammas,
                diagonal_offset,
                use_reentrant=False,
                preserve_rng_state=False,
            )
        return _block_kernel_sum(block, columns, gammas, diagonal_offset)

    total = a.new_zeros(())
    for start in range(0, n_rows, chunk_size):
        end = min(start + chunk_size, n_rows)
        block = a[start:end]  # (chunk, D)
        if not same_set:
            total = total + block_sum(block, b, start if drop_diagonal else None)
            continue

        # Count the square block [start, end)^2 once and the rectangle [start, end) x [end, N)
        # twice. Because k is symmetric, the total equals the sum over all N^2 pairs.
        total = total + block_sum(block, block, 0 if drop_diagonal else None)
        if end < n_rows:
            total = total + 2.0 * block_sum(block, a[end:], None)
    return total


def _block_kernel_sum(
    block: Tensor, b: Tensor, gammas: Tensor, diagonal_offset: int | None
) -> Tensor:
    """Sum the multi-scale kernel between (n, D) ``block`` and (M, D) ``b``.

    If ``diagonal_offset`` is not None, row r of the block is row ``diagonal_offset + r`` of
    ``b``, and those pairs are excluded.
    """
    sq_dists = pairwise_sq_dists(block, b)  # (n, M)
    if diagonal_offset is not None:
        rows = torch.arange(block.shape[0], device=block.device)
        infinity = torch.tensor(math.inf, dtype=sq_dists.dtype, device=sq_dists.device)
        # exp(-inf) = 0 removes the pair exactly, and its gradient is 0.
        sq_dists = sq_dists.index_put((rows, rows + diagonal_offset), infinity)

    # Raise exponents below this bound to it, because float32 `exp` took 10 to 30 times longer
    # for subnormal or 0 results in our CPU measurement. Each kernel value then changes by less
    # than the smallest normal number times e^8 (4e-35 in float32), with no gradient.
    floor = math.log(torch.finfo(sq_dists.dtype).tiny) + 8.0
    total = sq_dists.new_zeros(())
    for gamma in gammas:
        # In-place exp saves one (n, M) buffer per scale. Its backward uses only its result.
        total = total + (sq_dists * -gamma).clamp_(min=floor).exp_().sum()
    return total
