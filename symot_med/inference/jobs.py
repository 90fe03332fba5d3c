"""Resolve the inputs of a translate command into (image, mask) jobs, and check them all first.

Every check here runs before the first volume is translated, so a bad file late in a batch
stops the run before any output is written.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from symot_med.config import Direction, Pair
from symot_med.data.layouts import (
    LayoutError,
    check_nifti,
    discover_cases,
    match_layout,
    named_modality,
    read_case,
)
from symot_med.data.transforms import MASK_HINT, check_finite, check_same_grid, modality_kind, threshold_mask
from symot_med.inference.translate import output_name

logger = logging.getLogger(__name__)

Job = tuple[Path, Path | None]

# Advice for a bad input file. The data set layouts apply to folders only, so errors about files leave them out.
FILE_HINT = "pass a 3D NIfTI volume (.nii or .nii.gz), or a case or data set folder"


def translate_jobs(inputs: list[Path], pair: Pair, direction: Direction, mask: Path | None) -> list[Job]:
    """Resolve files and folders to (image, mask) jobs, checking every file before any work.

    A folder is a data set or case folder, and each case uses its own mask file (SynthRAD2023)
    or none. A file uses ``mask`` when given, else the mask file of the case folder it lies
    in, else none (the preprocessing then thresholds the image).

    Raises:
        ValueError: for ``mask`` with a folder or several inputs, an input given twice, two
            inputs with one output name, NaN or infinite voxels, or a mask on another grid.
        LayoutError: for files that are not readable 3D NIfTI volumes, or folders in no layout.
        FileNotFoundError: for a missing input.
    """
    modality = pair.input_modality(direction)
    if mask is not None and (len(inputs) != 1 or inputs[0].is_dir()):
        raise ValueError("--mask applies to a single input file; for folders, each case uses its own mask file")

    jobs = []
    for path in inputs:
        if path.is_dir():
            for case in discover_cases(path, [modality]):
                jobs.append((case.image(modality), case.mask))
        elif path.is_file():
            check_input_file(path, pair, direction)
            jobs.append((path, mask if mask is not None else case_mask(path)))
        else:
            raise FileNotFoundError(f"input {path} not found")

    check_distinct_outputs([image for image, _ in jobs], modality, pair.output_modality(direction))
    for image, job_mask in jobs:
        check_voxels(image, job_mask, modality)
    return jobs


def case_mask(image: Path) -> Path | None:
    """Return the mask file of the case folder that ``image`` lies in, or None."""
    if match_layout(image.parent.name) is None:
        return None
    return read_case(image.parent).mask


def check_input_file(path: Path, pair: Pair, direction: Direction) -> None:
    """Check that a file given on its own is NIfTI, and warn when its name gives the other modality."""
    if not path.name.endswith((".nii", ".nii.gz")):
        raise LayoutError(f"{path} is not a NIfTI file (.nii or .nii.gz); {FILE_HINT}")
    check_nifti(path, FILE_HINT)

    modality = pair.input_modality(direction)
    named = named_modality(path)
    if named is None or named == modality:
        return
    if named in pair.modalities():
        logger.warning(
            "%s is named like a %s image, but --direction %s translates %s into %s; check the file "
            "and the direction", path, named, direction, modality, pair.output_modality(direction),
        )
    elif modality_kind(named) != modality_kind(modality) or pair.dataset == "brats":
        # The MR of the CT/MR pair may be any MR sequence, such as a T1 file, but a BraTS pair
        # translates its two sequences only.
        logger.warning(
            "%s is named like a %s image, but this model translates between %s and %s; check the file "
            "and the model", path, named, pair.source, pair.target,
        )


def check_voxels(image: Path, mask: Path | None, modality: str) -> None:
    """Raise ValueError for unreadable data, NaN or infinite voxels, no foreground, or a ``mask`` on another grid.

    Reads every voxel of ``image`` (and of ``mask``), so a corrupt gzip stream is found here.
    Without a mask, the image must have foreground under :func:`threshold_mask`.
    """
    native = nib.load(str(image))
    values = check_finite(image, native, strict=True)
    if mask is not None:
        check_nifti(mask, MASK_HINT)
        check_same_grid(mask, native, image)
        mask_values = check_finite(mask, nib.load(str(mask)), strict=True)
        if not np.any(mask_values > 0):
            raise ValueError(f"mask {mask} has no voxel above zero; {MASK_HINT}")
    elif not threshold_mask(values, modality).any():
        raise ValueError(
            f"{image} has no foreground under the automatic {modality} threshold (for MR, no voxel above zero; "
            "for CT, none above -500 HU); check the file, or pass a mask that marks the head with --mask"
        )


def check_distinct_outputs(images: list[Path], input_modality: str, output_modality: str) -> None:
    """Raise ValueError when an input is given twice or two inputs would write the same output file."""
    seen: dict[Path, Path] = {}
    names: dict[str, Path] = {}
    for image in images:
        resolved = image.resolve()
        if resolved in seen:
            raise ValueError(f"input {image} is given twice (also as {seen[resolved]}); pass each file once")
        seen[resolved] = image

        name = output_name(image, input_modality, output_modality)
        if name in names:
            raise ValueError(
                f"inputs {names[name]} and {image} would both be written to {name}; rename one of them, or "
                "translate them in two runs into separate output folders"
            )
        names[name] = image


def prepare_output_folder(out_dir: Path) -> None:
    """Create ``out_dir`` and check that it is writable.

    Raises:
        ValueError: when ``out_dir`` is a file or cannot be written.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output folder {out_dir} is a file; choose a folder name for --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        descriptor, probe = tempfile.mkstemp(dir=out_dir, prefix=".write_check")
        os.close(descriptor)
        os.unlink(probe)
    except OSError as error:
        raise ValueError(
            f"cannot write into output folder {out_dir} ({error.strerror}); choose a folder you can write to"
        ) from None


def translate_into(translator, jobs: list[Job], out_dir: Path, direction: Direction) -> None:
    """Translate every job into ``out_dir``, removing the folder again if this call created it and it stays empty.

    Args:
        translator: ``Translator`` or ``BaselineTranslator``, already loaded.
        jobs: from :func:`translate_jobs`.
        out_dir: output folder, created when missing; the caller has checked with
            :func:`symot_med.inference.translate.check_output_folder` that it lies outside the inputs.
        direction: ``forward`` or ``inverse``.
    """
    created = not out_dir.exists()
    prepare_output_folder(out_dir)
    try:
        for image, mask in jobs:
            translator.translate_file(image, direction, out_dir, mask_path=mask)
    except BaseException:
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
