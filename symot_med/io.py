"""Atomic file writing: every output goes to a temporary name in its folder, then is renamed."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np


@contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it to ``final`` when the block succeeds.

    The temporary file keeps ``final``'s suffixes so that writers that pick a format from the
    name (nibabel, numpy) behave as for the final name. On error the temporary file is removed
    and ``final`` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    suffixes = "".join(final.suffixes)
    stem = final.name[: len(final.name) - len(suffixes)] if suffixes else final.name
    temporary = final.with_name(f".{stem}.tmp{os.getpid()}{suffixes}")
    try:
        yield temporary
        os.replace(temporary, final)
    finally:
        if temporary.exists():
            temporary.unlink()


def write_json(path: str | Path, payload: object) -> Path:
    """Write ``payload`` as indented JSON, atomically."""
    path = Path(path)
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def read_json(path: str | Path) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None


def save_npy(path: str | Path, array: np.ndarray) -> Path:
    path = Path(path)
    with atomic_path(path) as temporary:
        np.save(temporary, array)
    return path


def save_nifti(path: str | Path, array: np.ndarray, reference: nib.Nifti1Image) -> Path:
    """Write ``array`` on ``reference``'s grid: its affine, qform and sform codes and header.

    Args:
        path: output file ending in .nii or .nii.gz.
        array: (X, Y, Z) array with ``reference``'s shape; its dtype becomes the file's.
        reference: the input image whose space the output keeps.
    """
    path = Path(path)
    if tuple(array.shape) != tuple(reference.shape[:3]):
        raise ValueError(f"array shape {array.shape} differs from the reference shape {reference.shape}")

    header = reference.header.copy()
    header.set_data_dtype(array.dtype)
    image = nib.Nifti1Image(array, reference.affine, header=header)
    qform, qform_code = reference.get_qform(coded=True)
    sform, sform_code = reference.get_sform(coded=True)
    if qform is not None:
        image.set_qform(qform, code=int(qform_code))
    if sform is not None:
        image.set_sform(sform, code=int(sform_code))
    image.header["scl_slope"] = np.nan
    image.header["scl_inter"] = np.nan

    with atomic_path(path) as temporary:
        nib.save(image, str(temporary))
    return path
