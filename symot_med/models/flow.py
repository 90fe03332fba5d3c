"""Invertible networks T for SyMOT-Flow, built from FrEIA 0.2 ``AllInOneBlock`` couplings.

Each block computes y = R (s * Coupling(R^T x) + t): a fixed random channel permutation
(or rotation) R, an affine coupling with soft clamp ``clamp * tanh``, and a global affine
scaling s and offset t (ActNorm). The last layer of every subnet is zero-initialised and R
is undone inside the block (FrEIA's ``reverse_permutation=True``), so a new flow is the
identity map and training starts from zero transport cost.

Contract, checked by the tests: ``flow(flow(x)[0], rev=True)[0]`` equals x up to float
rounding, and the log-determinant returned in reverse is minus the forward one.
``Ff.SequenceINN`` returns ``(output, log_jac_det)`` with log_jac_det of shape (B,).

FrEIA 0.2 behaviours that this module works around:

- ``AllInOneBlock`` draws its permutation from NumPy's global RNG, and scipy's rotation
  sampler used for soft permutations does too. Construction here seeds that RNG from the
  ``seed`` argument and restores its previous state afterwards. The torch CPU RNG, used
  for the subnet weights, is seeded and restored the same way.
- ``AllInOneBlock`` scales the subnet output in place (``a *= 0.1``), which breaks
  backward when the subnet ends in an activation whose gradient needs its output, such as
  Tanh. The subnets here end in a linear layer or a convolution.
- Subnets contain no BatchNorm or other batch-statistics normalisation, because it makes
  T^-1(T(x)) depend on the rest of the batch in training mode.

The permutations are non-trainable parameters, so the state dict restores them. Its keys
and layout are FrEIA internals, so store ``importlib.metadata.version("FrEIA")`` with a
checkpoint (FrEIA 0.2 has no ``__version__``) and load it with the same version.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import numbers
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import FrEIA.framework as Ff
import FrEIA.modules as Fm
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

# FrEIA warns that its soft permutation (scipy's SO(D) sampler) is slow above 512 features.
MAX_SOFT_PERMUTATION_DIM = 512

_LATENT_FLOW_KEYS = ("shapes", "n_blocks", "hidden", "n_res_blocks", "clamp", "seed", "layout")


def build_dense_flow(
    dim: int,
    n_blocks: int = 8,
    hidden: int = 256,
    clamp: float = 2.0,
    seed: int = 0,
) -> Ff.SequenceINN:
    """Build an invertible map of R^dim from fully connected coupling blocks.

    Intended for the low-dimensional toy experiments (inputs (B, dim)). Each subnet is
    Linear(dim_in, hidden), ReLU, Linear(hidden, hidden), ReLU, Linear(hidden, dim_out),
    with the last layer zero-initialised. For dim <= 512 each block uses a fixed random
    rotation (FrEIA's soft permutation). In 2-D a hard permutation can only keep or swap
    the two coordinates, so several blocks in a row could couple along the same axis.
    Above 512 features the block uses a hard permutation, because the rotation sampler
    becomes slow.

    Args:
        dim: number of features D, at least 2.
        n_blocks: number of coupling blocks.
        hidden: width of the hidden layers of each subnet.
        clamp: soft clamp of the log-scale, which stays within (-clamp, clamp).
        seed: seed for the permutations and the initial weights, in [0, 2^32).

    Returns:
        ``Ff.SequenceINN``; ``flow(x)`` returns (T(x), log|det dT/dx|) for x of shape
        (B, dim), and ``flow(y, rev=True)`` returns (T^-1(y), -log|det dT/dx|).
    """
    _check_int("dim", dim, minimum=2)
    _check_int("n_blocks", n_blocks, minimum=1)
    _check_int("hidden", hidden, minimum=1)
    _check_clamp(clamp)
    _check_seed(seed)

    subnet = functools.partial(_dense_subnet, hidden=hidden)
    permute_soft = dim <= MAX_SOFT_PERMUTATION_DIM
    with _seeded_rngs(seed):
        flow = Ff.SequenceINN(dim)
        for _ in range(n_blocks):
            flow.append(
                Fm.AllInOneBlock,
                subnet_constructor=subnet,
                affine_clamping=float(clamp),
                permute_soft=permute_soft,
                reverse_permutation=True,
            )
    return flow


def build_conv_flow(
    shape: tuple[int, int, int],
    n_blocks: int = 4,
    hidden: int = 64,
    n_res_blocks: int = 2,
    clamp: float = 2.0,
    seed: int = 0,
) -> Ff.SequenceINN:
    """Build an invertible map of (C, H, W) latent maps from Glow-style coupling blocks.

    Each coupling block splits the channels in two halves. Its subnet is a 3x3 convolution
    to ``hidden`` channels, ``n_res_blocks`` residual blocks (h + conv(relu(conv(relu(h))))),
    ReLU and a zero-initialised 3x3 convolution, all with padding 1 so that H and W are kept.
    Channels are mixed by a fixed random permutation per block. There is no normalisation
    layer in the subnets.

    Args:
        shape: (C, H, W) of one latent map, with C >= 2 so that a coupling has two halves.
        n_blocks: number of coupling blocks.
        hidden: channels of the subnet's hidden layers.
        n_res_blocks: residual blocks per subnet, 0 or more.
        clamp: soft clamp of the log-scale, which stays within (-clamp, clamp).
        seed: seed for the permutations and the initial weights, in [0, 2^32).

    Returns:
        ``Ff.SequenceINN`` for inputs (B, C, H, W); it returns (output, log_jac_det (B,)).
    """
    channels, height, width = _check_shape(shape)
    _check_int("n_blocks", n_blocks, minimum=1)
    _check_int("hidden", hidden, minimum=1)
    _check_int("n_res_blocks", n_res_blocks, minimum=0)
    _check_clamp(clamp)
    _check_seed(seed)

    subnet = functools.partial(_ConvResidualSubnet, hidden=hidden, n_res_blocks=n_res_blocks)
    with _seeded_rngs(seed):
        flow = Ff.SequenceINN(channels, height, width)
        for _ in range(n_blocks):
            flow.append(
                Fm.AllInOneBlock,
                subnet_constructor=subnet,
                affine_clamping=float(clamp),
                permute_soft=False,
                reverse_permutation=True,
            )
    return flow


class LatentFlow(nn.Module):
    """Convolutional flow on the latent levels (for VQ-VAE-2: top and bottom).

    ``layout="per_level"``: level l is mapped by its own ``build_conv_flow(shapes[l], ...,
    seed=seed + l)``, so the levels get different permutations and never mix.
    ``layout="joint"``: every level is rearranged to the smallest level's H and W with
    ``pixel_unshuffle`` (a (C, 2h, 2w) map becomes (4C, h, w)), the levels are stacked along
    channels, and one ``build_conv_flow`` maps the stack, so the coupling subnets see all levels.
    The rearrangement is a permutation, so the joint flow is exactly invertible as well.

    Args:
        shapes: (C, H, W) of each level, in the order the latents are passed. For ``joint``,
            each level's H and W must be the same integer multiple of the smallest level's.
        n_blocks, hidden, n_res_blocks, clamp: as in :func:`build_conv_flow`.
        seed: seed of level 0. Level l uses seed + l, which must be below 2^32.
        layout: ``"per_level"`` or ``"joint"``.
    """

    def __init__(
        self,
        shapes: Sequence[tuple[int, int, int]],
        n_blocks: int = 4,
        hidden: int = 64,
        n_res_blocks: int = 2,
        clamp: float = 2.0,
        seed: int = 0,
        layout: str = "per_level",
    ) -> None:
        super().__init__()
        if layout not in ("per_level", "joint"):
            raise ValueError(f"layout must be 'per_level' or 'joint', got {layout!r}.")
        if isinstance(shapes, (str, bytes)) or not isinstance(shapes, Sequence):
            raise TypeError(f"shapes must be a sequence of (C, H, W) tuples, got {shapes!r}.")
        if len(shapes) == 0:
            raise ValueError("shapes must contain at least one (C, H, W) level, got none.")
        _check_seed(seed)
        _check_seed(seed + len(shapes) - 1, name="seed + number of levels - 1")

        self.shapes = tuple(_check_shape(shape) for shape in shapes)
        self.n_blocks = n_blocks
        self.hidden = hidden
        self.n_res_blocks = n_res_blocks
        self.clamp = float(clamp)
        self.seed = seed
        self.layout = layout
        if layout == "joint":
            self.factors = _unshuffle_factors(self.shapes)
            height, width = min(shape[1] for shape in self.shapes), min(shape[2] for shape in self.shapes)
            channels = sum(shape[0] * factor**2 for shape, factor in zip(self.shapes, self.factors))
            flow_shapes = [(channels, height, width)]
        else:
            flow_shapes = list(self.shapes)
        self.flows = nn.ModuleList(
            build_conv_flow(
                shape,
                n_blocks=n_blocks,
                hidden=hidden,
                n_res_blocks=n_res_blocks,
                clamp=clamp,
                seed=seed + level,
            )
            for level, shape in enumerate(flow_shapes)
        )

    def forward(self, latents: Sequence[Tensor], rev: bool = False) -> tuple[Tensor, ...]:
        """Apply T (or T^-1 when ``rev`` is True) to each level.

        Args:
            latents: one tensor per level, level l of shape (B, *shapes[l]).
            rev: apply the inverse map T^-1.

        Returns:
            Tuple of the mapped levels, with the input shapes. The log-determinants are
            not returned. Call ``self.flows[l](latent, rev=rev)`` to get them.
        """
        if isinstance(latents, Tensor) or not isinstance(latents, Sequence):
            raise TypeError(
                f"latents must be a sequence of tensors, one per level, got "
                f"{type(latents).__name__}; wrap a single level as (latent,)."
            )
        if len(latents) != len(self.shapes):
            raise ValueError(
                f"Expected {len(self.shapes)} latent level(s) with shapes {self.shapes}, "
                f"got {len(latents)}."
            )
        if not isinstance(rev, bool):
            raise TypeError(f"rev must be a bool, got {rev!r}.")

        for level, (latent, shape) in enumerate(zip(latents, self.shapes)):
            if not isinstance(latent, Tensor):
                raise TypeError(f"latents[{level}] must be a torch.Tensor, got {type(latent).__name__}.")
            if latent.dim() != 4 or tuple(latent.shape[1:]) != shape:
                raise ValueError(
                    f"latents[{level}] must have shape (B, {', '.join(map(str, shape))}), got "
                    f"{tuple(latent.shape)}."
                )

        if self.layout == "joint":
            # (B, C_l, f h, f w) -> (B, C_l f^2, h, w) per level, stacked along channels.
            stacked = torch.cat([F.pixel_unshuffle(x, f) for x, f in zip(latents, self.factors)], dim=1)
            mapped, _ = self.flows[0](stacked, rev=rev)
            sizes = [shape[0] * f**2 for shape, f in zip(self.shapes, self.factors)]
            parts = torch.split(mapped, sizes, dim=1)
            return tuple(F.pixel_shuffle(part, f) for part, f in zip(parts, self.factors))

        outputs = []
        for flow, latent in zip(self.flows, latents):
            mapped, _ = flow(latent, rev=rev)  # SequenceINN returns (output, log_jac_det)
            outputs.append(mapped)
        return tuple(outputs)

    def config(self) -> dict[str, Any]:
        """Return the constructor arguments as a JSON-serialisable dict."""
        return {
            "shapes": [list(shape) for shape in self.shapes],
            "n_blocks": self.n_blocks,
            "hidden": self.hidden,
            "n_res_blocks": self.n_res_blocks,
            "clamp": self.clamp,
            "seed": self.seed,
            "layout": self.layout,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LatentFlow:
        """Build a flow from the dict returned by :meth:`config`.

        The weights are newly initialised (identically for the same seed); load a state
        dict to restore trained ones.
        """
        if not isinstance(config, Mapping):
            raise TypeError(f"config must be a mapping, got {type(config).__name__}.")
        unknown = sorted(set(config) - set(_LATENT_FLOW_KEYS))
        if unknown:
            raise ValueError(
                f"Unknown LatentFlow config keys {unknown}; expected keys from {_LATENT_FLOW_KEYS}."
            )
        if "shapes" not in config:
            raise ValueError("LatentFlow config is missing the required key 'shapes'.")
        arguments = dict(config)
        arguments["shapes"] = [tuple(shape) for shape in config["shapes"]]
        return cls(**arguments)


def _unshuffle_factors(shapes: Sequence[tuple[int, int, int]]) -> list[int]:
    """Per level, the factor f with (H, W) = f * (h, w) of the smallest level; raise otherwise."""
    height, width = min(shape[1] for shape in shapes), min(shape[2] for shape in shapes)
    factors = []
    for shape in shapes:
        factor = shape[1] // height
        if shape[1] != factor * height or shape[2] != factor * width:
            raise ValueError(
                f"layout 'joint' needs every level's (H, W) to be an integer multiple of the smallest "
                f"level's ({height}, {width}), got {shape[1:]} among {list(shapes)}."
            )
        factors.append(factor)
    return factors


class _ConvResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.conv2(torch.relu(self.conv1(torch.relu(h))))


class _ConvResidualSubnet(nn.Module):
    """Coupling subnet (B, in_channels, H, W) -> (B, out_channels, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, *, hidden: int, n_res_blocks: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, hidden, kernel_size=3, padding=1)
        self.blocks = nn.Sequential(*(_ConvResidualBlock(hidden) for _ in range(n_res_blocks)))
        self.head = nn.Conv2d(hidden, out_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.blocks(self.stem(x))
        return self.head(torch.relu(h))


def _dense_subnet(in_features: int, out_features: int, *, hidden: int) -> nn.Sequential:
    head = nn.Linear(hidden, out_features)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        head,
    )


@contextlib.contextmanager
def _seeded_rngs(seed: int) -> Iterator[None]:
    """Seed NumPy's global RNG and torch's CPU RNG, and restore both on exit."""
    numpy_state = np.random.get_state()
    try:
        np.random.seed(seed)
        with torch.random.fork_rng(devices=[]):
            # torch.manual_seed would also reseed every CUDA device, outside fork_rng's restore.
            torch.random.default_generator.manual_seed(seed)
            yield
    finally:
        np.random.set_state(numpy_state)


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}.")


def _check_clamp(clamp: object) -> None:
    if isinstance(clamp, bool) or not isinstance(clamp, numbers.Real):
        raise TypeError(f"clamp must be a real number, got {clamp!r}.")
    if not (math.isfinite(clamp) and clamp > 0):
        raise ValueError(f"clamp must be finite and positive, got {clamp!r}.")


def _check_seed(seed: object, name: str = "seed") -> None:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {seed!r}.")
    if not 0 <= seed < 2**32:
        raise ValueError(f"{name} must be in [0, 2^32) for NumPy's seeding, got {seed}.")


def _check_shape(shape: object) -> tuple[int, int, int]:
    """Return a validated (C, H, W) tuple of ints."""
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence) or len(shape) != 3:
        raise ValueError(f"A latent shape must be (C, H, W), got {shape!r}.")
    for size in shape:
        if isinstance(size, bool) or not isinstance(size, numbers.Integral):
            raise TypeError(f"A latent shape must contain ints, got {shape!r}.")
    channels, height, width = (int(size) for size in shape)
    if channels < 2:
        raise ValueError(
            f"A latent shape needs at least 2 channels so that a coupling block has two halves, "
            f"got C={channels} in {tuple(shape)}."
        )
    if height < 1 or width < 1:
        raise ValueError(f"A latent shape needs H, W >= 1, got {tuple(shape)}.")
    return channels, height, width
