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


def save_nifti(path: str | Path, array: np.ndarray, reference: nib.Nifti1Image, description: str = "") -> Path:
    """Write ``array`` on ``reference``'s grid: its affine, qform and sform codes and header.

    The display window (cal_min, cal_max) is cleared and ``descrip`` replaced, because they
    describe the reference's intensities, not the array's.

    Args:
        path: output file ending in .nii or .nii.gz.
        array: (X, Y, Z) array with ``reference``'s shape; its dtype becomes the file's.
        reference: the input image whose space the output keeps.
        description: text for the header's ``descrip`` field, at most 79 ASCII characters
            (longer text is cut).
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
    # The input's display window and description belong to the input's intensities, so a
    # viewer would clip the output with them.
    image.header["cal_min"] = 0.0
    image.header["cal_max"] = 0.0
    image.header["descrip"] = description.encode("ascii", "replace")[:79]

    with atomic_path(path) as temporary:
        nib.save(image, str(temporary))
    return path


def relative_to_folder(path: str | Path, folder: str | Path) -> str:
    """Return ``path`` relative to ``folder`` (with ``..`` where needed), in POSIX form.

    Model cards store their checkpoint paths this way, so a run folder that contains the model
    folder and its autoencoders can be moved or copied as a whole.
    """
    return Path(os.path.relpath(Path(path).resolve(), Path(folder).resolve())).as_posix()


def resolve_from_folder(path: str, folder: str | Path) -> str:
    """Return the absolute form of a card's ``path``; relative paths start at ``folder``.

    Cards written before paths became relative hold absolute paths, which are returned as they are.
    """
    if Path(path).is_absolute():
        return path
    return str((Path(folder) / path).resolve())
