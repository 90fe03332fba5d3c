"""SyMOT-Flow training loss: symmetric MMD plus a weighted symmetric transport cost.

Source: Z. Xiong, Q. Ding and X. Zhang, "Arbitrary Distributions Mapping via SyMOT-Flow: A
Flow-based Approach Integrating Maximum Mean Discrepancy and Optimal Transport", equation (7).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from symot_med.losses.mmd import (
    DEFAULT_SCALES,
    BandwidthLike,
    Estimator,
    _validate_mmd_options,
    mmd2,
)
from symot_med.losses.transport import COST_REDUCTIONS, CostReduction, transport_cost

Variant = Literal["symmetric", "forward"]
VARIANTS: tuple[str, ...] = get_args(Variant)

# A batch of samples: one (B, ...) tensor, or one tensor per latent level (VQ-VAE-2 top and
# bottom), each (B, C_l, H_l, W_l) with the same B.
SampleBatch = Tensor | Sequence[Tensor]


def symot_loss(
    x: SampleBatch,
    z: SampleBatch,
    t_x: SampleBatch,
    t_inv_z: SampleBatch | None,
    *,
    beta: float,
    variant: Variant = "symmetric",
    estimator: Estimator = "reduced",
    cost_over_dims: CostReduction = "sum",
    scales: Sequence[float] = DEFAULT_SCALES,
    bandwidth: BandwidthLike = None,
) -> dict[str, Tensor]:
    """Compute the SyMOT-Flow loss and its terms for one pair of batches.

    With x_i ~ p (N samples), z_j ~ q (M samples) and an invertible map T::

        "symmetric": total = MMD^2(T(x), z) + MMD^2(T^-1(z), x)
                             + beta * (cost(x, T(x)) + cost(T^-1(z), z))
        "forward":   total = MMD^2(T(x), z) + beta * cost(x, T(x))

    MMD^2 is :func:`~symot_med.losses.mmd.mmd2` with ``estimator``, ``scales`` and
    ``bandwidth``; cost is :func:`~symot_med.losses.transport.transport_cost`, the mean over
    samples of |a_i - b_i|^2 (``cost_over_dims="sum"``) or |a_i - b_i|^2 / D ("mean").
    "symmetric" is equation (7). "forward" is its one-direction ablation, which needs no
    inverse pass, so ``t_inv_z`` is ignored and may be None.

    The default ``estimator="reduced"`` is the training form of equation (7). It drops the
    kernel terms between real samples, which do not depend on T, so it is usually negative
    and "total" is not a distance. Pass ``estimator="biased"`` for values to report. In the
    reduced form the generated set is the first argument of each MMD: T(x) in the forward
    term and T^-1(z) in the inverse term.

    The method authors' public code averages the cost over dimensions and weights each
    direction by 0.5. Its weight w therefore matches ``cost_over_dims="mean"`` with
    beta = w / 2.

    Args:
        x: source batch, (N, ...) or a sequence of per-level tensors (N, C_l, H_l, W_l).
            Each sample's levels are flattened and concatenated to (N, D) before the MMD
            and the cost.
        z: target batch, structured like ``x`` with M samples.
        t_x: T(x), the same structure and shapes as ``x``.
        t_inv_z: T^-1(z), the same structure and shapes as ``z``; None for "forward".
        beta: non-negative weight of the transport cost.
        variant: "symmetric" or "forward".
        estimator: MMD estimator, "reduced", "biased" or "unbiased".
        cost_over_dims: "sum" or "mean", see :func:`transport_cost`.
        scales: bandwidth multipliers of the multi-scale Gaussian kernel.
        bandwidth: base kernel bandwidth; None uses the median pairwise distance of each
            MMD term's pooled samples.

    Returns:
        Dict of 0-dim tensors: "total", "mmd_forward" (T(x) vs z) and "cost_forward"
        (x vs T(x)). "symmetric" adds "mmd_inverse" (T^-1(z) vs x) and "cost_inverse"
        (T^-1(z) vs z). The "forward" variant omits these two keys.

    Raises:
        TypeError: for inputs that are neither tensors nor sequences of tensors.
        ValueError: for invalid options, a negative or non-finite beta, a missing
            ``t_inv_z`` with "symmetric", or shapes that do not match.
    """
    _validate_symot_options(
        beta=beta,
        variant=variant,
        estimator=estimator,
        cost_over_dims=cost_over_dims,
        scales=scales,
        bandwidth=bandwidth,
    )

    x_levels = _as_levels("x", x)
    z_levels = _as_levels("z", z)
    _check_same_level_shapes("x", x_levels, "z", z_levels, include_batch=False)
    t_x_levels = _as_levels("t_x", t_x)
    _check_same_level_shapes("x", x_levels, "t_x", t_x_levels, include_batch=True)

    x_flat = _flatten_levels(x_levels)  # (N, D)
    z_flat = _flatten_levels(z_levels)  # (M, D)
    t_x_flat = _flatten_levels(t_x_levels)  # (N, D)
    mmd_options = {"estimator": estimator, "scales": scales, "bandwidth": bandwidth}

    terms = {
        "mmd_forward": mmd2(t_x_flat, z_flat, **mmd_options),
        "cost_forward": transport_cost(x_flat, t_x_flat, over_dims=cost_over_dims),
    }
    if variant == "forward":
        terms["total"] = terms["mmd_forward"] + beta * terms["cost_forward"]
        return terms
    elif variant != "symmetric":
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}.")

    if t_inv_z is None:
        raise ValueError(
            "t_inv_z (T^-1(z)) is required for variant='symmetric'; pass it or use "
            "variant='forward'."
        )
    t_inv_z_levels = _as_levels("t_inv_z", t_inv_z)
    _check_same_level_shapes("z", z_levels, "t_inv_z", t_inv_z_levels, include_batch=True)
    t_inv_z_flat = _flatten_levels(t_inv_z_levels)  # (M, D)

    terms["mmd_inverse"] = mmd2(t_inv_z_flat, x_flat, **mmd_options)
    terms["cost_inverse"] = transport_cost(t_inv_z_flat, z_flat, over_dims=cost_over_dims)
    terms["total"] = (
        terms["mmd_forward"]
        + terms["mmd_inverse"]
        + beta * (terms["cost_forward"] + terms["cost_inverse"])
    )
    return terms


class SyMOTLoss(nn.Module):
    """Module form of :func:`symot_loss`: stores the options, validated at construction."""

    def __init__(
        self,
        beta: float,
        variant: Variant = "symmetric",
        estimator: Estimator = "reduced",
        cost_over_dims: CostReduction = "sum",
        scales: Sequence[float] = DEFAULT_SCALES,
        bandwidth: BandwidthLike = None,
    ) -> None:
        super().__init__()
        _validate_symot_options(
            beta=beta,
            variant=variant,
            estimator=estimator,
            cost_over_dims=cost_over_dims,
            scales=scales,
            bandwidth=bandwidth,
        )
        self.beta = float(beta)
        self.variant = variant
        self.estimator = estimator
        self.cost_over_dims = cost_over_dims
        self.scales = tuple(float(scale) for scale in scales)
        self.bandwidth = bandwidth

    def forward(
        self,
        x: SampleBatch,
        z: SampleBatch,
        t_x: SampleBatch,
        t_inv_z: SampleBatch | None = None,
    ) -> dict[str, Tensor]:
        """Compute the loss terms; see :func:`symot_loss` for shapes and keys."""
        return symot_loss(
            x,
            z,
            t_x,
            t_inv_z,
            beta=self.beta,
            variant=self.variant,
            estimator=self.estimator,
            cost_over_dims=self.cost_over_dims,
            scales=self.scales,
            bandwidth=self.bandwidth,
        )

    def extra_repr(self) -> str:
        return (
            f"beta={self.beta}, variant={self.variant!r}, estimator={self.estimator!r}, "
            f"cost_over_dims={self.cost_over_dims!r}, scales={self.scales}, "
            f"bandwidth={self.bandwidth}"
        )


def _validate_symot_options(
    *,
    beta: float,
    variant: str,
    estimator: str,
    cost_over_dims: str,
    scales: Sequence[float],
    bandwidth: BandwidthLike,
) -> None:
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real):
        raise TypeError(f"beta must be a real number, got {beta!r}.")
    if not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be finite and non-negative, got {beta!r}.")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}.")
    if cost_over_dims not in COST_REDUCTIONS:
        raise ValueError(f"cost_over_dims must be one of {COST_REDUCTIONS}, got {cost_over_dims!r}.")
    _validate_mmd_options(estimator=estimator, scales=scales, bandwidth=bandwidth, chunk_size=None)


def _as_levels(name: str, value: object) -> tuple[Tensor, ...]:
    """Return a batch as a tuple of per-level tensors, each (B, ...) with the same B."""
    if isinstance(value, Tensor):
        levels = (value,)
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        levels = tuple(value)
        if len(levels) == 0:
            raise ValueError(f"{name} is an empty sequence; expected at least one latent level.")
    else:
        raise TypeError(
            f"{name} must be a tensor or a sequence of tensors, got {type(value).__name__}."
        )

    for index, level in enumerate(levels):
        if not isinstance(level, Tensor):
            raise TypeError(f"{name}[{index}] must be a torch.Tensor, got {type(level).__name__}.")
        if level.dim() == 0:
            raise ValueError(f"{name}[{index}] must have a batch dimension (B, ...), got a 0-dim tensor.")
    batch_sizes = [level.shape[0] for level in levels]
    if len(set(batch_sizes)) != 1:
        raise ValueError(f"The levels of {name} must have the same batch size, got {batch_sizes}.")
    return levels


def _check_same_level_shapes(
    first_name: str,
    first: tuple[Tensor, ...],
    second_name: str,
    second: tuple[Tensor, ...],
    *,
    include_batch: bool,
) -> None:
    """Raise ValueError unless both batches have the same levels with the same shapes."""
    if len(first) != len(second):
        raise ValueError(
            f"{first_name} has {len(first)} latent level(s) but {second_name} has {len(second)}."
        )
    start = 0 if include_batch else 1
    first_shapes = [tuple(level.shape[start:]) for level in first]
    second_shapes = [tuple(level.shape[start:]) for level in second]
    if first_shapes != second_shapes:
        compared = "shapes" if include_batch else "per-sample shapes"
        raise ValueError(
            f"{first_name} and {second_name} must have the same {compared} per level, got "
            f"{first_shapes} and {second_shapes}."
        )


def _flatten_levels(levels: tuple[Tensor, ...]) -> Tensor:
    """Flatten each (B, ...) level to (B, D_l) and concatenate them to (B, sum_l D_l)."""
    batch_size = levels[0].shape[0]
    if len(levels) == 1:
        return levels[0].reshape(batch_size, -1)
    return torch.cat([level.reshape(batch_size, -1) for level in levels], dim=1)
