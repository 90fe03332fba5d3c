"""Shared fixtures: small real NIfTI files in every supported layout."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest


def write_volume(path: Path, shape=(12, 14, 10), affine=None, dtype=np.float32, seed=0) -> Path:
    """Write a small NIfTI volume with a bright ellipsoid on a zero background."""
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = sum(g**2 for g in grid) < 0.6
    values = np.random.default_rng(seed).uniform(100, 200, size=shape) * inside
    nib.save(nib.Nifti1Image(values.astype(dtype), np.eye(4) if affine is None else affine), str(path))
    return path


LAYOUT_FILES = {
    "brats2020": ("BraTS20_Training_001", ["BraTS20_Training_001_t1.nii", "BraTS20_Training_001_t2.nii", "BraTS20_Training_001_seg.nii"]),
    "brats2021": ("BraTS2021_00000", ["BraTS2021_00000_t1.nii.gz", "BraTS2021_00000_t2.nii.gz", "BraTS2021_00000_seg.nii.gz"]),
    "brats2023": ("BraTS-GLI-00000-000", ["BraTS-GLI-00000-000-t1n.nii.gz", "BraTS-GLI-00000-000-t2w.nii.gz", "BraTS-GLI-00000-000-seg.nii.gz"]),
    "synthrad2023": ("Task1/brain/1BA001", ["mr.nii.gz", "ct.nii.gz", "mask.nii.gz"]),
}


@pytest.fixture
def layout_tree(tmp_path):
    """Return a function that writes one case of a layout under tmp_path and returns the data root."""

    def make(layout: str, root_name: str = "data") -> Path:
        root = tmp_path / root_name
        folder, names = LAYOUT_FILES[layout]
        for name in names:
            write_volume(root / folder / name)
        return root

    return make


def break_gzip_stream(path: Path, keep: float = 0.5) -> Path:
    """Rewrite the .nii.gz ``path`` so that its header and length check out but reading its data fails.

    The deflate stream holds the first ``keep`` of the uncompressed bytes, then a block of the
    reserved type 3, which zlib rejects. The gzip trailer records the CRC32 and length of the
    whole volume, so ``check_nifti`` accepts the file and only loading the data fails.
    """
    raw = gzip.decompress(path.read_bytes())
    compressor = zlib.compressobj(wbits=-15)
    body = compressor.compress(raw[: int(len(raw) * keep)]) + compressor.flush(zlib.Z_SYNC_FLUSH)
    reserved_block = b"\x06"  # BFINAL 0, BTYPE 3 on the byte boundary that Z_SYNC_FLUSH leaves
    header = b"\x1f\x8b\x08\x00" + bytes(4) + b"\x00\xff"
    trailer = struct.pack("<II", zlib.crc32(raw), len(raw) % 2**32)
    path.write_bytes(header + body + reserved_block + trailer)
    return path


@pytest.fixture
def broken_gzip():
    """Return ``break_gzip_stream``, for tests that damage a volume in place."""
    return break_gzip_stream
