"""Transport cost of a map T, estimated from paired samples (a_i, b_i) = (x_i, T(x_i))."""

from __future__ import annotations

from typing import Literal, get_args

from torch import Tensor

CostReduction = Literal["sum", "mean"]
COST_REDUCTIONS: tuple[str, ...] = get_args(CostReduction)


def transport_cost(a: Tensor, b: Tensor, *, over_dims: CostReduction = "sum") -> Tensor:
    """Compute the mean squared Euclidean cost between paired samples.

    cost = (1 / N) sum_i c(a_i, b_i), where the samples are flattened to (N, D) and

    - ``over_dims="sum"``: c(a, b) = |a - b|^2 = sum_d (a_d - b_d)^2, in squared input
      units. This is the cost of SyMOT-Flow equation (7) (Xiong, Ding and Zhang) and the
      value POT 0.9 ``ot.dist(a, b)`` (metric "sqeuclidean") gives for each pair.
    - ``over_dims="mean"``: c(a, b) = |a - b|^2 / D, the mean squared error per feature,
      in squared input units. The method authors' public code averages over dimensions
      like this, so use "mean" to compare beta values with runs of that code. It also
      keeps the cost, and so beta, independent of the image or latent size D.

    The two differ by the factor D, so beta must be scaled by D when switching between them.
    This is the plain sample mean over pairs, an unbiased estimate of E c(a, T(a)).

    Args:
        a: (N, ...) samples, e.g. x or T^-1(z).
        b: (N, ...) samples of the same shape, e.g. T(x) or z.
        over_dims: "sum" or "mean", see above.

    Returns:
        0-dim tensor, non-negative.

    Raises:
        TypeError: if an input is not a floating-point tensor.
        ValueError: for an unknown ``over_dims``, shapes that differ, or no samples.
    """
    if over_dims not in COST_REDUCTIONS:
        raise ValueError(f"over_dims must be one of {COST_REDUCTIONS}, got {over_dims!r}.")
    for name, value in (("a", a), ("b", b)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}.")
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}.")
    if a.shape != b.shape:
        raise ValueError(
            f"a and b must be paired samples of the same shape, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}."
        )
    if a.dim() == 0 or a.shape[0] == 0 or a.numel() == 0:
        raise ValueError(f"a and b must contain at least one sample, got shape {tuple(a.shape)}.")

    n_samples = a.shape[0]
    difference = (a - b).reshape(n_samples, -1)  # (N, ...) -> (N, D)
    per_sample = difference.pow(2).sum(dim=1)  # (N,), |a_i - b_i|^2

    if over_dims == "mean":
        per_sample = per_sample / difference.shape[1]
    return per_sample.mean()
