"""Vector quantiser with an exponential-moving-average (EMA) codebook and dead-code restart.

The EMA codebook is the variant of van den Oord et al., "Neural Discrete Representation
Learning" (NeurIPS 2017). Each code is the EMA of the encoder outputs assigned to it, so the
codebook gets no gradient and only the commitment term reaches the encoder. Codes that stop being
chosen are moved onto encoder outputs of the current batch (the "random restarts" of Dhariwal et
al., "Jukebox", 2020), which keeps the codebook from collapsing onto a few codes.

Shapes: inputs and outputs are (B, C, H, W) maps with C = ``embed_dim``; code indices are
(B, H, W) int64; the codebook is (K, C) with K = ``n_embed``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def nearest_codes(flat: Tensor, codebook: Tensor) -> Tensor:
    """Return, for each row of ``flat`` (N, C), the index of the nearest codebook row (K, C).

    Squared Euclidean distance |f - e|^2 = |f|^2 - 2 f.e + |e|^2, built from one (N, K)
    matrix product instead of an (N, K, C) broadcast.
    """
    f_sq = flat.pow(2).sum(dim=1, keepdim=True)  # (N, 1)
    e_sq = codebook.pow(2).sum(dim=1)  # (K,)
    distances = f_sq - 2.0 * flat @ codebook.t() + e_sq  # (N, K)
    return distances.argmin(dim=1)  # (N,)


def codebook_stats(indices: Tensor, n_embed: int) -> dict[str, float]:
    """Measure how evenly a batch of code indices uses a codebook of ``n_embed`` codes.

    Returns:
        ``perplexity``: exp of the entropy of the code histogram, between 1 (one code) and
        ``n_embed`` (uniform use); ``usage``: fraction of codes chosen at least once.
    """
    counts = torch.bincount(indices.reshape(-1), minlength=n_embed).double()
    probs = counts / counts.sum().clamp_min(1.0)
    entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum()
    return {
        "perplexity": float(torch.exp(entropy)),
        "usage": float((counts > 0).double().mean()),
    }


def _flatten_map(z: Tensor) -> Tensor:
    # (B, C, H, W) -> (B*H*W, C): one row per spatial position.
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


class EMAVectorQuantizer(nn.Module):
    """Nearest-code quantiser for (B, C, H, W) maps with an EMA-updated codebook.

    Args:
        n_embed: number of codes K.
        embed_dim: code length C, equal to the channel count of the maps.
        commitment: weight of the commitment loss mean |z - sg(z_q)|^2.
        decay: EMA decay of the cluster sizes and sums.
        eps: Laplace smoothing of the cluster sizes, which keeps the division finite.
        restart_threshold: a code whose EMA cluster size (assignments per training batch)
            falls below this value is moved onto a random encoder output of the current batch.
            ``0`` turns restarts off.

    The codebook, EMA statistics and the update counter are buffers, so they travel in the
    ``state_dict``. Restart draws come from a generator seeded by the ``restart_seed`` buffer and
    the update count, which makes a resumed run pick the same vectors as an uninterrupted one.
    ``restart_seed`` and the initial codes are drawn from torch's global generator when the
    quantiser is built, so seed that generator for a reproducible run.
    """

    def __init__(
        self,
        n_embed: int,
        embed_dim: int,
        commitment: float = 0.25,
        decay: float = 0.99,
        eps: float = 1e-5,
        restart_threshold: float = 1.0,
    ) -> None:
        super().__init__()
        if n_embed < 1 or embed_dim < 1:
            raise ValueError(f"n_embed and embed_dim must be positive, got {n_embed} and {embed_dim}")
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must lie in (0, 1), got {decay}")
        if commitment < 0.0 or restart_threshold < 0.0:
            raise ValueError(
                f"commitment and restart_threshold must be >= 0, got {commitment} and {restart_threshold}"
            )

        self.n_embed = n_embed
        self.embed_dim = embed_dim
        self.commitment = commitment
        self.decay = decay
        self.eps = eps
        self.restart_threshold = restart_threshold
        self.restarts_last_update = 0

        # The initial codes are placeholders. With cluster sizes of 1 and the default threshold
        # of 1, every code that the first training batch leaves unused is restarted on data.
        embedding = torch.randn(n_embed, embed_dim) * 0.1
        self.register_buffer("embedding", embedding)
        self.register_buffer("cluster_size", torch.ones(n_embed))
        self.register_buffer("embed_sum", embedding.clone())
        self.register_buffer("n_updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("restart_seed", torch.randint(0, 2**31 - 1, (), dtype=torch.long))

    def extra_repr(self) -> str:
        return (
            f"n_embed={self.n_embed}, embed_dim={self.embed_dim}, commitment={self.commitment}, "
            f"decay={self.decay}, restart_threshold={self.restart_threshold}"
        )

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.quantize(z)

    def quantize(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Quantise ``z`` (B, C, H, W); in training mode also update the codebook.

        Returns:
            ``z_q`` (B, C, H, W), the nearest codes with a straight-through gradient (d z_q / d z
            is the identity), the scalar commitment loss, and the (B, H, W) int64 code indices.
        """
        self._check_map(z)
        flat = _flatten_map(z.detach()).float()  # (N, C), N = B*H*W

        indices = nearest_codes(flat, self.embedding)  # (N,)
        codes = self.embedding[indices]  # (N, C)

        if self.training:
            self._update_codebook(flat, indices)

        b, _, h, w = z.shape
        z_q = codes.reshape(b, h, w, self.embed_dim).permute(0, 3, 1, 2).to(z.dtype)  # (B, C, H, W)
        loss = self.commitment * F.mse_loss(z, z_q)

        z_q = z + (z_q - z).detach()
        return z_q, loss, indices.reshape(b, h, w)

    @torch.no_grad()
    def snap(self, z: Tensor) -> Tensor:
        """Replace each vector of ``z`` (B, C, H, W) by its nearest code; no update, no gradient."""
        self._check_map(z)
        flat = _flatten_map(z).float()
        indices = nearest_codes(flat, self.embedding)
        b, _, h, w = z.shape
        return self.lookup(indices.reshape(b, h, w)).to(z.dtype)

    def lookup(self, indices: Tensor) -> Tensor:
        """Return the codes (B, C, H, W) for integer code indices (B, H, W)."""
        if indices.dim() != 3 or indices.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"indices must be an integer tensor of shape (B, H, W), got dtype {indices.dtype} "
                f"and shape {tuple(indices.shape)}"
            )
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.n_embed):
            raise ValueError(
                f"indices must lie in [0, {self.n_embed - 1}], got range "
                f"[{int(indices.min())}, {int(indices.max())}]"
            )
        codes = F.embedding(indices.long(), self.embedding)  # (B, H, W, C)
        return codes.permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)

    def stats(self, indices: Tensor) -> dict[str, float]:
        """Return perplexity and usage fraction of ``indices`` (see ``codebook_stats``)."""
        return codebook_stats(indices, self.n_embed)

    def _check_map(self, z: Tensor) -> None:
        if z.dim() != 4 or z.shape[1] != self.embed_dim:
            raise ValueError(
                f"expected a (B, {self.embed_dim}, H, W) map, got shape {tuple(z.shape)}"
            )

    @torch.no_grad()
    def _update_codebook(self, flat: Tensor, indices: Tensor) -> None:
        # EMA of per-code counts (K,) and of per-code vector sums (K, C).
        one_hot = F.one_hot(indices, self.n_embed).type(flat.dtype)  # (N, K)
        counts = one_hot.sum(dim=0)  # (K,)
        sums = one_hot.t() @ flat  # (K, C)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1.0 - self.decay)

        # Laplace smoothing keeps a code with (almost) no assignments from dividing by zero.
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.n_embed * self.eps) * total
        self.embedding.copy_(self.embed_sum / smoothed.unsqueeze(1))

        self.restarts_last_update = self._restart_dead_codes(flat)
        self.n_updates += 1

    def _restart_dead_codes(self, flat: Tensor) -> int:
        if self.restart_threshold <= 0.0:
            return 0
        dead = torch.nonzero(self.cluster_size < self.restart_threshold).squeeze(1)  # (D,)
        n_dead = int(dead.numel())
        if n_dead == 0:
            return 0

        generator = torch.Generator(device="cpu")
        generator.manual_seed(int(self.restart_seed) * 1_000_003 + int(self.n_updates))
        n_rows = flat.shape[0]
        if n_rows >= n_dead:
            rows = torch.randperm(n_rows, generator=generator)[:n_dead]
        else:
            rows = torch.randint(0, n_rows, (n_dead,), generator=generator)
        new_codes = flat[rows.to(flat.device)]  # (D, C)

        # A restarted code counts as used exactly threshold times, so it is restarted again
        # at the next update unless the encoder chooses it.
        self.embedding[dead] = new_codes
        self.cluster_size[dead] = self.restart_threshold
        self.embed_sum[dead] = new_codes * self.restart_threshold
        return n_dead

