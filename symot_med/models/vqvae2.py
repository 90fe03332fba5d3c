"""Two-level VQ-VAE-2 autoencoder for 2D slices.

The layout follows Razavi, van den Oord and Vinyals, "Generating Diverse High-Fidelity Images
with VQ-VAE-2" (NeurIPS 2019). A bottom encoder reduces a (B, 1, H, W) slice to
features at 1/4 of its size, and a top encoder reduces those to 1/8. The top map is quantised
first. Its codes are decoded back to 1/4 and joined to the bottom features before the bottom
quantiser, so the bottom codes store what the top codes miss. The decoder reads the upsampled
top codes together with the bottom codes.

The latent maps handed to the flow are ``top`` (B, E, H/8, W/8) and ``bottom`` (B, E, H/4, W/4)
with E = ``embed_dim``. H and W must be divisible by 8.

Reconstructions come from a linear last layer, so they are in the intensity scale of the input
(slices normalised to about [0, 1]) and may leave that range slightly. A sigmoid would make 0, the
background value of every slice, unreachable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from symot_med.models.quantizer import EMAVectorQuantizer

# The top latent map is at 1/8 of the slice size.
DOWNSAMPLING = 8


@dataclass
class VQVAE2Config:
    """Architecture of a ``VQVAE2``; plain values only, so it can be stored in a checkpoint.

    Attributes:
        in_channels: image channels, 1 for a grey-value slice.
        channels: feature channels of the encoders and decoders.
        res_channels: hidden channels inside each residual block.
        n_res_blocks: residual blocks per encoder and decoder stage.
        embed_dim: channels E of each latent map, equal to the code length.
        n_embed: codes per codebook (one codebook per level).
        commitment: weight of the commitment loss.
        decay: EMA decay of the codebooks.
        restart_threshold: EMA assignments per batch below which a code is restarted.
    """

    in_channels: int = 1
    channels: int = 64
    res_channels: int = 32
    n_res_blocks: int = 2
    # On the demo's held-out subjects (`symot-med demo`, L1 loss), 1024 codes of 64 dimensions
    # reconstruct T1 / T2 / CT / MR at SSIM 0.942 / 0.942 / 0.958 / 0.933. 256 codes of 32
    # dimensions gave 0.931 / 0.922 / 0.936 / 0.918, and benchmarks/README.md has more variants.
    embed_dim: int = 64
    n_embed: int = 1024
    commitment: float = 0.25
    decay: float = 0.99
    restart_threshold: float = 1.0

    def __post_init__(self) -> None:
        for name in ("in_channels", "channels", "res_channels", "embed_dim", "n_embed"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"VQVAE2Config.{name} must be a positive integer, got {value!r}")
        if self.channels % 2:
            raise ValueError(f"VQVAE2Config.channels must be even, got {self.channels}")
        if not isinstance(self.n_res_blocks, int) or self.n_res_blocks < 0:
            raise ValueError(f"VQVAE2Config.n_res_blocks must be >= 0, got {self.n_res_blocks!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> VQVAE2Config:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown VQVAE2Config keys {unknown}: expected a subset of {sorted(known)}")
        return cls(**values)


class ResidualBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))) on (B, C, H, W) maps."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _residual_stack(channels: int, hidden: int, n_blocks: int) -> list[nn.Module]:
    blocks: list[nn.Module] = [ResidualBlock(channels, hidden) for _ in range(n_blocks)]
    return blocks + [nn.ReLU()]


def _down(in_ch: int, out_ch: int) -> nn.Conv2d:
    # Halves even H and W exactly.
    return nn.Conv2d(in_ch, out_ch, 4, stride=2, padding=1)


def _up(in_ch: int, out_ch: int) -> nn.ConvTranspose2d:
    # Doubles H and W exactly.
    return nn.ConvTranspose2d(in_ch, out_ch, 4, stride=2, padding=1)


class VQVAE2(nn.Module):
    """Two-level VQ-VAE-2 on (B, C, H, W) slices; see the module docstring for the layout."""

    def __init__(self, config: VQVAE2Config) -> None:
        super().__init__()
        if not isinstance(config, VQVAE2Config):
            raise TypeError(f"config must be a VQVAE2Config, got {type(config).__name__}")
        self.config = config
        c, r, n, e = config.channels, config.res_channels, config.n_res_blocks, config.embed_dim

        # (B, in, H, W) -> (B, c, H/4, W/4)
        self.encoder_bottom = nn.Sequential(
            _down(config.in_channels, c // 2),
            nn.ReLU(),
            _down(c // 2, c),
            nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1),
            *_residual_stack(c, r, n),
        )
        # (B, c, H/4, W/4) -> (B, e, H/8, W/8)
        self.encoder_top = nn.Sequential(
            _down(c, c // 2),
            nn.ReLU(),
            nn.Conv2d(c // 2, c, 3, padding=1),
            *_residual_stack(c, r, n),
            nn.Conv2d(c, e, 1),
        )
        # quantised top (B, e, H/8, W/8) -> (B, e, H/4, W/4), joined to the bottom features
        self.decoder_top = nn.Sequential(
            nn.Conv2d(e, c, 3, padding=1),
            *_residual_stack(c, r, n),
            _up(c, e),
        )
        # (B, e + c, H/4, W/4) -> (B, e, H/4, W/4)
        self.bottom_projection = nn.Conv2d(e + c, e, 1)
        # (B, e, H/8, W/8) -> (B, e, H/4, W/4)
        self.upsample_top = _up(e, e)
        # (B, 2e, H/4, W/4) -> (B, in, H, W)
        self.decoder = nn.Sequential(
            nn.Conv2d(2 * e, c, 3, padding=1),
            *_residual_stack(c, r, n),
            _up(c, c // 2),
            nn.ReLU(),
            _up(c // 2, config.in_channels),
        )

        quantizer_args = dict(
            n_embed=config.n_embed,
            embed_dim=e,
            commitment=config.commitment,
            decay=config.decay,
            restart_threshold=config.restart_threshold,
        )
        self.quantizer_top = EMAVectorQuantizer(**quantizer_args)
        self.quantizer_bottom = EMAVectorQuantizer(**quantizer_args)

    def latent_shapes(self, height: int, width: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """Return the (C, H, W) shapes of the top and bottom latent maps of an H x W slice."""
        self._check_size(height, width)
        e = self.config.embed_dim
        return (e, height // 8, width // 8), (e, height // 4, width // 4)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Encode slices ``x`` (B, C, H, W) to continuous pre-quantisation latent maps.

        Returns:
            ``top`` (B, E, H/8, W/8) and ``bottom`` (B, E, H/4, W/4). The bottom map depends on
            the top codes, so the top is snapped to its codebook here, without a codebook update
            and with a straight-through gradient.
        """
        self._check_input(x)
        features = self.encoder_bottom(x)  # (B, c, H/4, W/4)
        top = self.encoder_top(features)  # (B, E, H/8, W/8)

        top_codes = self.quantizer_top.snap(top)
        top_q = top + (top_codes - top).detach()

        joined = torch.cat([self.decoder_top(top_q), features], dim=1)  # (B, E + c, H/4, W/4)
        bottom = self.bottom_projection(joined)  # (B, E, H/4, W/4)
        return top, bottom

    def quantize(self, top: Tensor, bottom: Tensor) -> tuple[Tensor, Tensor, Tensor, dict[str, float]]:
        """Quantise both latent maps; in training mode this also updates both codebooks.

        Returns:
            ``top_q`` and ``bottom_q`` with straight-through gradients and the shapes of the
            inputs, the summed commitment loss (scalar), and per-level codebook statistics
            (``{top,bottom}_{perplexity,usage,restarts}``).
        """
        self._check_latents(top, bottom)
        top_q, loss_top, indices_top = self.quantizer_top.quantize(top)
        bottom_q, loss_bottom, indices_bottom = self.quantizer_bottom.quantize(bottom)

        stats: dict[str, float] = {}
        for level, quantizer, indices in (
            ("top", self.quantizer_top, indices_top),
            ("bottom", self.quantizer_bottom, indices_bottom),
        ):
            for key, value in quantizer.stats(indices).items():
                stats[f"{level}_{key}"] = value
            stats[f"{level}_restarts"] = float(quantizer.restarts_last_update if self.training else 0)
        return top_q, bottom_q, loss_top + loss_bottom, stats

    def latents(self, x: Tensor, quantized: bool = True) -> tuple[Tensor, Tensor]:
        """Return the flow's inputs for slices ``x`` (B, C, H, W): top (B, E, H/8, W/8) and
        bottom (B, E, H/4, W/4), snapped to the codebooks when ``quantized``.

        The codebooks are never updated here. Call under ``torch.no_grad()`` because the
        snapped maps carry no gradient.
        """
        top, bottom = self.encode(x)
        if quantized:
            top = self.quantizer_top.snap(top)
            bottom = self.quantizer_bottom.snap(bottom)
        return top, bottom

    def decode(self, top: Tensor, bottom: Tensor, snap: bool = False) -> Tensor:
        """Decode latent maps top (B, E, H/8, W/8) and bottom (B, E, H/4, W/4) to (B, C, H, W).

        With ``snap=True`` each latent vector is first replaced by its nearest code, which
        brings flow outputs back onto the codebooks the decoder was trained on.
        """
        self._check_latents(top, bottom)
        if snap:
            top = self.quantizer_top.snap(top)
            bottom = self.quantizer_bottom.snap(bottom)

        joined = torch.cat([self.upsample_top(top), bottom], dim=1)  # (B, 2E, H/4, W/4)
        return self.decoder(joined)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, dict[str, float]]:
        """Reconstruct ``x`` (B, C, H, W); return (reconstruction, commitment loss, stats)."""
        top, bottom = self.encode(x)
        top_q, bottom_q, vq_loss, stats = self.quantize(top, bottom)
        return self.decode(top_q, bottom_q), vq_loss, stats

    def _check_size(self, height: int, width: int) -> None:
        if height % DOWNSAMPLING or width % DOWNSAMPLING or height < 8 or width < 8:
            raise ValueError(
                f"slice size {height}x{width} is not supported: H and W must be positive "
                f"multiples of {DOWNSAMPLING} because the top latent map is at 1/{DOWNSAMPLING} "
                "of the slice size; crop or pad the slices"
            )

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"expected slices of shape (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}"
            )
        self._check_size(x.shape[2], x.shape[3])

    def _check_latents(self, top: Tensor, bottom: Tensor) -> None:
        e = self.config.embed_dim
        valid = (
            top.dim() == 4
            and bottom.dim() == 4
            and top.shape[1] == e
            and bottom.shape[1] == e
            and top.shape[0] == bottom.shape[0]
            and bottom.shape[2] == 2 * top.shape[2]
            and bottom.shape[3] == 2 * top.shape[3]
        )
        if not valid:
            raise ValueError(
                f"expected top (B, {e}, h, w) and bottom (B, {e}, 2h, 2w), got top "
                f"{tuple(top.shape)} and bottom {tuple(bottom.shape)}"
            )
