"""One function per pipeline stage, shared by the command line and the demo.

Each stage reads the previous stage's folder and writes its own; each skips its work when its
final output is already there and otherwise resumes from its last checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from symot_med.config import Pair, Profile
from symot_med.data.slices import SliceCache, build_slice_cache
from symot_med.inference.translate import write_model_card
from symot_med.models.vqvae2 import VQVAE2Config
from symot_med.training.autoencoder import AETrainConfig, load_autoencoder, train_autoencoder
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
) -> Path:
    """Train one autoencoder on the training slices of both modalities; return ``autoencoder.pt``."""
    final = out_dir / "autoencoder.pt"
    if final.is_file():
        logger.info("autoencoder %s exists; skipping training", final)
        return final

    cache = SliceCache.open(cache_dir)
    modalities = list(cache.manifest["intensity"])
    pooled = np.concatenate([cache.slices(m, "train") for m in modalities], axis=0)
    train, val = _validation_split(pooled, config.seed)
    logger.info("autoencoder training on %d slices (%s pooled), %d for validation", len(train), "+".join(modalities), len(val))
    return train_autoencoder(train, val, out_dir, config, model_config, device=device, progress=progress)


def train_flow_stage(
    cache_dir: Path,
    autoencoder_path: Path,
    out_dir: Path,
    pair: Pair,
    config: FlowTrainConfig,
    device: str,
    progress: bool,
) -> Path:
    """Train the flow from ``pair.source`` to ``pair.target`` latents and write ``model.json``.

    Returns the model folder (``out_dir``) that ``Translator`` loads.
    """
    cache = SliceCache.open(cache_dir)
    if cache.manifest["pair"] != pair.name:
        raise ValueError(f"slice cache {cache_dir} is for pair {cache.manifest['pair']!r}, not {pair.name!r}")

    final = out_dir / "flow.pt"
    if final.is_file():
        logger.info("flow %s exists; skipping training", final)
    else:
        autoencoder = load_autoencoder(autoencoder_path, device=device)
        x_slices = cache.slices(pair.source, "train")
        z_slices = cache.slices(pair.target, "train")
        logger.info("flow training: %d %s slices (x), %d %s slices (z)", len(x_slices), pair.source, len(z_slices), pair.target)
        final = train_flow(autoencoder, x_slices, z_slices, out_dir, config, device=device, progress=progress)

    profile = Profile(**{**cache.manifest["profile"], "spacing": tuple(cache.manifest["profile"]["spacing"]),
                         "slice_size": tuple(cache.manifest["profile"]["slice_size"])})
    write_model_card(out_dir, pair, profile, cache.manifest["intensity"], autoencoder_path, final)
    return out_dir
