"""Tests of the SyMOT-Flow loss: its terms, the beta weighting, variants and latent levels."""

from __future__ import annotations

import pytest
import torch

from symot_med.losses import SyMOTLoss, mmd2, symot_loss, transport_cost
from symot_med.models.flow import build_dense_flow

SCALES = (0.5, 1.0, 2.0)


def _batches(seed: int = 0):
    """Return x (6, 2, 3, 3), z (5, 2, 3, 3), and stand-ins for T(x) and T^-1(z)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 2, 3, 3, generator=generator, dtype=torch.float64)
    z = torch.randn(5, 2, 3, 3, generator=generator, dtype=torch.float64) + 1.0
    t_x = x + 0.8 + 0.1 * torch.randn(x.shape, generator=generator, dtype=torch.float64)
    t_inv_z = z - 0.7 + 0.1 * torch.randn(z.shape, generator=generator, dtype=torch.float64)
    return x, z, t_x, t_inv_z


@pytest.mark.parametrize("estimator", ["reduced", "biased", "unbiased"])
@pytest.mark.parametrize("cost_over_dims", ["sum", "mean"])
def test_symot_terms_match_separate_functions(estimator, cost_over_dims):
    x, z, t_x, t_inv_z = _batches()

    terms = symot_loss(
        x, z, t_x, t_inv_z,
        beta=0.3, estimator=estimator, cost_over_dims=cost_over_dims, scales=SCALES,
    )

    mmd_options = dict(estimator=estimator, scales=SCALES)
    assert terms["mmd_forward"].item() == pytest.approx(mmd2(t_x, z, **mmd_options).item(), rel=1e-12)
    assert terms["mmd_inverse"].item() == pytest.approx(mmd2(t_inv_z, x, **mmd_options).item(), rel=1e-12)
    assert terms["cost_forward"].item() == pytest.approx(
        transport_cost(x, t_x, over_dims=cost_over_dims).item(), rel=1e-12
    )
    assert terms["cost_inverse"].item() == pytest.approx(
        transport_cost(t_inv_z, z, over_dims=cost_over_dims).item(), rel=1e-12
    )


def test_symot_total_weights_cost_by_beta():
    x, z, t_x, t_inv_z = _batches()

    terms = symot_loss(x, z, t_x, t_inv_z, beta=2.5, scales=SCALES)
    unweighted = symot_loss(x, z, t_x, t_inv_z, beta=0.0, scales=SCALES)

    mmd_sum = terms["mmd_forward"] + terms["mmd_inverse"]
    cost_sum = terms["cost_forward"] + terms["cost_inverse"]
    assert terms["total"].item() == pytest.approx((mmd_sum + 2.5 * cost_sum).item(), rel=1e-12)
    assert unweighted["total"].item() == pytest.approx(mmd_sum.item(), rel=1e-12)
    assert cost_sum.item() > 0


def test_symot_reduced_uses_generated_set_first():
    x, z, t_x, t_inv_z = _batches()

    terms = symot_loss(x, z, t_x, t_inv_z, beta=1.0, estimator="reduced", scales=SCALES)

    # The reduced estimator is not symmetric, so swapping the arguments changes the value.
    swapped_forward = mmd2(z, t_x, estimator="reduced", scales=SCALES)
    swapped_inverse = mmd2(x, t_inv_z, estimator="reduced", scales=SCALES)
    assert terms["mmd_forward"].item() != pytest.approx(swapped_forward.item(), rel=1e-3)
    assert terms["mmd_inverse"].item() != pytest.approx(swapped_inverse.item(), rel=1e-3)


def test_symot_forward_variant_has_no_inverse_terms():
    x, z, t_x, _ = _batches()

    terms = symot_loss(x, z, t_x, None, beta=0.7, variant="forward", scales=SCALES)

    assert set(terms) == {"total", "mmd_forward", "cost_forward"}
    expected_total = terms["mmd_forward"] + 0.7 * terms["cost_forward"]
    assert terms["total"].item() == pytest.approx(expected_total.item(), rel=1e-12)


def test_symot_forward_variant_ignores_inverse_batch():
    x, z, t_x, t_inv_z = _batches()

    with_inverse = symot_loss(x, z, t_x, t_inv_z, beta=0.7, variant="forward", scales=SCALES)
    without_inverse = symot_loss(x, z, t_x, None, beta=0.7, variant="forward", scales=SCALES)

    assert with_inverse["total"].item() == without_inverse["total"].item()


def test_symot_latent_levels_concatenated():
    x, z, t_x, t_inv_z = _batches()
    generator = torch.Generator().manual_seed(5)

    def with_bottom_level(top, scale):
        bottom = scale * torch.randn(top.shape[0], 1, 6, 6, generator=generator, dtype=torch.float64)
        return top, bottom

    x_levels = with_bottom_level(x, 1.0)
    z_levels = with_bottom_level(z, 1.0)
    t_x_levels = (t_x, x_levels[1] + 0.3)
    t_inv_z_levels = (t_inv_z, z_levels[1] - 0.2)

    def concatenated(levels):
        return torch.cat([level.reshape(level.shape[0], -1) for level in levels], dim=1)

    from_levels = symot_loss(x_levels, z_levels, t_x_levels, t_inv_z_levels, beta=0.4, scales=SCALES)
    from_flat = symot_loss(
        concatenated(x_levels), concatenated(z_levels), concatenated(t_x_levels),
        concatenated(t_inv_z_levels), beta=0.4, scales=SCALES,
    )

    for key in from_flat:
        assert from_levels[key].item() == pytest.approx(from_flat[key].item(), rel=1e-12), key


def test_symot_loss_module_matches_function():
    x, z, t_x, t_inv_z = _batches()
    module = SyMOTLoss(beta=0.2, estimator="biased", cost_over_dims="mean", scales=SCALES, bandwidth=1.5)

    result = module(x, z, t_x, t_inv_z)

    expected = symot_loss(
        x, z, t_x, t_inv_z,
        beta=0.2, estimator="biased", cost_over_dims="mean", scales=SCALES, bandwidth=1.5,
    )
    assert result.keys() == expected.keys()
    for key in expected:
        assert result[key].item() == expected[key].item(), key


def test_symot_loss_backpropagates_through_flow():
    flow = build_dense_flow(2, n_blocks=2, hidden=8, seed=0)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(16, 2, generator=generator)
    z = torch.randn(16, 2, generator=generator) + 2.0

    t_x, _ = flow(x)
    t_inv_z, _ = flow(z, rev=True)
    terms = symot_loss(x, z, t_x, t_inv_z, beta=0.1)
    terms["total"].backward()

    gradients = [p.grad for p in flow.parameters() if p.requires_grad]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in gradients)
    assert any(bool(g.abs().sum() > 0) for g in gradients)


_X, _Z, _TX, _TIZ = _batches()
_INVALID_CALLS = {
    "negative-beta": ((_X, _Z, _TX, _TIZ), dict(beta=-1.0), ValueError, "beta.*-1.0"),
    "nan-beta": ((_X, _Z, _TX, _TIZ), dict(beta=float("nan")), ValueError, "beta.*nan"),
    "unknown-variant": ((_X, _Z, _TX, _TIZ), dict(beta=1.0, variant="inverse"), ValueError, "variant.*'inverse'"),
    "unknown-estimator": ((_X, _Z, _TX, _TIZ), dict(beta=1.0, estimator="linear"), ValueError, "estimator.*'linear'"),
    "unknown-cost": ((_X, _Z, _TX, _TIZ), dict(beta=1.0, cost_over_dims="max"), ValueError, "cost_over_dims.*'max'"),
    "missing-inverse": ((_X, _Z, _TX, None), dict(beta=1.0), ValueError, "t_inv_z"),
    "t_x-shape": ((_X, _Z, _TX[:3], _TIZ), dict(beta=1.0), ValueError, "x and t_x"),
    "level-count": (((_X, _X), _Z, (_TX, _TX), _TIZ), dict(beta=1.0), ValueError, "level"),
    "level-batch": (((_X, _X[:2]), (_Z, _Z), (_TX, _TX), (_TIZ, _TIZ)), dict(beta=1.0), ValueError, "batch size"),
    "not-a-tensor": (([1.0], _Z, _TX, _TIZ), dict(beta=1.0), TypeError, r"x\[0\]"),
}


@pytest.mark.parametrize("case", list(_INVALID_CALLS), ids=list(_INVALID_CALLS))
def test_symot_loss_rejects_invalid_input(case):
    arguments, options, error, message = _INVALID_CALLS[case]

    with pytest.raises(error, match=message):
        symot_loss(*arguments, **options)


def test_symot_module_rejects_unknown_variant():
    with pytest.raises(ValueError, match="variant"):
        SyMOTLoss(beta=1.0, variant="both")
