"""Training objectives of the four methods compared on the toy pairs, and SWOT-Flow's distance.

Every method trains the same invertible network T with the same budget and differs only in
its loss on a batch x_1..x_B ~ p, z_1..z_B ~ q. With cost(a, b) = (1/B) sum_i |a_i - b_i|^2
(summed over the 2 coordinates, like POT's ``ot.dist``) and MMD^2 the reduced multi-scale
estimator of :func:`symot_med.losses.mmd.mmd2`:

==============  =============================================================================
method          loss
==============  =============================================================================
symot           MMD^2(T(x), z) + MMD^2(T^-1(z), x) + beta (cost(x, T(x)) + cost(T^-1(z), z))
single-mmd      MMD^2(T(x), z) + MMD^2(T^-1(z), x)                      (beta = 0)
one-direction   MMD^2(T(x), z) + beta cost(x, T(x))                     (forward terms only)
swot            SW^2(T(x), z) + SW^2(T^-1(z), x) + beta (cost(x, T(x)) + cost(T^-1(z), z))
==============  =============================================================================

SW^2 is the squared sliced 2-Wasserstein distance, see :func:`sliced_wasserstein2`. The first
three rows are SyMOT-Flow's loss, equation (7) of Xiong, Ding and Zhang, and its two ablations
(Section 5.2 and 5.3). The last row is our reading of SWOT-Flow (Coeurdoux, Dobigeon and
Chainais, 2022) as those authors' comparison describes it: the sliced Wasserstein distance in
place of the MMD, in both directions, plus the transport cost.
NOTE: this reading is not checked against the SWOT-Flow paper, so its exact weighting or
schedule may differ. Its authors' public code (GitHub FlorentinCDX/SWOT-Flow,
``run_qualitative_exemples.py``) computes the distance on the full sample sets at every step and
raises the cost weight from 0 late in training. Here SWOT-Flow shares the other methods' batches
and keeps beta fixed.
"""

from __future__ import annotations

import numbers
from typing import Literal, get_args

import torch
from torch import Tensor

from symot_med.losses import DEFAULT_SCALES, symot_loss, transport_cost

Method = Literal["symot", "single-mmd", "one-direction", "swot"]
METHODS: tuple[str, ...] = get_args(Method)

METHOD_TITLES: dict[str, str] = {
    "symot": "SyMOT-Flow",
    "single-mmd": "single MMD",
    "one-direction": "One Direction",
    "swot": "SWOT-Flow",
}


def sliced_wasserstein2(
    a: Tensor, b: Tensor, n_projections: int, generator: torch.Generator | None = None
) -> Tensor:
    """Estimate the squared sliced 2-Wasserstein distance between two equal-size sample sets.

    SW^2(a, b) = (1/L) sum_l W2^2(<a, theta_l>, <b, theta_l>), with L directions theta_l
    drawn uniformly on the unit sphere. In 1-D the optimal coupling of two sets of N
    points pairs them in sorted order, so W2^2 = (1/N) sum_i (a_(i) - b_(i))^2 over the
    sorted projections. The value is in squared input units and, for a fixed set of
    directions, is differentiable almost everywhere.

    Args:
        a: (N, D) samples.
        b: (N, D) samples; the same N is required so that sorted order defines the coupling.
        n_projections: number of directions L, at least 1.
        generator: torch generator for the directions, so a run is reproducible.

    Returns:
        0-dim tensor, non-negative.

    Raises:
        ValueError: for inputs that are not (N, D) with equal shapes, or L < 1.
    """
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(
            f"sliced_wasserstein2 expects a and b of the same shape (N, D), got {tuple(a.shape)} "
            f"and {tuple(b.shape)}."
        )
    if isinstance(n_projections, bool) or not isinstance(n_projections, numbers.Integral) or n_projections < 1:
        raise ValueError(f"n_projections must be a positive int, got {n_projections!r}.")

    directions = torch.randn(
        n_projections, a.shape[1], generator=generator, dtype=a.dtype, device=a.device
    )
    directions = directions / directions.norm(dim=1, keepdim=True)  # (L, D), unit rows
    projected_a = torch.sort(a @ directions.T, dim=0).values  # (N, D) @ (D, L) -> (N, L)
    projected_b = torch.sort(b @ directions.T, dim=0).values  # (N, L)
    return (projected_a - projected_b).pow(2).mean()


def method_loss(
    method: Method,
    x: Tensor,
    z: Tensor,
    t_x: Tensor,
    t_inv_z: Tensor | None,
    *,
    beta: float,
    scales: tuple[float, ...] = DEFAULT_SCALES,
    bandwidth: float | Tensor | None = None,
    n_projections: int = 50,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Compute the training loss of ``method`` and its terms for one batch.

    Args:
        method: one of ``METHODS``, see the module docstring for each loss.
        x: (B, 2) source batch.
        z: (B, 2) target batch.
        t_x: (B, 2) T(x).
        t_inv_z: (B, 2) T^-1(z); None is accepted for "one-direction" only.
        beta: weight of the transport cost; "single-mmd" ignores it and uses 0.
        scales: multipliers of ``bandwidth``, one Gaussian kernel each, for the MMD.
        bandwidth: base MMD bandwidth in length units; None uses the median pairwise
            distance of each MMD term's pooled batch.
        n_projections: directions of the sliced Wasserstein distance ("swot").
        generator: torch generator of the sliced Wasserstein directions.

    Returns:
        Dict of 0-dim tensors with key "total" and the terms of the method's loss.
    """
    mmd_options = {"estimator": "reduced", "scales": scales, "bandwidth": bandwidth}
    if method == "symot":
        return symot_loss(x, z, t_x, t_inv_z, beta=beta, **mmd_options)
    elif method == "single-mmd":
        return symot_loss(x, z, t_x, t_inv_z, beta=0.0, **mmd_options)
    elif method == "one-direction":
        return symot_loss(x, z, t_x, None, beta=beta, variant="forward", **mmd_options)
    elif method == "swot":
        if t_inv_z is None:
            raise ValueError("method 'swot' needs t_inv_z = T^-1(z); got None.")
        terms = {
            "sw_forward": sliced_wasserstein2(t_x, z, n_projections, generator),
            "sw_inverse": sliced_wasserstein2(t_inv_z, x, n_projections, generator),
            "cost_forward": transport_cost(x, t_x),
            "cost_inverse": transport_cost(t_inv_z, z),
        }
        terms["total"] = (
            terms["sw_forward"]
            + terms["sw_inverse"]
            + beta * (terms["cost_forward"] + terms["cost_inverse"])
        )
        return terms
    else:
        raise ValueError(f"Unknown method {method!r}; expected one of {METHODS}.")


def needs_inverse(method: Method) -> bool:
    """Return whether the method's loss uses T^-1(z), so training must run the inverse pass."""
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; expected one of {METHODS}.")
    return method != "one-direction"
