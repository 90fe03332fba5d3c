"""CycleGAN, UNIT and histogram matching: shapes, losses on a fixed batch, schedule, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import symot_med.baselines.training as training
from symot_med.baselines.cyclegan import ImagePool
from symot_med.baselines.histogram import foreground_quantiles, match_histogram
from symot_med.baselines.networks import NetworkConfig, PatchDiscriminator, count_parameters
from symot_med.baselines.training import (
    BaselineTrainConfig,
    build_gan,
    discriminator_parameters,
    generator_parameters,
    lr_factor,
    train_gan_baseline,
    train_step,
)
from symot_med.training.checkpoints import load_checkpoint

TINY = NetworkConfig(filters=4, res_blocks=2, disc_filters=4, disc_scales=2, disc_layers=2)


def _optimizers(model, lr=2e-4):
    return {
        "generator": torch.optim.Adam(generator_parameters(model), lr=lr, betas=(0.5, 0.999)),
        "discriminator": torch.optim.Adam(discriminator_parameters(model), lr=lr, betas=(0.5, 0.999)),
    }


def _generators():
    return {"noise": torch.Generator().manual_seed(0), "pool": torch.Generator().manual_seed(1)}


@pytest.fixture
def batch():
    """A fixed unpaired batch in [-1, 1]: bright discs (a) and dark discs on a bright ring (b)."""
    grid = torch.stack(torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij"))
    radius = grid.pow(2).sum(0).sqrt()
    a = torch.where(radius < 0.6, 0.8, -1.0).expand(2, 1, 32, 32).clone()
    b = torch.where(radius < 0.6, -0.2, torch.where(radius < 0.8, 0.9, -1.0)).expand(2, 1, 32, 32).clone()
    return a, b


@pytest.mark.parametrize("method", ["cyclegan", "unit"])
def test_translation_keeps_shape_and_range(method):
    model = build_gan(method, TINY, seed=0).eval()
    x = torch.rand(3, 1, 24, 40) * 2 - 1

    for to_b in (True, False):
        with torch.no_grad():
            y = model.translate(x, to_b=to_b)
        assert y.shape == (3, 1, 24, 40)
        assert float(y.abs().max()) <= 1.0


@pytest.mark.parametrize(
    "method, reconstruction_terms",
    [("cyclegan", ("g_cycle", "g_identity")), ("unit", ("g_reconstruction", "g_cycle"))],
)
def test_losses_decrease_on_fixed_batch(method, reconstruction_terms, batch):
    torch.manual_seed(0)
    model = build_gan(method, TINY, seed=0)
    optimizers, generators = _optimizers(model, lr=1e-3), _generators()
    a, b = batch

    history = [train_step(model, optimizers, a, b, generators) for _ in range(25)]

    for term in reconstruction_terms:
        first = np.mean([h[term] for h in history[:3]])
        last = np.mean([h[term] for h in history[-3:]])
        assert last < 0.7 * first, f"{term}: {first:.4f} -> {last:.4f}"
    assert np.isfinite([h["d_total"] for h in history]).all()


def test_unit_shares_latent_blocks():
    model = build_gan("unit", TINY, seed=0)

    assert model.e_a.shared is model.e_b.shared
    assert model.g_a.shared is model.g_b.shared
    separate = sum(count_parameters(m) for m in model.generators())
    shared = count_parameters(model.e_a.shared) + count_parameters(model.g_a.shared)
    assert count_parameters(torch.nn.ModuleList(model.generators())) == separate - shared


def test_patch_discriminator_sees_70_pixel_patches():
    discriminator = PatchDiscriminator(filters=4)
    # Instance norm spreads every score over the whole image; without it the support is the patch.
    discriminator.net = torch.nn.Sequential(
        *[torch.nn.Identity() if isinstance(m, torch.nn.InstanceNorm2d) else m for m in discriminator.net]
    )
    with torch.no_grad():
        for layer in discriminator.modules():
            if isinstance(layer, torch.nn.Conv2d):
                layer.weight.fill_(0.01)
    x = torch.zeros(1, 1, 160, 160, requires_grad=True)

    scores = discriminator(x)
    centre = scores.shape[-1] // 2
    scores[0, 0, centre, centre].backward()

    rows = torch.nonzero(x.grad[0, 0].abs().sum(dim=1)).flatten()
    columns = torch.nonzero(x.grad[0, 0].abs().sum(dim=0)).flatten()
    assert int(rows[-1] - rows[0] + 1) == 70
    assert int(columns[-1] - columns[0] + 1) == 70


def test_image_pool_fills_then_swaps():
    pool = ImagePool(size=4)
    generator = torch.Generator().manual_seed(0)

    first = pool.query(torch.arange(4.0).reshape(4, 1, 1, 1), generator)
    later = pool.query(torch.full((200, 1, 1, 1), 9.0), generator)

    assert torch.equal(first.flatten(), torch.arange(4.0))
    returned_old = int((later.flatten() < 9).sum())
    assert 1 <= returned_old <= 4  # each stored image can be returned once before it is replaced
    assert len(pool.images) == 4


def test_linear_decay_schedule():
    config = BaselineTrainConfig(epochs=6, decay_epochs=3)

    factors = [lr_factor(epoch, config) for epoch in range(6)]

    assert factors == pytest.approx([1.0, 1.0, 1.0, 0.75, 0.5, 0.25])


@pytest.mark.parametrize(
    "values, message",
    [({"epochs": 0}, "epochs and batch_size must be >= 1"), ({"decay_epochs": 5, "epochs": 2}, "decay_epochs must be in"), ({"lr": 0.0}, "lr > 0")],
)
def test_train_config_rejects_invalid(values, message):
    with pytest.raises(ValueError, match=message):
        BaselineTrainConfig(**values)


def _slices(seed: int, count: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, size=(count, 1, 32, 32)).astype(np.float32)


def test_resume_matches_uninterrupted_run(tmp_path, monkeypatch):
    a, b = _slices(0, 6), _slices(1, 5)
    config = BaselineTrainConfig(epochs=2, decay_epochs=1, batch_size=2)
    straight = load_checkpoint(train_gan_baseline("cyclegan", a, b, tmp_path / "straight", config, TINY, "cpu", False))

    real_step = training.train_step
    calls = {"n": 0}

    def interrupted_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:  # 3 steps per epoch: stop at the first step of epoch 2
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(training, "train_step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        train_gan_baseline("cyclegan", a, b, tmp_path / "resumed", config, TINY, "cpu", False)
    monkeypatch.setattr(training, "train_step", real_step)
    resumed = load_checkpoint(train_gan_baseline("cyclegan", a, b, tmp_path / "resumed", config, TINY, "cpu", False))

    assert len(resumed["history"]) == 2
    for key, value in straight["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, msg=key)


def test_gan_baseline_rejects_odd_slice_size(tmp_path):
    slices = np.zeros((2, 1, 30, 32), dtype=np.float32)

    with pytest.raises(ValueError, match=r"slice size \(30, 32\) must be divisible by 4"):
        train_gan_baseline("unit", slices, slices, tmp_path, BaselineTrainConfig(), TINY, "cpu", False)


def test_histogram_matching_maps_quantiles():
    rng = np.random.default_rng(2)
    source = rng.uniform(0.01, 1.0, size=(50, 1, 8, 8))
    target = source**2  # a monotone map, so matching should recover it
    source[:, :, :2] = 0.0  # background stays 0
    target[:, :, :2] = 0.0

    mapped = match_histogram(source, foreground_quantiles(source), foreground_quantiles(target))

    np.testing.assert_allclose(mapped, target, atol=2e-3)
    assert (mapped[:, :, :2] == 0).all()


def test_histogram_needs_foreground():
    with pytest.raises(ValueError, match="no value above 0"):
        foreground_quantiles(np.zeros((2, 1, 4, 4)))


def test_histogram_matching_agrees_with_skimage():
    from skimage.exposure import match_histograms

    from symot_med.baselines.histogram import foreground_quantiles, match_histogram

    rng = np.random.default_rng(3)
    source = rng.gamma(2.0, 0.1, size=(4, 1, 32, 32)).clip(1e-3, 1.0)
    reference = rng.beta(5.0, 2.0, size=(4, 1, 32, 32)).clip(1e-3, 1.0)

    ours = match_histogram(source, foreground_quantiles(source), foreground_quantiles(reference))
    expected = match_histograms(source.ravel(), reference.ravel()).reshape(source.shape)

    # Both map each value to the reference value at the same quantile. Ours interpolates between
    # 1001 quantiles instead of using every sample, so they differ most in the sparse tails.
    difference = np.abs(ours - expected)
    assert np.percentile(difference, 99) < 5e-3
    assert np.mean(difference) < 1e-3
