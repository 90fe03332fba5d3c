"""One function per pipeline stage, shared by the command line and the demo.

Each stage reads the previous stage's folder and writes its own; each skips its work when its
final output is already there and otherwise resumes from its last checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from symot_med.config import AUTOENCODER_LAYOUTS, Pair, Profile
from symot_med.data.slices import SliceCache, build_slice_cache
from symot_med.inference.translate import MODEL_FILE, card_autoencoders, read_model_card, write_model_card
from symot_med.models.vqvae2 import VQVAE2Config
from symot_med.training.autoencoder import AETrainConfig, load_autoencoder, train_autoencoder
from symot_med.training.checkpoints import load_checkpoint
from symot_med.training.flow import FlowTrainConfig, train_flow

logger = logging.getLogger(__name__)

VALIDATION_FRACTION = 0.1


def prepare(
    data_root: Path, pair: Pair, profile: Profile, cache_dir: Path, seed: int, test_fraction: float, progress: bool
) -> Path:
    """Build (or resume) the slice cache of ``pair``; return the cache folder."""
    build_slice_cache(data_root, pair, profile, cache_dir, seed=seed, test_fraction=test_fraction, progress=progress)
    return cache_dir


def _validation_split(slices: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``VALIDATION_FRACTION`` of the training slices (at least one) for validation."""
    order = np.random.default_rng(seed).permutation(len(slices))
    n_val = max(1, int(round(VALIDATION_FRACTION * len(slices))))
    return slices[order[n_val:]], slices[order[:n_val]]


def train_ae_stage(
    cache_dir: Path,
    out_dir: Path,
    config: AETrainConfig,
    model_config: VQVAE2Config,
    device: str,
    progress: bool,
    modalities: Sequence[str] | None = None,
) -> Path:
    """Train one autoencoder on the training slices of ``modalities`` (default: both of the
    cache's, pooled); return ``autoencoder.pt``."""
    cache = SliceCache.open(cache_dir)
    available = list(cache.manifest["intensity"])
    modalities = available if modalities is None else list(modalities)
    unknown = [m for m in modalities if m not in available]
    if unknown or not modalities:
        raise ValueError(f"modalities must be some of the cache's {available}, got {modalities}")
    pooled = np.concatenate([cache.slices(m, "train") for m in modalities], axis=0)

    final = out_dir / "autoencoder.pt"
    if final.is_file():
        # A finished autoencoder of other modalities has another slice count.
        data = load_checkpoint(final).get("data", {})
        trained_on = data.get("n_train", 0) + data.get("n_val", 0)
        if trained_on != len(pooled):
            raise ValueError(
                f"{final} was trained on {trained_on} slices, not the {len(pooled)} training slices of "
                f"{'+'.join(modalities)}; choose another output folder or delete that autoencoder"
            )
        logger.info("autoencoder %s exists; skipping training", final)
        return final

    train, val = _validation_split(pooled, config.seed)
    logger.info("autoencoder training on %d slices (%s), %d for validation", len(train), "+".join(modalities), len(val))
    return train_autoencoder(
        train, val, out_dir, config, model_config, device=device, progress=progress, modalities=modalities
    )


def check_autoencoder_fits(path: Path, modality: str, slice_shape: list[int], cache_dir: Path) -> None:
    """Raise ValueError when the autoencoder at ``path`` was trained on other slices than ``modality``'s.

    Compares the slice size (H, W) it was trained on with the cache's, and its recorded
    modalities, where the checkpoint has them, with ``modality``.
    """
    file = path / "autoencoder.pt" if path.is_dir() else path
    data = load_checkpoint(file).get("data", {})
    trained_shape = data.get("slice_shape")
    if trained_shape is not None and list(trained_shape) != slice_shape:
        raise ValueError(
            f"autoencoder {file} was trained on {trained_shape[0]}x{trained_shape[1]} slices, but the slice cache "
            f"{cache_dir} has {slice_shape[0]}x{slice_shape[1]} slices; pass an autoencoder trained on this cache"
        )
    trained_modalities = data.get("modalities")
    if trained_modalities is not None and modality not in trained_modalities:
        raise ValueError(
            f"autoencoder {file} was trained on {'+'.join(trained_modalities)} slices, but it is given for "
            f"{modality}; pass the autoencoder trained on {modality} (or on both modalities), with train-flow's "
            "--target-autoencoder for the target modality"
        )


def per_modality_config(config: AETrainConfig, n_modalities: int) -> AETrainConfig:
    """Settings of each autoencoder when every modality has its own.

    Each trains on its modality's slices only, so it trains ``n_modalities`` times the epochs and
    takes as many optimiser steps as a shared autoencoder. The separate layout therefore costs
    ``n_modalities`` times the autoencoder training time. With the shared autoencoder's 20
    epochs, the demo's T1 autoencoder reached a validation SSIM of only 0.933.
    """
    return replace(config, epochs=config.epochs * n_modalities)


def train_autoencoders_stage(
    cache_dir: Path,
    out_dir: Path,
    config: AETrainConfig,
    model_config: VQVAE2Config,
    device: str,
    progress: bool,
    layout: str = "shared",
) -> dict[str, Path]:
    """Train the autoencoders of a pair; return each modality's ``autoencoder.pt``.

    ``shared``: one autoencoder on both modalities in ``out_dir``. ``separate``: one per
    modality in ``out_dir/<modality>``, each with ``per_modality_config(config, 2)``.
    """
    if layout not in AUTOENCODER_LAYOUTS:
        raise ValueError(f"autoencoder layout must be one of {AUTOENCODER_LAYOUTS}, got {layout!r}")
    modalities = list(SliceCache.open(cache_dir).manifest["intensity"])
    if layout == "shared":
        shared = train_ae_stage(cache_dir, out_dir, config, model_config, device, progress)
        return {m: shared for m in modalities}
    per_modality = per_modality_config(config, len(modalities))
    return {
        m: train_ae_stage(cache_dir, out_dir / m, per_modality, model_config, device, progress, modalities=[m])
        for m in modalities
    }


def train_flow_stage(
    cache_dir: Path,
    autoencoder_path: Path | Mapping[str, Path],
    out_dir: Path,
    pair: Pair,
    config: FlowTrainConfig,
    device: str,
    progress: bool,
) -> Path:
    """Train the flow from ``pair.source`` to ``pair.target`` latents and write ``model.json``.

    ``autoencoder_path`` is one autoencoder shared by both modalities, or a mapping from each
    modality to its own. Returns the model folder (``out_dir``) that ``Translator`` loads.
    """
    cache = SliceCache.open(cache_dir)
    if cache.manifest["pair"] != pair.name:
        raise ValueError(f"slice cache {cache_dir} is for pair {cache.manifest['pair']!r}, not {pair.name!r}")
    if isinstance(autoencoder_path, Mapping):
        paths = {m: Path(autoencoder_path[m]) for m in pair.modalities()}
    else:
        paths = {m: Path(autoencoder_path) for m in pair.modalities()}

    slice_shape = list(cache.slices(pair.source, "train").shape[2:])
    for modality, path in paths.items():
        check_autoencoder_fits(path, modality, slice_shape, cache_dir)

    final = out_dir / "flow.pt"
    card_path = out_dir / MODEL_FILE
    if final.is_file():
        # A finished flow belongs to the autoencoders it was trained on.
        if card_path.is_file():
            trained_on = card_autoencoders(read_model_card(out_dir))
            expected = {m: str(path.resolve()) for m, path in paths.items()}
            if trained_on != expected:
                raise ValueError(
                    f"{final} was trained on the autoencoders {trained_on}, not {expected}; "
                    "choose another output folder or delete that flow"
                )
        logger.info("flow %s exists; skipping training", final)
    else:
        source_ae = load_autoencoder(paths[pair.source], device=device)
        target_ae = None
        if paths[pair.target] != paths[pair.source]:
            target_ae = load_autoencoder(paths[pair.target], device=device)
        x_slices = cache.slices(pair.source, "train")
        z_slices = cache.slices(pair.target, "train")
        logger.info("flow training: %d %s slices (x), %d %s slices (z)", len(x_slices), pair.source, len(z_slices), pair.target)
        final = train_flow(source_ae, x_slices, z_slices, out_dir, config, device=device, progress=progress, target_ae=target_ae)

    profile = Profile(**{**cache.manifest["profile"], "spacing": tuple(cache.manifest["profile"]["spacing"]),
                         "slice_size": tuple(cache.manifest["profile"]["slice_size"])})
    shared = paths[pair.source] == paths[pair.target]
    write_model_card(out_dir, pair, profile, cache.manifest["intensity"], paths[pair.source] if shared else paths, final)
    return out_dir
