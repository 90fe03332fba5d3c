"""Slice cache: preprocessed axial slices of a modality pair on disk, with a JSON manifest.

Layout of a cache folder::

    manifest.json                 pair, profile, split, intensity scales, steps, one entry a case
    cases/<case_id>.json          the case's GridRecord per modality and kept slice indices
    slices/<case_id>_<mod>.npy    (S, H, W) float32 kept slices, normalised to [0, 1]

Each case is written completely (arrays, then its JSON) before the next starts, so an
interrupted ``prepare`` resumes at the first case without a JSON file.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from symot_med.config import Pair, Profile
from symot_med.data.layouts import Case, discover_cases
from symot_med.data.transforms import (
    CROP_MARGIN_VOXELS,
    CT_RANGE_HU,
    MR_PERCENTILES,
    GridRecord,
    IntensityScale,
    preprocess_volume,
)
from symot_med.io import read_json, save_npy, write_json

logger = logging.getLogger(__name__)

MANIFEST_VERSION = 1


def split_cases(case_ids: list[str], test_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split subjects (never slices) into train and test sets, reproducibly for a seed.

    At least one case goes to each side when there are two or more cases.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if len(case_ids) < 2:
        raise ValueError(f"need at least 2 cases to split into train and test, found {len(case_ids)}")

    order = np.random.default_rng(seed).permutation(sorted(case_ids))
    n_test = min(max(1, round(test_fraction * len(order))), len(order) - 1)
    test = sorted(str(c) for c in order[:n_test])
    train = sorted(str(c) for c in order[n_test:])
    return train, test


def kept_slice_indices(mask: np.ndarray, min_foreground: float) -> list[int]:
    """Indices k of axial slices mask[:, :, k] whose foreground fraction is at least ``min_foreground``."""
    fractions = mask.reshape(-1, mask.shape[2]).mean(axis=0)
    return [int(k) for k in np.flatnonzero(fractions >= min_foreground)]


def preprocessing_steps(profile: Profile) -> list[dict]:
    """Return the preprocessing steps with their parameters, as recorded in the manifest."""
    return [
        {"step": "LoadImaged", "reader": "NibabelReader"},
        {"step": "EnsureChannelFirstd"},
        {"step": "ForegroundMaskd", "source": "mask file, else threshold_mask"},
        {"step": "Orientationd", "axcodes": "RAS"},
        {"step": "Spacingd", "pixdim_mm": list(profile.spacing), "mode": ["bilinear", "nearest"]},
        {"step": "CropForegroundd", "source_key": "mask", "margin": CROP_MARGIN_VOXELS},
        {"step": "ResizeWithPadOrCropd", "spatial_size": [*profile.slice_size, -1]},
        {
            "step": "NormaliseIntensityd",
            "mr": {"percentiles": list(MR_PERCENTILES), "clip": [0, 1]},
            "ct": {"window_hu": list(CT_RANGE_HU), "clip": [0, 1]},
        },
        {"step": "axial slices", "spatial_dim": 2, "min_foreground": profile.min_foreground},
    ]


def _prepare_case(case: Case, pair: Pair, profile: Profile, out_dir: Path) -> dict:
    entry: dict = {"case_id": case.case_id, "layout": case.layout, "modalities": {}}
    for modality in pair.modalities():
        volume = preprocess_volume(case.image(modality), modality, profile, mask_path=case.mask)
        kept = kept_slice_indices(volume.mask, profile.min_foreground)

        # (H, W, D) -> (S, H, W): axial slices first, only the kept ones.
        slices = np.ascontiguousarray(np.moveaxis(volume.image, 2, 0)[kept])
        relative = f"slices/{case.case_id}_{modality}.npy"
        save_npy(out_dir / relative, slices.astype(np.float32))

        entry["modalities"][modality] = {
            "file": str(case.image(modality)),
            "slices_file": relative,
            "kept_slices": kept,
            "record": volume.record.to_dict(),
        }
    write_json(out_dir / "cases" / f"{case.case_id}.json", entry)
    return entry


def _median_scale(entries: list[dict], modality: str) -> dict:
    lows = [e["modalities"][modality]["record"]["intensity_low"] for e in entries]
    highs = [e["modalities"][modality]["record"]["intensity_high"] for e in entries]
    return {"low": float(np.median(lows)), "high": float(np.median(highs))}


def build_slice_cache(
    root: str | Path,
    pair: Pair,
    profile: Profile,
    out_dir: str | Path,
    seed: int = 0,
    test_fraction: float = 0.25,
    progress: bool = True,
) -> Path:
    """Preprocess every case of ``pair`` under ``root`` into a slice cache; return the manifest path.

    Resumes an interrupted run in the same ``out_dir``; raises ValueError when ``out_dir`` contains
    a cache made with another pair, profile, split seed or data folder.
    """
    root = Path(root).resolve()
    out_dir = Path(out_dir)
    cases = discover_cases(root, pair.modalities())
    train, test = split_cases([c.case_id for c in cases], test_fraction, seed)

    settings = {
        "pair": pair.name,
        "profile": profile.to_dict(),
        "source_root": str(root),
        "seed": seed,
        "test_fraction": test_fraction,
    }
    settings_path = out_dir / "settings.json"
    # Compare as JSON, because tuples in the settings read back as lists.
    if settings_path.exists() and read_json(settings_path) != json.loads(json.dumps(settings)):
        raise ValueError(
            f"{out_dir} already contains a slice cache made with other settings ({settings_path}); "
            "choose an empty folder or delete that cache"
        )
    write_json(settings_path, settings)

    entries = []
    for case in tqdm(cases, desc=f"prepare {pair.name}", unit="case", disable=not progress):
        case_json = out_dir / "cases" / f"{case.case_id}.json"
        if case_json.exists():
            entries.append(read_json(case_json))
            continue
        entries.append(_prepare_case(case, pair, profile, out_dir))

    split = {case_id: "train" for case_id in train} | {case_id: "test" for case_id in test}
    for entry in entries:
        entry["split"] = split[entry["case_id"]]
    train_entries = [e for e in entries if e["split"] == "train"]

    manifest = {
        "version": MANIFEST_VERSION,
        **settings,
        "pair_modalities": {"source": pair.source, "target": pair.target},
        "split": {"train": train, "test": test},
        "intensity": {m: _median_scale(train_entries, m) for m in pair.modalities()},
        "steps": preprocessing_steps(profile),
        "cases": {e["case_id"]: e for e in entries},
    }
    manifest_path = write_json(out_dir / "manifest.json", manifest)
    n_slices = {m: sum(len(e["modalities"][m]["kept_slices"]) for e in train_entries) for m in pair.modalities()}
    logger.info("slice cache %s: %d train / %d test cases, train slices %s", out_dir, len(train), len(test), n_slices)
    return manifest_path


@dataclass
class SliceCache:
    """Read access to a slice cache folder."""

    folder: Path
    manifest: dict

    @classmethod
    def open(cls, folder: str | Path) -> "SliceCache":
        folder = Path(folder)
        manifest_path = folder / "manifest.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{manifest_path} not found; run `symot-med prepare` to build the slice cache")
        manifest = read_json(manifest_path)
        if manifest.get("version") != MANIFEST_VERSION:
            raise ValueError(f"{manifest_path} has version {manifest.get('version')}; expected {MANIFEST_VERSION}")
        return cls(folder, manifest)

    def case_ids(self, split: str) -> list[str]:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        return list(self.manifest["split"][split])

    def slices(self, modality: str, split: str) -> np.ndarray:
        """Return the kept slices of ``modality`` in ``split`` as a (N, 1, H, W) float32 array."""
        if modality not in self.manifest["intensity"]:
            raise ValueError(f"modality {modality!r} is not in this cache: {sorted(self.manifest['intensity'])}")
        arrays = [
            np.load(self.folder / self.manifest["cases"][case_id]["modalities"][modality]["slices_file"])
            for case_id in self.case_ids(split)
        ]
        return np.concatenate(arrays, axis=0)[:, None].astype(np.float32)

    def record(self, case_id: str, modality: str) -> GridRecord:
        return GridRecord.from_dict(self.manifest["cases"][case_id]["modalities"][modality]["record"])

    def source_file(self, case_id: str, modality: str) -> Path:
        return Path(self.manifest["cases"][case_id]["modalities"][modality]["file"])

    def intensity(self, modality: str) -> IntensityScale:
        """Median native scale of ``modality`` over the training cases (used to de-normalise
        translated volumes, whose own scale is unknown)."""
        scale = self.manifest["intensity"][modality]
        return IntensityScale(scale["low"], scale["high"])
