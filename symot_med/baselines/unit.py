"""UNIT (Liu et al., NeurIPS 2017): a shared-latent VAE-GAN for unpaired translation.

Encoders E_a, E_b map images to the mean mu of a Gaussian latent with unit variance,
z = mu + eps with eps ~ N(0, I); they share their last residual blocks, and the decoders G_a,
G_b share their first ones, so both domains use one latent space. Translation a -> b is
G_b(E_a(a)), with z = mu at inference. Loss weights: GAN 1, reconstruction 10, KL 0.01,
cycle 10, cycle-KL 0.01; least-squares GAN loss with a multi-scale discriminator per domain.

Domain a is the pair's source modality (x), b its target (z). Images are (B, 1, H, W) in [-1, 1].
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from symot_med.baselines.cyclegan import lsgan_loss
from symot_med.baselines.networks import (
    MultiScaleDiscriminator,
    NetworkConfig,
    UnitDecoder,
    UnitEncoder,
    init_weights,
    shared_blocks,
)

GAN_WEIGHT = 1.0
RECONSTRUCTION_WEIGHT = 10.0
KL_WEIGHT = 0.01
CYCLE_WEIGHT = 10.0
CYCLE_KL_WEIGHT = 0.01


def kl_penalty(mu: Tensor) -> Tensor:
    """Mean of mu^2 over the latent entries of (B, C, h, w) means: 2 KL(N(mu, I) || N(0, I)) / n
    for n entries, so the weight does not depend on the latent size."""
    return torch.mean(mu**2)


class UNIT(nn.Module):
    """Encoders ``e_a``, ``e_b``, decoders ``g_a``, ``g_b`` and multi-scale discriminators."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        shared_encoder = shared_blocks(config)
        shared_decoder = shared_blocks(config)
        self.e_a = UnitEncoder(config, shared_encoder)
        self.e_b = UnitEncoder(config, shared_encoder)
        self.g_a = UnitDecoder(config, shared_decoder)
        self.g_b = UnitDecoder(config, shared_decoder)
        self.d_a = MultiScaleDiscriminator(config)
        self.d_b = MultiScaleDiscriminator(config)
        init_weights(self)

    def generators(self) -> list[nn.Module]:
        return [self.e_a, self.e_b, self.g_a, self.g_b]

    def discriminators(self) -> list[nn.Module]:
        return [self.d_a, self.d_b]

    def translate(self, x: Tensor, to_b: bool) -> Tensor:
        return self.g_b(self.e_a(x)) if to_b else self.g_a(self.e_b(x))

    @staticmethod
    def _sample(mu: Tensor, noise: torch.Generator) -> Tensor:
        return mu + torch.randn(mu.shape, generator=noise, device=mu.device, dtype=mu.dtype)

    def generator_loss(self, real_a: Tensor, real_b: Tensor, noise: torch.Generator) -> tuple[Tensor, dict[str, float], dict[str, Tensor]]:
        """Loss of the encoders and decoders on one unpaired batch; returns (loss, terms, fakes).

        With z_a = E_a(a) + eps, z_b = E_b(b) + eps and |.|_1 the mean absolute error:
        L = 1 (LS(D_a(G_a(z_b)), 1) + LS(D_b(G_b(z_a)), 1))
            + 10 (|G_a(z_a) - a|_1 + |G_b(z_b) - b|_1) + 0.01 (KL(mu_a) + KL(mu_b))
            + 10 (|G_a(E_b(G_b(z_a)) + eps) - a|_1 + |G_b(E_a(G_a(z_b)) + eps) - b|_1)
            + 0.01 (KL(E_b(G_b(z_a))) + KL(E_a(G_a(z_b))))
        """
        mu_a, mu_b = self.e_a(real_a), self.e_b(real_b)
        z_a, z_b = self._sample(mu_a, noise), self._sample(mu_b, noise)

        recon_a, recon_b = self.g_a(z_a), self.g_b(z_b)
        fake_b, fake_a = self.g_b(z_a), self.g_a(z_b)

        mu_ab, mu_ba = self.e_b(fake_b), self.e_a(fake_a)
        cycle_a = self.g_a(self._sample(mu_ab, noise))
        cycle_b = self.g_b(self._sample(mu_ba, noise))

        gan = lsgan_loss(self.d_a(fake_a), True) + lsgan_loss(self.d_b(fake_b), True)
        reconstruction = F.l1_loss(recon_a, real_a) + F.l1_loss(recon_b, real_b)
        kl = kl_penalty(mu_a) + kl_penalty(mu_b)
        cycle = F.l1_loss(cycle_a, real_a) + F.l1_loss(cycle_b, real_b)
        cycle_kl = kl_penalty(mu_ab) + kl_penalty(mu_ba)

        loss = (
            GAN_WEIGHT * gan
            + RECONSTRUCTION_WEIGHT * reconstruction
            + KL_WEIGHT * kl
            + CYCLE_WEIGHT * cycle
            + CYCLE_KL_WEIGHT * cycle_kl
        )
        terms = {
            "g_gan": float(gan.detach()),
            "g_reconstruction": float(reconstruction.detach()),
            "g_kl": float(kl.detach()),
            "g_cycle": float(cycle.detach()),
            "g_cycle_kl": float(cycle_kl.detach()),
        }
        return loss, terms, {"a": fake_a.detach(), "b": fake_b.detach()}

    def discriminator_loss(
        self, real_a: Tensor, real_b: Tensor, fakes: dict[str, Tensor], pool_generator: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]:
        """L_D = LS(D(real), 1) + LS(D(fake), 0) for each domain, averaged over scales; UNIT
        uses the current fakes (no image pool), so ``pool_generator`` is unused."""
        loss_a = lsgan_loss(self.d_a(real_a), True) + lsgan_loss(self.d_a(fakes["a"]), False)
        loss_b = lsgan_loss(self.d_b(real_b), True) + lsgan_loss(self.d_b(fakes["b"]), False)
        return loss_a + loss_b, {"d_a": float(loss_a.detach()), "d_b": float(loss_b.detach())}

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict, device: torch.device) -> None:
        return None
