"""End-to-end translation network for MONAI inferers, and the flow wrapper used in training.

``TranslationNetwork`` maps normalised slices (B, 1, H, W) of one modality to normalised slices
of the other: VQ-VAE-2 latents (snapped to the codebooks), the SyMOT flow T or T^-1, decoding
and clipping to [0, 1]. One autoencoder can serve both modalities, or each modality has its own. MONAI 1.6's ``SliceInferer`` passes only the image (and an optional
``condition=``) to the network, so the direction is fixed when the module is built.

The module also stores, as buffers, the intensity scales of the training data in native units
(``source_intensity`` and ``target_intensity``, each (low, high)). The network does not use them.
The bundles read them to de-normalise outputs, so the weights file carries everything that
depends on the training data.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from symot_med.config import DIRECTIONS, Direction
from symot_med.data.transforms import IntensityScale
from symot_med.models.flow import LatentFlow
from symot_med.models.vqvae2 import VQVAE2, VQVAE2Config
from symot_med.training.checkpoints import check_versions, load_checkpoint

logger = logging.getLogger(__name__)

# ``kind`` of the package checkpoint that contains a TranslationNetwork (``model.pt``).
TRANSLATION_KIND = "translation"


class TranslationNetwork(nn.Module):
    """Translate normalised slices (B, 1, H, W) in one fixed direction.

    Args:
        autoencoder: VQ-VAE-2 shared by both modalities, or the source modality's when
            ``target_autoencoder`` is given.
        flow: invertible map T between the two modalities' latent maps.
        direction: ``forward`` (source to target, T) or ``inverse`` (target to source, T^-1).
        source_intensity: (low, high) native values of the source modality that normalisation
            maps to 0 and 1; NaN when unknown.
        target_intensity: the same for the target modality.
        quantized_inputs: snap the encoder's latent maps to the codebooks before the flow, as
            for a flow trained with ``FlowTrainConfig.latents = "quantized"``.
        snap_outputs: snap the flow's outputs to the codebooks before decoding. On the demo
            cohort, snapping scored higher SSIM in all four directions with either autoencoder
            layout (``symot-med latent-study``, docs/results/latent_study.md).
        target_autoencoder: the target modality's VQ-VAE-2, or None when ``autoencoder`` serves
            both. ``forward`` encodes with ``autoencoder`` and decodes with this one;
            ``inverse`` does the opposite. Its latent maps must have the same shapes.
        flow_dtype: precision the flow runs in, ``torch.float64`` (default) or
            ``torch.float32``; the flow is converted in place. The latents are cast to it and
            the flow's outputs back to the input's dtype. In float32, T(T^-1(z)) on the demo's
            training latents has differed from z by up to 1.03e-4 (with one autoencoder shared
            by both modalities), because intermediate values reach about 100; in float64 by
            about 1e-13. The flow is a small part of the compute.
    """

    def __init__(
        self,
        autoencoder: VQVAE2,
        flow: LatentFlow,
        direction: Direction = "forward",
        source_intensity: Sequence[float] | None = None,
        target_intensity: Sequence[float] | None = None,
        quantized_inputs: bool = True,
        snap_outputs: bool = True,
        target_autoencoder: VQVAE2 | None = None,
        flow_dtype: torch.dtype | str = torch.float64,
    ) -> None:
        super().__init__()
        flow_dtype = _flow_dtype(flow_dtype)
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        if not isinstance(autoencoder, VQVAE2):
            raise TypeError(f"autoencoder must be a VQVAE2, got {type(autoencoder).__name__}")
        if target_autoencoder is not None and not isinstance(target_autoencoder, VQVAE2):
            raise TypeError(f"target_autoencoder must be a VQVAE2 or None, got {type(target_autoencoder).__name__}")
        if target_autoencoder is not None and target_autoencoder.config.embed_dim != autoencoder.config.embed_dim:
            raise ValueError(
                f"the autoencoders' latent maps differ in channels ({autoencoder.config.embed_dim} and "
                f"{target_autoencoder.config.embed_dim}); train both with the same embed_dim"
            )
        if not isinstance(flow, LatentFlow):
            raise TypeError(f"flow must be a LatentFlow, got {type(flow).__name__}")
        for name, value in (("quantized_inputs", quantized_inputs), ("snap_outputs", snap_outputs)):
            # A bundle override such as `--network_def#snap_outputs false` arrives as the string
            # "false", which bool() would turn into True.
            if not isinstance(value, bool):
                raise TypeError(
                    f"{name} must be True or False, got {value!r}; on the command line write False, not false"
                )

        self.autoencoder = autoencoder
        self.target_autoencoder = target_autoencoder
        self.flow = flow.to(flow_dtype)
        self.direction = direction
        self.quantized_inputs = bool(quantized_inputs)
        self.snap_outputs = bool(snap_outputs)
        self.register_buffer("source_intensity", _scale_tensor("source_intensity", source_intensity))
        self.register_buffer("target_intensity", _scale_tensor("target_intensity", target_intensity))

    def forward(self, x: Tensor) -> Tensor:
        """Translate slices ``x`` (B, 1, H, W) normalised to [0, 1]; return (B, 1, H, W) in [0, 1].

        H and W must be the slice size the flow was built for. Snapping to the codebooks carries
        no gradient, so call this under ``torch.no_grad()``.
        """
        source = self.autoencoder
        target = self.target_autoencoder if self.target_autoencoder is not None else self.autoencoder
        encoder, decoder = (source, target) if self.direction == "forward" else (target, source)

        latents = encoder.latents(x, quantized=self.quantized_inputs)
        flow_dtype = next(self.flow.parameters()).dtype
        mapped = self.flow(tuple(level.to(flow_dtype) for level in latents), rev=self.direction == "inverse")
        mapped = tuple(level.to(latents[0].dtype) for level in mapped)
        return decoder.decode(*mapped, snap=self.snap_outputs).clamp(0.0, 1.0)

    def set_intensity(self, source: IntensityScale, target: IntensityScale) -> None:
        """Store the native intensity scales of the two modalities' training data."""
        self.source_intensity.copy_(_scale_tensor("source_intensity", (source.low, source.high)))
        self.target_intensity.copy_(_scale_tensor("target_intensity", (target.low, target.high)))

    def output_intensity(self) -> IntensityScale:
        """Return the scale that maps outputs back to native units: the target's for ``forward``.

        Raises:
            ValueError: when the weights carry no intensity scale (NaN buffers).
        """
        name = "target_intensity" if self.direction == "forward" else "source_intensity"
        low, high = (float(v) for v in getattr(self, name))
        if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
            raise ValueError(
                f"the network's {name} is ({low}, {high}), not a valid scale; load weights written "
                "by the bundle's train_flow config"
            )
        return IntensityScale(low, high)

    def extra_repr(self) -> str:
        autoencoders = "shared" if self.target_autoencoder is None else "separate"
        return f"direction={self.direction!r}, autoencoders={autoencoders!r}"


def _flow_dtype(value: torch.dtype | str) -> torch.dtype:
    """Return the torch dtype for ``value`` (a dtype or its name); raise for anything but float32 and float64."""
    names = {"float32": torch.float32, "float64": torch.float64}
    dtype = names.get(value, value) if isinstance(value, str) else value
    if dtype not in names.values():
        raise ValueError(f"invalid flow_dtype {value!r}: pass torch.float64 (the default) or torch.float32, or their names")
    return dtype


def build_translation_network(
    autoencoder_config: Mapping[str, Any],
    slice_size: Sequence[int],
    flow_config: Mapping[str, Any],
    direction: Direction = "forward",
    snap_outputs: bool = True,
    flow_dtype: torch.dtype | str = torch.float64,
) -> TranslationNetwork:
    """Build an untrained ``TranslationNetwork`` from plain configuration values.

    Args:
        autoencoder_config: ``VQVAE2Config`` fields.
        slice_size: (H, W) of the slices in voxels, both multiples of 8.
        flow_config: ``LatentFlow`` arguments without ``shapes`` (``n_blocks``, ``hidden``,
            ``n_res_blocks``, ``clamp``, ``seed``); the latent shapes follow from the slice size.
        direction: ``forward`` or ``inverse``.
        snap_outputs: snap the flow's outputs to the codebooks before decoding.
        flow_dtype: precision the flow runs in, as for ``TranslationNetwork``.
    """
    if len(slice_size) != 2:
        raise ValueError(f"slice_size must be (H, W), got {list(slice_size)}")
    if "shapes" in flow_config:
        raise ValueError("flow_config must not contain 'shapes'; they follow from slice_size and embed_dim")

    autoencoder = VQVAE2(VQVAE2Config.from_dict(dict(autoencoder_config)))
    shapes = autoencoder.latent_shapes(int(slice_size[0]), int(slice_size[1]))
    flow = LatentFlow.from_config({**flow_config, "shapes": [list(shape) for shape in shapes]})
    return TranslationNetwork(autoencoder, flow, direction, snap_outputs=snap_outputs, flow_dtype=flow_dtype)


def load_translation_network(
    network: TranslationNetwork, path: str | os.PathLike, device: str | torch.device = "cpu"
) -> TranslationNetwork:
    """Load ``model.pt`` written by the bundle's train_flow config into ``network``.

    The file is a package checkpoint (``symot_med.training.checkpoints``) of kind
    ``translation``, read with ``torch.load(weights_only=True)``. Its autoencoder and flow
    configurations must equal the network's, and it must have been written with the installed
    FrEIA version. Returns the network on ``device`` in eval mode.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file is not a translation checkpoint, was written with another
            FrEIA version, or describes another architecture or slice size.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"model weights {path} not found; train them with the bundle's train_autoencoder and "
            "train_flow configs, or set model_dir"
        )
    record = load_checkpoint(path)
    if record.get("kind") != TRANSLATION_KIND:
        raise ValueError(f"{path} is not a translation checkpoint (kind {record.get('kind')!r})")
    check_versions(record, path, strict=("FrEIA",))

    expected = {"autoencoder_config": network.autoencoder.config.to_dict(), "flow_config": network.flow.config()}
    for key, value in expected.items():
        if record.get(key) != value:
            raise ValueError(
                f"{path} contains a model with {key} {record.get(key)}, but the config builds {value}; "
                "use the config the model was trained with"
            )
    network.load_state_dict(record["state_dict"])
    logger.info("loaded %s (%s)", path, network.direction)
    return network.to(device).eval()


class SymmetricFlow(nn.Module):
    """Apply T to source latents and T^-1 to target latents in one forward call.

    DistributedDataParallel expects one forward per backward, and the SyMOT loss needs both
    directions, so training wraps this module instead of the flow.
    """

    def __init__(self, flow: LatentFlow) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, x: Sequence[Tensor], z: Sequence[Tensor]) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        """Return (T(x), T^-1(z)); each latent level l has shape (B, *flow.shapes[l])."""
        return self.flow(x), self.flow(z, rev=True)


def _scale_tensor(name: str, values: Sequence[float] | None) -> Tensor:
    if values is None:
        return torch.full((2,), math.nan, dtype=torch.float32)
    if len(values) != 2:
        raise ValueError(f"{name} must be (low, high), got {list(values)}")
    return torch.tensor([float(values[0]), float(values[1])], dtype=torch.float32)
