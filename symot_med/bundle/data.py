"""Data for the bundle configs: bundle root lookup, data lists and in-memory data sets.

Training reads the package's slice cache (``symot_med.data.slices``), built with the same
preprocessing as inference, so the bundles never re-implement the preprocessing of the slices.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from symot_med.config import Direction, Pair
from symot_med.data.layouts import discover_cases
from symot_med.models.vqvae2 import VQVAE2
from symot_med.data.slices import SliceCache, split_cases
from symot_med.pipeline.stages import _validation_split
from symot_med.training.autoencoder import load_autoencoder
from symot_med.training.flow import encode_slices

logger = logging.getLogger(__name__)

METADATA_FILE = Path("configs") / "metadata.json"


def find_bundle_root(name: str) -> str:
    """Return the folder of bundle ``name``, so configs work from the bundle or the repository.

    Checks, in order: the current directory when it is that bundle, ``./bundles/<name>``, and
    ``bundles/<name>`` of the source checkout this package was imported from (editable
    installs). Pass ``--bundle_root`` to the bundle command to use another folder.

    Raises:
        FileNotFoundError: when none of these contains ``configs/metadata.json``.
    """
    package_checkout = Path(__file__).resolve().parents[2]
    candidates = [Path.cwd(), Path.cwd() / "bundles" / name, package_checkout / "bundles" / name]
    for candidate in candidates:
        if candidate.name == name and (candidate / METADATA_FILE).is_file():
            return str(candidate)
    raise FileNotFoundError(
        f"bundle {name!r} not found in {[str(c) for c in candidates]}; pass --bundle_root with the "
        "folder that contains configs/metadata.json"
    )


def dataset_folder(dataset_dir: str | os.PathLike) -> Path:
    """Return ``dataset_dir`` as a Path, raising FileNotFoundError that names ``--dataset_dir`` when it is missing."""
    folder = Path(dataset_dir)
    if not folder.exists():
        raise FileNotFoundError(
            f"data folder {folder} does not exist; pass --dataset_dir with your data set folder "
            "(without --dataset_dir the bundle reads the config's default dataset_dir, relative to "
            "the current folder)"
        )
    return folder


def trained_autoencoder(path: str | os.PathLike, device: str | torch.device) -> VQVAE2:
    """Load the autoencoder that train_autoencoder.json writes, in eval mode.

    Raises:
        FileNotFoundError: ``path`` is missing, with the hint to run train_autoencoder.json first.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"autoencoder checkpoint {path} not found; run train_autoencoder.json first, with the same "
            "--model_dir and --work_dir, because it trains the autoencoder and writes the slice cache"
        )
    return load_autoencoder(path, device=device)


def inference_datalist(dataset_dir: str | os.PathLike, pair: Pair, direction: Direction) -> list[dict[str, str]]:
    """List the input volumes of ``direction`` under ``dataset_dir``.

    Args:
        dataset_dir: a data set folder (BraTS or SynthRAD2023 layout) or one case folder.
        pair: modality pair of the bundle.
        direction: ``forward`` reads the pair's source modality, ``inverse`` its target.

    Returns:
        One ``{"image": path}`` per case, with ``"mask"`` when the case has a mask file.
    """
    modality = pair.input_modality(direction)
    items = []
    for case in discover_cases(dataset_folder(dataset_dir), [modality]):
        item = {"image": str(case.image(modality))}
        if case.mask is not None:
            item["mask"] = str(case.mask)
        items.append(item)
    logger.info("%d %s volume(s) in %s", len(items), modality, dataset_dir)
    return items


def evaluation_datalist(
    dataset_dir: str | os.PathLike, pair: Pair, direction: Direction, seed: int, test_fraction: float
) -> list[dict[str, str]]:
    """List the held-out cases of ``direction`` for the evaluate config.

    Each item contains the input (``image``, and again as ``identity``, which stays on the native
    grid for the identity baseline), the ground truth ``label``, and when the case has a mask
    file, ``mask`` and ``scoring_mask``. The held-out cases are those that ``symot_med.data.slices.split_cases`` puts in the test
    split for ``seed`` and ``test_fraction``, the split the training configs' slice cache uses.
    """
    input_modality = pair.input_modality(direction)
    output_modality = pair.output_modality(direction)
    cases = discover_cases(dataset_folder(dataset_dir), [input_modality, output_modality])
    _, test_ids = split_cases([case.case_id for case in cases], test_fraction, seed)

    items = []
    for case in cases:
        if case.case_id not in test_ids:
            continue
        item = {
            "image": str(case.image(input_modality)),
            "label": str(case.image(output_modality)),
            "identity": str(case.image(input_modality)),
        }
        if case.mask is not None:
            item["mask"] = str(case.mask)
            item["scoring_mask"] = str(case.mask)
        items.append(item)
    logger.info("%d held-out case(s) in %s: %s", len(items), dataset_dir, sorted(test_ids))
    return items


class SliceDataset(Dataset):
    """Slices (N, 1, H, W) as ``{"image": (1, H, W) float32 tensor}`` items."""

    def __init__(self, slices: np.ndarray) -> None:
        if not isinstance(slices, np.ndarray) or slices.ndim != 4 or slices.shape[1] != 1:
            raise ValueError(f"slices must be a NumPy array of shape (N, 1, H, W), got {getattr(slices, 'shape', slices)}")
        self.slices = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))

    def __len__(self) -> int:
        return self.slices.shape[0]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"image": self.slices[index]}


def autoencoder_slices(cache_dir: str | os.PathLike, seed: int) -> dict[str, SliceDataset]:
    """Return ``{"train": ..., "val": ...}`` slice data sets for the autoencoder.

    Both modalities' training slices are pooled, and a seeded tenth of them (at least one) is
    held out for validation, as ``symot_med.pipeline.stages.train_ae_stage`` does.
    """
    cache = SliceCache.open(cache_dir)
    pooled = np.concatenate([cache.slices(m, "train") for m in cache.manifest["intensity"]], axis=0)
    train, val = _validation_split(pooled, seed)
    logger.info("autoencoder slices from %s: %d train, %d validation", cache_dir, len(train), len(val))
    return {"train": SliceDataset(train), "val": SliceDataset(val)}


class UnpairedLatentDataset(Dataset):
    """Unpaired source and target latent maps, re-paired at random every epoch.

    Item i contains source sample i mod N_x and target sample p(i) mod N_z, where p is a random
    permutation of range(max(N_x, N_z)) drawn from ``seed`` and the epoch. The loss compares the
    two sides of a batch as sets, so the pairing only decides which samples share a batch.

    Items: ``{"x0": (C_0, H_0, W_0), "x1": ..., "z0": ..., "z1": ...}`` with one key per
    latent level, for x (source) and z (target).

    Args:
        x_latents: source latent levels, each (N_x, C_l, H_l, W_l).
        z_latents: target latent levels, each (N_z, C_l, H_l, W_l).
        seed: seed of the pairing.
    """

    def __init__(self, x_latents: Sequence[Tensor], z_latents: Sequence[Tensor], seed: int = 0) -> None:
        if len(x_latents) != len(z_latents) or not x_latents:
            raise ValueError(
                f"x_latents and z_latents must have the same number of levels (at least one), got "
                f"{len(x_latents)} and {len(z_latents)}"
            )
        for side, levels in (("x", x_latents), ("z", z_latents)):
            counts = {int(level.shape[0]) for level in levels}
            if len(counts) != 1 or 0 in counts:
                raise ValueError(f"every {side} latent level needs the same non-zero sample count, got {counts}")
        self.x_latents = tuple(x_latents)
        self.z_latents = tuple(z_latents)
        self.seed = seed
        self.length = max(self.x_latents[0].shape[0], self.z_latents[0].shape[0])
        self.set_epoch(0)

    @property
    def n_levels(self) -> int:
        return len(self.x_latents)

    def set_epoch(self, epoch: int) -> None:
        """Draw the pairing of ``epoch``."""
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0]))
        self.pairing = torch.randperm(self.length, generator=generator)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        x_index = index % self.x_latents[0].shape[0]
        z_index = int(self.pairing[index]) % self.z_latents[0].shape[0]
        item = {f"x{level}": latent[x_index] for level, latent in enumerate(self.x_latents)}
        item.update({f"z{level}": latent[z_index] for level, latent in enumerate(self.z_latents)})
        return item


def split_latent_batch(batch: dict[str, Tensor], n_levels: int) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """Return the (x levels, z levels) of a collated ``UnpairedLatentDataset`` batch."""
    missing = [f"{side}{level}" for side in "xz" for level in range(n_levels) if f"{side}{level}" not in batch]
    if missing:
        raise ValueError(f"latent batch is missing keys {missing}; expected x0..x{n_levels - 1} and z0..z{n_levels - 1}")
    x = tuple(batch[f"x{level}"] for level in range(n_levels))
    z = tuple(batch[f"z{level}"] for level in range(n_levels))
    return x, z


def flow_datasets(
    cache_dir: str | os.PathLike, autoencoder: torch.nn.Module, pair: Pair, seed: int, device: str | torch.device
) -> dict[str, UnpairedLatentDataset]:
    """Encode the cached slices with the frozen autoencoder and return unpaired latent data sets.

    ``"train"`` contains the training cases' latents and ``"val"`` the held-out cases' latents, with
    the pair's source modality as x and its target as z.
    """
    cache = SliceCache.open(cache_dir)
    if cache.manifest["pair"] != pair.name:
        raise ValueError(f"slice cache {cache_dir} is for pair {cache.manifest['pair']!r}, not {pair.name!r}")

    datasets = {}
    for name, split in (("train", "train"), ("val", "test")):
        x = encode_slices(autoencoder, cache.slices(pair.source, split), device=device)
        z = encode_slices(autoencoder, cache.slices(pair.target, split), device=device)
        datasets[name] = UnpairedLatentDataset(x, z, seed=seed)
        logger.info("%s latents: %d %s and %d %s slices", name, x[0].shape[0], pair.source, z[0].shape[0], pair.target)
    return datasets
