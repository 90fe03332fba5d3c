"""CycleGAN (Zhu et al., ICCV 2017): two ResNet generators, two 70 x 70 PatchGANs, least-squares
GAN loss, cycle weight 10, identity weight 5, a pool of 50 earlier fakes for the discriminators.

Domain a is the pair's source modality (x) and domain b its target (z). Images are (B, 1, H, W)
in [-1, 1].
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from symot_med.baselines.networks import NetworkConfig, PatchDiscriminator, ResnetGenerator, init_weights

CYCLE_WEIGHT = 10.0
IDENTITY_WEIGHT = 5.0
POOL_SIZE = 50


def lsgan_loss(scores: Tensor | list[Tensor], real: bool) -> Tensor:
    """Least-squares GAN loss: mean (D(x) - t)^2 with target t = 1 for real, 0 for fake.

    A list of score maps (multi-scale discriminator) gives the mean of their losses.
    """
    if isinstance(scores, (list, tuple)):
        return torch.stack([lsgan_loss(s, real) for s in scores]).mean()
    target = torch.ones_like(scores) if real else torch.zeros_like(scores)
    return F.mse_loss(scores, target)


class ImagePool:
    """Buffer of up to ``size`` generated images, so that the discriminator is also trained on older fakes.

    ``query`` stores each new image while the pool fills. Once it is full, a new image is
    returned as it is with probability 0.5. Otherwise it replaces a random stored image, and
    the stored image is returned.
    """

    def __init__(self, size: int = POOL_SIZE) -> None:
        self.size = size
        self.images: list[Tensor] = []

    def query(self, images: Tensor, generator: torch.Generator) -> Tensor:
        if self.size == 0:
            return images
        returned = []
        for image in images.detach():
            if len(self.images) < self.size:
                self.images.append(image.clone())
                returned.append(image)
            elif float(torch.rand((), generator=generator)) < 0.5:
                index = int(torch.randint(len(self.images), (), generator=generator))
                returned.append(self.images[index].clone())
                self.images[index] = image.clone()
            else:
                returned.append(image)
        return torch.stack(returned)

    def state(self) -> list[Tensor]:
        return [image.cpu() for image in self.images]

    def load_state(self, images: list[Tensor], device: torch.device) -> None:
        self.images = [image.to(device) for image in images]


class CycleGAN(nn.Module):
    """Generators ``g_ab`` (a -> b) and ``g_ba`` (b -> a), discriminators ``d_a`` and ``d_b``."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.g_ab = ResnetGenerator(config)
        self.g_ba = ResnetGenerator(config)
        self.d_a = PatchDiscriminator(config.disc_filters)
        self.d_b = PatchDiscriminator(config.disc_filters)
        init_weights(self)
        self.pools = {"a": ImagePool(), "b": ImagePool()}

    def generators(self) -> list[nn.Module]:
        return [self.g_ab, self.g_ba]

    def discriminators(self) -> list[nn.Module]:
        return [self.d_a, self.d_b]

    def translate(self, x: Tensor, to_b: bool) -> Tensor:
        return self.g_ab(x) if to_b else self.g_ba(x)

    def generator_loss(self, real_a: Tensor, real_b: Tensor, noise: torch.Generator) -> tuple[Tensor, dict[str, float], dict[str, Tensor]]:
        """Loss of both generators on one unpaired batch; returns (loss, terms, fakes).

        L_G = LS(D_b(G_ab(a)), 1) + LS(D_a(G_ba(b)), 1)
              + 10 (|G_ba(G_ab(a)) - a|_1 + |G_ab(G_ba(b)) - b|_1)
              + 5 (|G_ba(a) - a|_1 + |G_ab(b) - b|_1)
        with |.|_1 the mean absolute error. ``noise`` is unused (CycleGAN is deterministic).
        """
        fake_b = self.g_ab(real_a)
        fake_a = self.g_ba(real_b)
        gan = lsgan_loss(self.d_b(fake_b), True) + lsgan_loss(self.d_a(fake_a), True)
        cycle = F.l1_loss(self.g_ba(fake_b), real_a) + F.l1_loss(self.g_ab(fake_a), real_b)
        identity = F.l1_loss(self.g_ba(real_a), real_a) + F.l1_loss(self.g_ab(real_b), real_b)
        loss = gan + CYCLE_WEIGHT * cycle + IDENTITY_WEIGHT * identity
        terms = {"g_gan": float(gan.detach()), "g_cycle": float(cycle.detach()), "g_identity": float(identity.detach())}
        return loss, terms, {"a": fake_a.detach(), "b": fake_b.detach()}

    def discriminator_loss(
        self, real_a: Tensor, real_b: Tensor, fakes: dict[str, Tensor], pool_generator: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]:
        """L_D = 0.5 (LS(D(real), 1) + LS(D(pooled fake), 0)) for each of ``d_a`` and ``d_b``."""
        pooled_a = self.pools["a"].query(fakes["a"], pool_generator)
        pooled_b = self.pools["b"].query(fakes["b"], pool_generator)
        loss_a = 0.5 * (lsgan_loss(self.d_a(real_a), True) + lsgan_loss(self.d_a(pooled_a), False))
        loss_b = 0.5 * (lsgan_loss(self.d_b(real_b), True) + lsgan_loss(self.d_b(pooled_b), False))
        return loss_a + loss_b, {"d_a": float(loss_a.detach()), "d_b": float(loss_b.detach())}

    def extra_state(self) -> dict:
        return {"pool_a": self.pools["a"].state(), "pool_b": self.pools["b"].state()}

    def load_extra_state(self, state: dict, device: torch.device) -> None:
        self.pools["a"].load_state(list(state["pool_a"]), device)
        self.pools["b"].load_state(list(state["pool_b"]), device)
