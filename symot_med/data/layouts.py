"""Case discovery for the public BraTS and SynthRAD2023 folder layouts.

Every layout is reduced to one ``Case``: a case id, the folder, and a map from canonical modality
names to files. Canonical names are ``t1``, ``t1ce``, ``t2``, ``flair`` (BraTS) and ``mr``,
``ct`` (SynthRAD2023), so BraTS 2023's ``t1n`` and ``t2w`` become ``t1`` and ``t2``.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from symot_med.config import PAIRS

LAYOUT_HELP = (
    "expected one of: BraTS 2020 (BraTS20_Training_001/BraTS20_Training_001_t1.nii), "
    "BraTS 2021 (BraTS2021_00000/BraTS2021_00000_t1.nii.gz), "
    "BraTS 2023 (BraTS-GLI-00000-000/BraTS-GLI-00000-000-t1n.nii.gz), "
    "SynthRAD2023 Task 1 brain (Task1/brain/1BA001/mr.nii.gz, ct.nii.gz, mask.nii.gz)"
)


class LayoutError(ValueError):
    """A folder or file does not match any supported data set layout."""


@dataclass(frozen=True)
class LayoutSpec:
    """Naming rules of one layout for its case folders and files.

    Attributes:
        name: layout name used in manifests.
        case_pattern: regular expression a case folder name must match in full.
        file_names: canonical modality -> file name template; ``{case}`` is the case id.
        extensions: accepted file endings, tried in order.
        dataset: data set family, ``brats`` or ``synthrad``, as in ``symot_med.config.Pair``.
        mask: file name template of the body or brain mask, or None when the layout has none.
        seg: file name template of the segmentation, or None.
    """

    name: str
    case_pattern: str
    file_names: dict[str, str]
    extensions: tuple[str, ...]
    dataset: str
    mask: str | None = None
    seg: str | None = None


LAYOUTS: tuple[LayoutSpec, ...] = (
    LayoutSpec(
        name="brats2020",
        case_pattern=r"BraTS20_(Training|Validation)_\d{3}",
        file_names={m: "{case}_" + m for m in ("t1", "t1ce", "t2", "flair")},
        extensions=(".nii", ".nii.gz"),
        dataset="brats",
        seg="{case}_seg",
    ),
    LayoutSpec(
        name="brats2021",
        case_pattern=r"BraTS2021_\d{5}",
        file_names={m: "{case}_" + m for m in ("t1", "t1ce", "t2", "flair")},
        extensions=(".nii.gz", ".nii"),
        dataset="brats",
        seg="{case}_seg",
    ),
    LayoutSpec(
        name="brats2023",
        case_pattern=r"BraTS-[A-Z]{2,4}-\d{5}-\d{3}",
        file_names={"t1": "{case}-t1n", "t1ce": "{case}-t1c", "t2": "{case}-t2w", "flair": "{case}-t2f"},
        extensions=(".nii.gz", ".nii"),
        dataset="brats",
        seg="{case}-seg",
    ),
    LayoutSpec(
        name="synthrad2023",
        case_pattern=r"1B[A-C]\d{3}",
        file_names={"mr": "mr", "ct": "ct"},
        extensions=(".nii.gz", ".nii"),
        dataset="synthrad",
        mask="mask",
    ),
)


@dataclass(frozen=True)
class Case:
    """One subject of a data set.

    Attributes:
        case_id: the case folder's name.
        layout: name of the layout it was found in.
        folder: the case folder.
        images: canonical modality -> image file, only for files that exist.
        mask: brain or body mask file, or None (BraTS volumes are skull-stripped: their mask
            is the non-zero region).
        seg: segmentation file, or None.
    """

    case_id: str
    layout: str
    folder: Path
    images: dict[str, Path] = field(default_factory=dict)
    mask: Path | None = None
    seg: Path | None = None

    def image(self, modality: str) -> Path:
        """Return the file of ``modality``, raising LayoutError when the case lacks it."""
        if modality not in self.images:
            spec = layout_spec(self.layout)
            if modality not in spec.file_names:
                raise LayoutError(_foreign_modality_message(spec, modality, self.case_id))
            expected = _expected_name(spec, spec.file_names.get(modality, modality), self.case_id)
            raise LayoutError(
                f"missing {modality} image for case {self.case_id}: expected {self.folder / expected} "
                f"({self.layout} layout)"
            )
        return self.images[modality]


def _foreign_modality_message(spec: LayoutSpec, modality: str, case_id: str) -> str:
    """Build the error for a modality that ``spec`` has no file for, naming the pair that fits the data."""
    modalities = list(spec.file_names)
    modalities_text = ", ".join(modalities[:-1]) + " and " + modalities[-1]
    pairs = [pair for pair in PAIRS.values() if pair.dataset == spec.dataset]
    # Bundle folders are named symot_<dataset>_<pair>, for example symot_brats_t1t2.
    suggestions = " or ".join(f"the {pair.name} pair (bundle symot_{pair.dataset}_{pair.name})" for pair in pairs)
    return (
        f"case {case_id} is in the {spec.name} layout, which contains modalities {modalities_text}, not {modality}; "
        f"use {suggestions} for this data set"
    )


def layout_spec(name: str) -> LayoutSpec:
    for spec in LAYOUTS:
        if spec.name == name:
            return spec
    raise ValueError(f"unknown layout {name!r}: expected one of {[s.name for s in LAYOUTS]}")


def named_modality(path: str | Path) -> str | None:
    """Return the canonical modality that a file's name gives in a known layout, or None.

    Only the part of a name that follows the case id is compared, in lower case, so a renamed
    BraTS file such as ``subject01_T2.nii.gz`` reads as ``t2``, and SynthRAD's ``mr.nii.gz`` as
    ``mr``.
    """
    name = Path(path).name.lower()
    stem = name.removesuffix(".gz").removesuffix(".nii")
    for spec in LAYOUTS:
        for modality, template in spec.file_names.items():
            if "{case}" not in template:
                matches = stem == template
            else:
                suffix = template.replace("{case}", "")
                matches = stem.endswith(suffix) and len(stem) > len(suffix)
            if matches:
                return modality
    return None


def match_layout(folder_name: str) -> LayoutSpec | None:
    """Return the layout whose case-folder pattern matches ``folder_name``, or None."""
    for spec in LAYOUTS:
        if re.fullmatch(spec.case_pattern, folder_name):
            return spec
    return None


def _expected_name(spec: LayoutSpec, template: str, case_id: str) -> str:
    return template.format(case=case_id) + spec.extensions[0]


def _find_file(folder: Path, spec: LayoutSpec, template: str | None, case_id: str) -> Path | None:
    if template is None:
        return None
    stem = template.format(case=case_id)
    for extension in spec.extensions:
        candidate = folder / (stem + extension)
        if candidate.is_file():
            return candidate
    return None


def read_case(folder: str | Path) -> Case:
    """Build a Case from a case folder whose name matches a known layout."""
    folder = Path(folder)
    spec = match_layout(folder.name)
    if spec is None:
        raise LayoutError(f"folder {folder} is not a case folder of a known layout; {LAYOUT_HELP}")

    images = {}
    for modality, template in spec.file_names.items():
        path = _find_file(folder, spec, template, folder.name)
        if path is not None:
            images[modality] = path

    return Case(
        case_id=folder.name,
        layout=spec.name,
        folder=folder,
        images=images,
        mask=_find_file(folder, spec, spec.mask, folder.name),
        seg=_find_file(folder, spec, spec.seg, folder.name),
    )


def _case_folders(root: Path) -> list[Path]:
    """Return the case folders at ``root`` or in the places the layouts put them."""
    if match_layout(root.name) is not None:
        return [root]

    candidates = [root, root / "brain", root / "Task1" / "brain"]
    for candidate in candidates:
        if not candidate.is_dir():
            continue
        folders = sorted(p for p in candidate.iterdir() if p.is_dir() and match_layout(p.name) is not None)
        if folders:
            return folders
    return []


def check_nifti(path: Path, hint: str = LAYOUT_HELP) -> None:
    """Raise LayoutError naming ``path`` when it is not a readable 3D NIfTI file or is truncated.

    Reads the header and compares the data length it describes with the file's length. For
    ``.nii.gz`` that is the uncompressed length in the gzip trailer (4 bytes read), and the file
    is decompressed only when the trailer disagrees. A corrupt byte inside a gzip stream of the
    right length passes this check and fails when the data is loaded.

    Args:
        path: the file.
        hint: what the file should be, added to the errors for a missing or unreadable file;
            the default lists the data set layouts.
    """
    if not Path(path).exists():
        raise LayoutError(f"{path} not found; {hint}")
    try:
        image = nib.load(str(path))
    except Exception as error:  # nibabel raises several types for a bad file
        raise LayoutError(f"{path} is not a readable NIfTI file ({error}); {hint}") from None
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise LayoutError(f"{path} is a {type(image).__name__}, not NIfTI; {hint}")
    if len(image.shape) != 3:
        advice = ""
        if len(image.shape) > 3 and set(image.shape[3:]) == {1}:
            advice = " (drop its trailing axes of length 1)"
        raise LayoutError(f"{path} has shape {image.shape}; expected a 3D volume{advice}")
    dtype = image.get_data_dtype()
    if dtype.kind not in "biuf":
        raise LayoutError(
            f"{path} has {dtype} voxels; expected real integer or float intensities (convert complex data to "
            "magnitude and RGB data to one channel first)"
        )

    # The loaded image's header reports offset 0; the array proxy keeps the file's vox_offset.
    proxy = image.dataobj
    expected = int(proxy.offset) + int(np.prod(image.shape)) * proxy.dtype.itemsize
    length = _uncompressed_length(path, expected)
    if length < expected:
        raise LayoutError(
            f"{path} is truncated: {length} bytes, but its header describes {expected} bytes "
            f"(shape {image.shape}, {proxy.dtype}); replace or remove the file"
        )


def _uncompressed_length(path: Path, expected: int) -> int:
    """Length in bytes of ``path`` after decompression; exact whenever it is below ``expected``."""
    if not path.name.endswith(".gz"):
        return path.stat().st_size

    # The gzip trailer ends with the uncompressed length modulo 2**32 (RFC 1952, ISIZE).
    with path.open("rb") as stream:
        stream.seek(-4, 2)
        trailer_length = int.from_bytes(stream.read(4), "little")
    if trailer_length == expected % 2**32:
        return expected

    length = 0
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(1 << 20):
                length += len(chunk)
    except (EOFError, OSError, zlib.error) as error:
        raise LayoutError(f"{path} is truncated or corrupt ({error}); replace or remove the file") from None
    return length


def discover_cases(root: str | Path, modalities: Sequence[str] | None = None, check_files: bool = True) -> list[Case]:
    """Find every case under ``root``.

    Args:
        root: a data set folder (holding case folders, or ``Task1/brain`` for SynthRAD2023) or
            one case folder.
        modalities: canonical modalities every case must have; a case that lacks one raises.
        check_files: check each required image and each case's mask with ``check_nifti``.

    Returns:
        Cases sorted by id.

    Raises:
        LayoutError: ``root`` is missing, contains no case folder of a known layout, mixes
            layouts, or a case lacks a required modality or contains a file that is not NIfTI
            or is truncated.
    """
    root = Path(root)
    if not root.exists():
        raise LayoutError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise LayoutError(f"{root} is a file; expected a data set folder or a case folder; {LAYOUT_HELP}")

    folders = _case_folders(root)
    if not folders:
        loose = sorted(path.name for path in root.glob("*.nii*") if path.is_file())
        files_hint = ""
        if loose:
            files_hint = f" ({root} contains NIfTI files such as {loose[0]}: `translate` takes files directly)"
        raise LayoutError(f"no case folders found in {root}{files_hint}; {LAYOUT_HELP}")

    cases = [read_case(folder) for folder in folders]
    layouts = sorted({case.layout for case in cases})
    if len(layouts) > 1:
        raise LayoutError(f"{root} mixes layouts {layouts}; put each data set in its own folder")

    for case in cases:
        for modality in modalities or ():
            path = case.image(modality)
            if check_files:
                check_nifti(path)
        if check_files and case.mask is not None:
            check_nifti(case.mask)
    return cases
