"""Networks of the GAN baselines: ResNet generator, PatchGAN, multi-scale discriminator, UNIT
encoder and decoder.

All networks take and return single-channel images (B, 1, H, W) in [-1, 1]; H and W must be
divisible by 4 (two stride-2 downsamplings). Normalisation is instance normalisation, which
does not depend on the batch, so batches of 1 work as in the original papers.

References:
    Johnson et al., "Perceptual losses for real-time style transfer and super-resolution",
    ECCV 2016 (the ResNet generator); Isola et al., "Image-to-image translation with conditional
    adversarial networks", CVPR 2017 (the 70 x 70 PatchGAN); Zhu et al., "Unpaired image-to-image
    translation using cycle-consistent adversarial networks", ICCV 2017 (CycleGAN); Liu et al.,
    "Unsupervised image-to-image translation networks", NeurIPS 2017 (UNIT).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn
import torch.nn.functional as F

INIT_STD = 0.02


@dataclass(frozen=True)
class NetworkConfig:
    """Sizes of the baseline networks.

    The published sizes (CycleGAN's 256 x 256 setting) are ``filters=64, res_blocks=9,
    disc_filters=64``. The defaults use 8x fewer generator filters and 2 residual blocks, so
    that a baseline trains on a CPU at the demo's 96 x 96 and 96 x 120 slices.

    Attributes:
        filters: channels after the first generator (or encoder) convolution; the residual
            blocks work at 4 x filters after two downsamplings.
        res_blocks: residual blocks of a generator; in UNIT, per encoder and per decoder, of
            which ``shared_blocks`` are shared between the two domains.
        shared_blocks: UNIT only: residual blocks shared by the two encoders (their last) and by
            the two decoders (their first). They tie both domains to one latent space.
        disc_filters: channels of the first discriminator layer.
        disc_scales: UNIT only: image scales of the multi-scale discriminator (full, 1/2, 1/4...).
        disc_layers: UNIT only: stride-2 layers of each scale's discriminator.
    """

    filters: int = 8
    res_blocks: int = 2
    shared_blocks: int = 1
    disc_filters: int = 16
    disc_scales: int = 3
    disc_layers: int = 3

    def __post_init__(self) -> None:
        for field in fields(self):
            if getattr(self, field.name) < 1:
                raise ValueError(f"NetworkConfig.{field.name} must be >= 1, got {getattr(self, field.name)}")
        if self.shared_blocks > self.res_blocks:
            raise ValueError(
                f"NetworkConfig.shared_blocks ({self.shared_blocks}) must not exceed res_blocks ({self.res_blocks})"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "NetworkConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown NetworkConfig keys {unknown}: expected a subset of {sorted(known)}")
        return cls(**values)


def init_weights(module: nn.Module) -> None:
    """Draw convolution weights from N(0, 0.02^2) and zero their biases, from torch's global RNG
    (callers seed it inside ``torch.random.fork_rng``)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(layer.weight, 0.0, INIT_STD)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def conv_norm_relu(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """Reflection-padded convolution, instance norm, ReLU; keeps H, W at stride 1."""
    return nn.Sequential(
        nn.ReflectionPad2d(kernel // 2),
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride),
        nn.InstanceNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def down_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Halve H and W: 3 x 3 stride-2 convolution, instance norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1),
        nn.InstanceNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def up_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Double H and W: 3 x 3 stride-2 transposed convolution, instance norm, ReLU."""
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1),
        nn.InstanceNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ResidualBlock(nn.Module):
    """x + (pad, 3 x 3 conv, instance norm, ReLU, pad, 3 x 3 conv, instance norm)(x)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def output_layer(in_channels: int) -> nn.Sequential:
    """7 x 7 convolution to one channel and tanh, so outputs lie in [-1, 1]."""
    return nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(in_channels, 1, 7), nn.Tanh())


class ResnetGenerator(nn.Module):
    """c7s1-f, d2f, d4f, ``res_blocks`` x R4f, u2f, uf, c7s1-1 with tanh: (B, 1, H, W) -> (B, 1, H, W)."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        f = config.filters
        self.net = nn.Sequential(
            conv_norm_relu(1, f, 7),
            down_block(f, 2 * f),
            down_block(2 * f, 4 * f),
            *[ResidualBlock(4 * f) for _ in range(config.res_blocks)],
            up_block(4 * f, 2 * f),
            up_block(2 * f, f),
            output_layer(f),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class PatchDiscriminator(nn.Module):
    """PatchGAN: one real/fake score per overlapping image patch, (B, 1, H, W) -> (B, 1, H', W').

    With ``stride2_layers=3`` this is the 70 x 70 PatchGAN: C_f (no norm), C_2f, C_4f with
    stride 2, then C_8f and a one-channel convolution with stride 1; 4 x 4 kernels, LeakyReLU
    0.2, instance norm. The receptive field of each score is 70 x 70 pixels.
    """

    def __init__(self, filters: int, stride2_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, filters, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        channels = filters
        for _ in range(stride2_layers - 1):
            layers += [
                nn.Conv2d(channels, 2 * channels, 4, stride=2, padding=1),
                nn.InstanceNorm2d(2 * channels),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            channels *= 2
        layers += [
            nn.Conv2d(channels, 2 * channels, 4, stride=1, padding=1),
            nn.InstanceNorm2d(2 * channels),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(2 * channels, 1, 4, stride=1, padding=1),
        ]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class MultiScaleDiscriminator(nn.Module):
    """Patch discriminators on the image and on 2x, 4x ... average-pooled copies of it.

    Returns one score map per scale; the GAN loss averages over scales.
    """

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.scales = nn.ModuleList(
            _ScaleDiscriminator(config.disc_filters, config.disc_layers) for _ in range(config.disc_scales)
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        outputs = []
        for index, discriminator in enumerate(self.scales):
            if index > 0:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            outputs.append(discriminator(x))
        return outputs


class _ScaleDiscriminator(nn.Module):
    """``layers`` stride-2 4 x 4 convolutions with LeakyReLU 0.2, then a 1 x 1 score convolution."""

    def __init__(self, filters: int, layers: int) -> None:
        super().__init__()
        modules: list[nn.Module] = []
        channels_in, channels = 1, filters
        for _ in range(layers):
            modules += [nn.Conv2d(channels_in, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            channels_in, channels = channels, 2 * channels
        modules.append(nn.Conv2d(channels_in, 1, 1))
        self.net = nn.Sequential(*modules)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class UnitEncoder(nn.Module):
    """Domain encoder of UNIT: c7s1-f, d2f, d4f, private residual blocks, then ``shared`` (the
    blocks common to both domains). Returns the latent mean (B, 4f, H/4, W/4)."""

    def __init__(self, config: NetworkConfig, shared: nn.Module) -> None:
        super().__init__()
        f = config.filters
        self.private = nn.Sequential(
            conv_norm_relu(1, f, 7),
            down_block(f, 2 * f),
            down_block(2 * f, 4 * f),
            *[ResidualBlock(4 * f) for _ in range(config.res_blocks - config.shared_blocks)],
        )
        self.shared = shared

    def forward(self, x: Tensor) -> Tensor:
        return self.shared(self.private(x))


class UnitDecoder(nn.Module):
    """Domain decoder of UNIT: ``shared`` blocks, private residual blocks, u2f, uf, c7s1-1 with
    tanh. (B, 4f, H/4, W/4) -> (B, 1, H, W)."""

    def __init__(self, config: NetworkConfig, shared: nn.Module) -> None:
        super().__init__()
        f = config.filters
        self.shared = shared
        self.private = nn.Sequential(
            *[ResidualBlock(4 * f) for _ in range(config.res_blocks - config.shared_blocks)],
            up_block(4 * f, 2 * f),
            up_block(2 * f, f),
            output_layer(f),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.private(self.shared(z))


def shared_blocks(config: NetworkConfig) -> nn.Sequential:
    """Build the residual blocks that two UNIT encoders (or two decoders) share."""
    return nn.Sequential(*[ResidualBlock(4 * config.filters) for _ in range(config.shared_blocks)])


def count_parameters(module: nn.Module) -> int:
    """Number of distinct parameters of ``module`` (shared ones counted once)."""
    return sum(p.numel() for p in module.parameters())
