"""Tests of the paired transport cost against closed forms and POT's cost matrix."""

from __future__ import annotations

import ot
import pytest
import torch

from symot_med.losses import transport_cost


def test_transport_cost_constant_shift_sum():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(5, 2, 3, 4, generator=generator, dtype=torch.float64)  # (B, C, H, W), D = 24

    result = transport_cost(a, a + 0.5, over_dims="sum")

    assert result.item() == pytest.approx(24 * 0.5**2, rel=1e-12)


def test_transport_cost_constant_shift_mean():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(5, 2, 3, 4, generator=generator, dtype=torch.float64)

    result = transport_cost(a, a - 0.5, over_dims="mean")

    assert result.item() == pytest.approx(0.5**2, rel=1e-12)


def test_transport_cost_sum_matches_pot_dist():
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(7, 3, generator=generator, dtype=torch.float64)
    b = torch.randn(7, 3, generator=generator, dtype=torch.float64)
    pairwise_costs = ot.dist(a.numpy(), b.numpy())  # (N, N), squared Euclidean

    result = transport_cost(a, b)

    assert result.item() == pytest.approx(float(pairwise_costs.diagonal().mean()), rel=1e-12)


def test_transport_cost_zero_for_identity():
    a = torch.randn(4, 6)

    assert transport_cost(a, a.clone()).item() == 0.0


def test_transport_cost_gradient():
    a = torch.zeros(4, 3, dtype=torch.float64)
    b = torch.ones(4, 3, dtype=torch.float64, requires_grad=True)

    transport_cost(a, b).backward()

    # d/db (1/N) sum_i |a_i - b_i|^2 = 2 (b - a) / N
    torch.testing.assert_close(b.grad, torch.full_like(b, 2.0 / 4))


@pytest.mark.parametrize(
    "a, b, over_dims, error, message",
    [
        (torch.zeros(3, 2), torch.zeros(3, 2), "max", ValueError, "over_dims.*'max'"),
        (torch.zeros(3, 2), torch.zeros(3, 3), "sum", ValueError, r"\(3, 2\) and \(3, 3\)"),
        (torch.zeros(0, 2), torch.zeros(0, 2), "sum", ValueError, "at least one sample"),
        (torch.zeros(3, 2).long(), torch.zeros(3, 2).long(), "sum", TypeError, "floating-point"),
        ([0.0, 1.0], torch.zeros(2), "sum", TypeError, "torch.Tensor"),
    ],
    ids=["unknown-over-dims", "shape-mismatch", "empty", "integer", "list"],
)
def test_transport_cost_rejects_invalid_input(a, b, over_dims, error, message):
    with pytest.raises(error, match=message):
        transport_cost(a, b, over_dims=over_dims)
