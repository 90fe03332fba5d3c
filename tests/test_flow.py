"""Tests of the invertible flows: round trip, log-determinants, seeding and the identity start."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from symot_med.models.flow import LatentFlow, build_conv_flow, build_dense_flow

LATENT_SHAPES = [(4, 4, 4), (2, 8, 8)]


def _perturb_parameters(module: nn.Module, seed: int, std: float = 0.3) -> None:
    """Move every trainable parameter away from its initial value, so the map is not the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.requires_grad:
                noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
                parameter.add_(std * noise)


def _small_dense_flow(seed: int = 0) -> nn.Module:
    flow = build_dense_flow(3, n_blocks=4, hidden=16, seed=seed)
    _perturb_parameters(flow, seed=seed + 100)
    return flow


def _small_conv_flow(seed: int = 0) -> nn.Module:
    flow = build_conv_flow((4, 5, 5), n_blocks=3, hidden=8, n_res_blocks=1, seed=seed)
    _perturb_parameters(flow, seed=seed + 100, std=0.1)
    return flow


def _random(*shape: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_joint_flow_inverts_and_couples():
    shapes = [(4, 3, 3), (4, 6, 6)]
    flow = LatentFlow(shapes, n_blocks=2, hidden=8, n_res_blocks=1, layout="joint")
    _perturb_parameters(flow, seed=3, std=0.1)
    flow.eval()
    latents = [_random(3, *shape, seed=20 + level) for level, shape in enumerate(shapes)]

    with torch.no_grad():
        mapped = flow(latents)
        restored = flow(mapped, rev=True)
        # Changing only the top level changes the bottom level's output: the levels are coupled.
        changed_top = flow([latents[0] + 1.0, latents[1]])

    for level, (original, result) in enumerate(zip(latents, restored)):
        assert result.shape == original.shape, level
        assert (result - original).abs().max() < 1e-4, level
    assert (changed_top[1] - mapped[1]).abs().max() > 1e-3
    assert LatentFlow.from_config(flow.config()).layout == "joint"


def test_joint_flow_rejects_uneven_levels():
    with pytest.raises(ValueError, match="integer multiple"):
        LatentFlow([(4, 3, 3), (4, 7, 6)], n_blocks=1, hidden=4, n_res_blocks=1, layout="joint")


@pytest.mark.parametrize(
    "make_flow, sample_shape",
    [(_small_dense_flow, (3,)), (_small_conv_flow, (4, 5, 5))],
    ids=["dense", "conv"],
)
def test_flow_round_trip_new_batch(make_flow, sample_shape):
    flow = make_flow()
    flow.train()
    first_batch = _random(8, *sample_shape, seed=1)
    new_batch = _random(5, *sample_shape, seed=2)
    flow(first_batch)

    # Map the new batch inside a larger batch and invert it alone, because a layer that
    # uses batch statistics would make the two passes disagree.
    mapped, _ = flow(torch.cat([first_batch, new_batch]))
    restored, _ = flow(mapped[len(first_batch) :], rev=True)

    assert (mapped[len(first_batch) :] - new_batch).abs().max() > 0.05
    assert (restored - new_batch).abs().max() < 1e-4


def test_latent_flow_round_trip():
    flow = LatentFlow(LATENT_SHAPES, n_blocks=2, hidden=8, n_res_blocks=1)
    _perturb_parameters(flow, seed=3, std=0.1)
    flow.train()
    flow([_random(6, *shape, seed=4 + level) for level, shape in enumerate(LATENT_SHAPES)])
    latents = [_random(3, *shape, seed=10 + level) for level, shape in enumerate(LATENT_SHAPES)]

    mapped = flow(latents)
    restored = flow(mapped, rev=True)

    assert len(restored) == len(latents)
    for level, (original, result) in enumerate(zip(latents, restored)):
        assert result.shape == original.shape, level
        assert (mapped[level] - original).abs().max() > 0.05, level
        assert (result - original).abs().max() < 1e-4, level


@pytest.mark.parametrize(
    "make_flow, sample_shape",
    [(_small_dense_flow, (3,)), (_small_conv_flow, (4, 5, 5))],
    ids=["dense", "conv"],
)
def test_flow_inverse_log_det_is_negative_forward(make_flow, sample_shape):
    flow = make_flow()
    x = _random(6, *sample_shape, seed=5)

    y, forward_log_det = flow(x)
    _, inverse_log_det = flow(y, rev=True)

    assert forward_log_det.shape == (6,)
    assert forward_log_det.abs().max() > 1e-3
    torch.testing.assert_close(inverse_log_det, -forward_log_det, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "make_flow, sample_shape",
    [(_small_dense_flow, (3,)), (_small_conv_flow, (2, 2, 2))],
    ids=["dense", "conv"],
)
def test_flow_log_det_matches_numerical_jacobian(make_flow, sample_shape):
    if sample_shape == (2, 2, 2):
        flow = build_conv_flow(sample_shape, n_blocks=2, hidden=4, n_res_blocks=1, seed=0)
        _perturb_parameters(flow, seed=7, std=0.3)
    else:
        flow = make_flow()
    flow = flow.double()
    x = _random(3, *sample_shape, seed=6, dtype=torch.float64)

    _, log_det = flow(x)

    for index in range(x.shape[0]):
        def single_sample_map(flat_sample):
            mapped, _ = flow(flat_sample.reshape(1, *sample_shape))
            return mapped.reshape(-1)

        jacobian = torch.autograd.functional.jacobian(single_sample_map, x[index].reshape(-1))
        _, numerical_log_det = torch.linalg.slogdet(jacobian)
        assert abs(numerical_log_det.item()) > 1e-3
        # FrEIA stores the dense flow's random rotations in float32, so |det R| = 1 only up
        # to about 1e-8 per rotation, a term that FrEIA's log-det leaves out.
        assert log_det[index].item() == pytest.approx(numerical_log_det.item(), abs=1e-6)


@pytest.mark.parametrize(
    "build",
    [
        lambda seed: build_dense_flow(2, n_blocks=3, hidden=8, seed=seed),
        lambda seed: build_conv_flow((6, 3, 3), n_blocks=3, hidden=8, seed=seed),
        lambda seed: LatentFlow(LATENT_SHAPES, n_blocks=2, hidden=8, seed=seed),
    ],
    ids=["dense", "conv", "latent"],
)
def test_flow_build_keeps_global_rng(build):
    np.random.seed(1234)
    numpy_state = np.random.get_state()
    torch_state = torch.get_rng_state()

    build(5)

    after = np.random.get_state()
    assert after[0] == numpy_state[0]
    np.testing.assert_array_equal(after[1], numpy_state[1])
    assert after[2:] == numpy_state[2:]
    assert torch.equal(torch.get_rng_state(), torch_state)


@pytest.mark.parametrize(
    "build",
    [
        lambda seed: build_dense_flow(4, n_blocks=3, hidden=8, seed=seed),
        lambda seed: build_conv_flow((6, 3, 3), n_blocks=3, hidden=8, seed=seed),
        lambda seed: LatentFlow(LATENT_SHAPES, n_blocks=2, hidden=8, seed=seed),
    ],
    ids=["dense", "conv", "latent"],
)
def test_flow_build_deterministic_for_seed(build):
    first = build(3).state_dict()
    np.random.seed(99)  # the global state must not leak into construction
    torch.manual_seed(99)
    second = build(3).state_dict()
    other_seed = build(4).state_dict()

    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    assert any(not torch.equal(first[key], other_seed[key]) for key in first)


@pytest.mark.parametrize(
    "flow, sample_shape",
    [
        (build_conv_flow((6, 4, 4), n_blocks=4, hidden=8, seed=2), (6, 4, 4)),
        (build_dense_flow(2, n_blocks=8, hidden=8, seed=2), (2,)),
    ],
    ids=["conv", "dense"],
)
def test_new_flow_is_identity(flow, sample_shape):
    x = _random(4, *sample_shape, seed=8)

    y, log_det = flow(x)

    torch.testing.assert_close(y, x, rtol=0, atol=1e-5)
    torch.testing.assert_close(log_det, torch.zeros(4), rtol=0, atol=1e-5)


def test_flow_backward_runs():
    flow = _small_conv_flow()
    x = _random(2, 4, 5, 5, seed=9)

    y, log_det = flow(x)
    (y.square().mean() - log_det.mean()).backward()

    gradients = [p.grad for p in flow.parameters() if p.requires_grad]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in gradients)


def test_flows_have_no_batch_normalisation():
    flows = [build_dense_flow(2, n_blocks=2, hidden=4), LatentFlow(LATENT_SHAPES, n_blocks=2, hidden=4)]

    for flow in flows:
        batch_norms = [m for m in flow.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        assert batch_norms == []


def test_latent_flow_config_round_trip():
    flow = LatentFlow(LATENT_SHAPES, n_blocks=2, hidden=8, n_res_blocks=1, clamp=1.5, seed=11)
    _perturb_parameters(flow, seed=12, std=0.1)
    latents = [_random(2, *shape, seed=20 + level) for level, shape in enumerate(LATENT_SHAPES)]

    config = flow.config()
    rebuilt = LatentFlow.from_config(config)
    rebuilt.load_state_dict(flow.state_dict())

    assert config == {
        "shapes": [[4, 4, 4], [2, 8, 8]], "n_blocks": 2, "hidden": 8,
        "n_res_blocks": 1, "clamp": 1.5, "seed": 11, "layout": "per_level",
    }
    for expected, result in zip(flow(latents), rebuilt(latents)):
        assert torch.equal(expected, result)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"shapes": [[4, 4, 4]], "depth": 3}, "Unknown LatentFlow config keys.*depth"),
        ({"n_blocks": 2}, "missing.*shapes"),
    ],
    ids=["unknown-key", "missing-shapes"],
)
def test_latent_flow_from_config_rejects_invalid(config, message):
    with pytest.raises(ValueError, match=message):
        LatentFlow.from_config(config)


@pytest.mark.parametrize(
    "latents, error, message",
    [
        ([torch.zeros(2, 4, 4, 4)], ValueError, "Expected 2 latent level"),
        ([torch.zeros(2, 4, 4, 4), torch.zeros(2, 2, 4, 4)], ValueError, r"latents\[1\].*\(B, 2, 8, 8\)"),
        (torch.zeros(2, 4, 4, 4), TypeError, "sequence of tensors"),
    ],
    ids=["level-count", "level-shape", "bare-tensor"],
)
def test_latent_flow_rejects_invalid_latents(latents, error, message):
    flow = LatentFlow(LATENT_SHAPES, n_blocks=1, hidden=4)

    with pytest.raises(error, match=message):
        flow(latents)


@pytest.mark.parametrize(
    "build, error, message",
    [
        (lambda: build_dense_flow(1), ValueError, "dim must be at least 2"),
        (lambda: build_conv_flow((1, 4, 4)), ValueError, "at least 2 channels"),
        (lambda: build_conv_flow((4, 4)), ValueError, r"\(C, H, W\)"),
        (lambda: build_dense_flow(2, seed=-1), ValueError, "seed.*-1"),
        (lambda: build_dense_flow(2, clamp=0.0), ValueError, "clamp"),
        (lambda: LatentFlow([]), ValueError, "at least one"),
    ],
    ids=["dense-dim-1", "conv-one-channel", "conv-2d-shape", "negative-seed", "zero-clamp", "no-levels"],
)
def test_flow_build_rejects_invalid_arguments(build, error, message):
    with pytest.raises(error, match=message):
        build()
