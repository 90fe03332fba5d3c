"""Tests of the EMA vector quantiser and the two-level VQ-VAE-2."""

from __future__ import annotations

import math

import pytest
import torch

from symot_med.models.quantizer import EMAVectorQuantizer, codebook_stats
from symot_med.models.vqvae2 import VQVAE2, VQVAE2Config

SMALL = VQVAE2Config(channels=16, res_channels=8, n_res_blocks=1, embed_dim=8, n_embed=32)


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Run these tiny models on one thread: on a busy machine, extra threads only contend."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def small_model(seed: int = 0) -> VQVAE2:
    torch.manual_seed(seed)
    return VQVAE2(SMALL)


def blob_batch(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Smooth bright ellipses on a dark background, (B, 1, H, W) in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    images = []
    for _ in range(batch):
        centre = torch.rand(2, generator=generator) * 0.6 - 0.3
        radius = torch.rand(2, generator=generator) * 0.3 + 0.3
        r2 = ((yy - centre[0]) / radius[0]) ** 2 + ((xx - centre[1]) / radius[1]) ** 2
        images.append(torch.sigmoid(8 * (1 - r2)) * (0.5 + 0.5 * torch.rand(1, generator=generator)))
    return torch.stack(images).unsqueeze(1)


# --- VQVAE2 shapes ---------------------------------------------------------------------------


@pytest.mark.parametrize("height, width", [(96, 96), (96, 120)], ids=["t1t2-96x96", "ctmr-96x120"])
def test_vqvae2_output_and_latent_shapes(height, width):
    model = small_model()
    x = torch.rand(2, 1, height, width)

    recon, vq_loss, stats = model(x)
    top, bottom = model.encode(x)
    top_q, bottom_q = model.latents(x)

    e = SMALL.embed_dim
    assert recon.shape == x.shape
    assert vq_loss.dim() == 0
    assert top.shape == (2, e, height // 8, width // 8)
    assert bottom.shape == (2, e, height // 4, width // 4)
    assert top_q.shape == top.shape
    assert bottom_q.shape == bottom.shape
    assert model.latent_shapes(height, width) == ((e, height // 8, width // 8), (e, height // 4, width // 4))
    assert set(stats) >= {"top_perplexity", "bottom_perplexity", "top_usage", "bottom_usage"}
    assert model.decode(top_q, bottom_q).shape == x.shape


@pytest.mark.parametrize("height, width", [(100, 96), (96, 124), (4, 8)])
def test_vqvae2_rejects_size_not_divisible_by_8(height, width):
    model = small_model()
    with pytest.raises(ValueError, match=f"{height}x{width}"):
        model(torch.rand(1, 1, height, width))


def test_vqvae2_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        small_model().encode(torch.rand(1, 3, 32, 32))


def test_vqvae2_decode_rejects_mismatched_levels():
    model = small_model()
    with pytest.raises(ValueError, match="bottom"):
        model.decode(torch.rand(1, 8, 4, 4), torch.rand(1, 8, 4, 4))


def test_config_from_dict_rejects_unknown_key():
    with pytest.raises(ValueError, match="widht"):
        VQVAE2Config.from_dict({"widht": 3})


def test_config_round_trip():
    assert VQVAE2Config.from_dict(SMALL.to_dict()) == SMALL


# --- quantiser -------------------------------------------------------------------------------


def test_snap_returns_brute_force_nearest_code():
    torch.manual_seed(1)
    quantizer = EMAVectorQuantizer(n_embed=20, embed_dim=5)
    quantizer.embedding.copy_(torch.randn(20, 5))
    z = torch.randn(3, 5, 4, 6)

    snapped = quantizer.snap(z)

    codebook = quantizer.embedding.double()
    for b in range(3):
        for i in range(4):
            for j in range(6):
                vector = z[b, :, i, j].double()
                distances = ((codebook - vector) ** 2).sum(dim=1)
                nearest = codebook[int(distances.argmin())]
                torch.testing.assert_close(snapped[b, :, i, j].double(), nearest, rtol=0, atol=1e-6)


def test_quantize_indices_match_lookup():
    torch.manual_seed(2)
    quantizer = EMAVectorQuantizer(n_embed=16, embed_dim=4).eval()
    z = torch.randn(2, 4, 3, 5)

    z_q, _, indices = quantizer.quantize(z)

    assert indices.shape == (2, 3, 5)
    assert indices.dtype == torch.int64
    torch.testing.assert_close(z_q, quantizer.lookup(indices))
    torch.testing.assert_close(z_q, quantizer.snap(z))


def test_lookup_rejects_out_of_range_index():
    quantizer = EMAVectorQuantizer(n_embed=4, embed_dim=2)
    with pytest.raises(ValueError, match="0, 3"):
        quantizer.lookup(torch.full((1, 2, 2), 4))


def test_codebook_unchanged_in_eval_mode():
    quantizer = EMAVectorQuantizer(n_embed=8, embed_dim=3).eval()
    before = {name: buffer.clone() for name, buffer in quantizer.named_buffers()}

    quantizer.quantize(torch.randn(4, 3, 5, 5))

    for name, buffer in quantizer.named_buffers():
        assert torch.equal(buffer, before[name]), name


def test_ema_update_in_train_mode():
    decay = 0.9
    quantizer = EMAVectorQuantizer(n_embed=8, embed_dim=3, decay=decay, restart_threshold=0.0).train()
    old_size = quantizer.cluster_size.clone()
    old_embedding = quantizer.embedding.clone()
    z = torch.randn(4, 3, 5, 5)

    _, _, indices = quantizer.quantize(z)

    counts = torch.bincount(indices.reshape(-1), minlength=8).float()
    torch.testing.assert_close(quantizer.cluster_size, decay * old_size + (1 - decay) * counts)
    assert not torch.equal(quantizer.embedding, old_embedding)
    assert int(quantizer.n_updates) == 1


def test_ema_codes_converge_to_cluster_means():
    # Two well-separated clusters and two codes: after many updates each code sits at the mean
    # of its cluster.
    generator = torch.Generator().manual_seed(3)
    quantizer = EMAVectorQuantizer(n_embed=2, embed_dim=2, decay=0.9, restart_threshold=0.0).train()
    quantizer.embedding.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
    quantizer.embed_sum.copy_(quantizer.embedding)
    means = torch.tensor([[-4.0, 1.0], [3.0, 2.0]])

    for _ in range(200):
        points = torch.cat([means[0] + 0.1 * torch.randn(50, 2, generator=generator),
                            means[1] + 0.1 * torch.randn(50, 2, generator=generator)])
        quantizer.quantize(points.reshape(10, 10, 2, 1).permute(0, 2, 1, 3))

    torch.testing.assert_close(quantizer.embedding, means, rtol=0, atol=0.05)


def test_dead_codes_restart_on_batch_vectors():
    torch.manual_seed(4)
    quantizer = EMAVectorQuantizer(n_embed=6, embed_dim=3, restart_threshold=1.0).train()
    # Codes 1..5 sit far from the data and are never chosen; code 0 takes every vector.
    quantizer.embedding.copy_(torch.cat([torch.zeros(1, 3), torch.full((5, 3), 100.0)]))
    quantizer.embed_sum.copy_(quantizer.embedding)
    z = 0.1 * torch.randn(2, 3, 4, 4)

    _, _, indices = quantizer.quantize(z)

    assert torch.all(indices == 0)
    vectors = z.permute(0, 2, 3, 1).reshape(-1, 3)
    for code in quantizer.embedding[1:]:
        assert torch.isclose(vectors, code).all(dim=1).any(), code
    assert quantizer.restarts_last_update == 5
    assert torch.all(quantizer.cluster_size[1:] == 1.0)


def test_no_restart_when_threshold_is_zero():
    quantizer = EMAVectorQuantizer(n_embed=6, embed_dim=3, restart_threshold=0.0).train()
    quantizer.embedding.copy_(torch.cat([torch.zeros(1, 3), torch.full((5, 3), 100.0)]))
    quantizer.embed_sum.copy_(quantizer.embedding)

    quantizer.quantize(0.1 * torch.randn(2, 3, 4, 4))

    assert quantizer.embedding[1:].min() > 50.0


def test_straight_through_gradient_is_identity():
    quantizer = EMAVectorQuantizer(n_embed=8, embed_dim=3).eval()
    z = torch.randn(2, 3, 4, 4, requires_grad=True)
    weights = torch.randn(2, 3, 4, 4)

    z_q, _, _ = quantizer.quantize(z)
    (z_q * weights).sum().backward()

    torch.testing.assert_close(z.grad, weights)


def test_codebook_stats_known_histograms():
    uniform = codebook_stats(torch.arange(8), n_embed=8)
    single = codebook_stats(torch.zeros(10, dtype=torch.long), n_embed=8)

    assert math.isclose(uniform["perplexity"], 8.0, rel_tol=1e-9)
    assert uniform["usage"] == 1.0
    assert math.isclose(single["perplexity"], 1.0, rel_tol=1e-9)
    assert single["usage"] == 1 / 8


# --- VQVAE2 training behaviour ---------------------------------------------------------------


def test_reconstruction_gradient_reaches_encoders():
    model = small_model().train()
    x = blob_batch(2, 32, 32)

    recon, _, _ = model(x)
    torch.nn.functional.l1_loss(recon, x).backward()

    for name, layer in (("encoder_bottom", model.encoder_bottom[0]), ("encoder_top", model.encoder_top[0])):
        assert layer.weight.grad is not None, name
        assert layer.weight.grad.abs().sum() > 0, name


def test_latents_leave_codebooks_unchanged_in_train_mode():
    model = small_model().train()
    before = model.quantizer_bottom.embedding.clone()

    with torch.no_grad():
        model.latents(blob_batch(2, 32, 32))

    assert torch.equal(model.quantizer_bottom.embedding, before)


def test_decode_snap_matches_decode_of_codes():
    model = small_model().eval()
    with torch.no_grad():
        top, bottom = model.encode(blob_batch(2, 32, 32))
        noisy_top, noisy_bottom = top + 0.01 * torch.randn_like(top), bottom + 0.01 * torch.randn_like(bottom)

        snapped = model.decode(noisy_top, noisy_bottom, snap=True)
        expected = model.decode(model.quantizer_top.snap(noisy_top), model.quantizer_bottom.snap(noisy_bottom))

    torch.testing.assert_close(snapped, expected)


def test_training_steps_reduce_reconstruction_loss():
    model = small_model().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    x = blob_batch(8, 32, 32)

    losses = []
    for _ in range(25):
        recon, vq_loss, _ = model(x)
        recon_loss = torch.nn.functional.l1_loss(recon, x)
        optimizer.zero_grad()
        (recon_loss + vq_loss).backward()
        optimizer.step()
        losses.append(float(recon_loss.detach()))

    assert sum(losses[-5:]) / 5 < 0.8 * losses[0], losses
