"""MONAI preprocessing of one 3D volume and its exact geometric inverse.

Preprocessing: load (nibabel reader, so the affine is the file's own), channel first, orient to
RAS, resample to the profile's spacing, build the foreground mask (the mask file, or a threshold
when there is none), crop to the mask's bounding box, then crop or pad in-plane to the profile's
slice size, and normalise intensities:

- MR: (v - p_low) / (p_high - p_low) with the 0.5th and 99.5th percentiles inside the mask,
  clipped to [0, 1], zero outside the mask.
- CT: clip to [-1024, 3000] HU and scale to [0, 1].

The result records the native grid (shape, affine), the preprocessed grid (shape, affine) and
the intensity scale, which is all ``to_native`` needs to put a preprocessed-space volume back on
the input's grid.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import ImageReader, MetaTensor
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    LoadImaged,
    MapTransform,
    Orientationd,
    ResizeWithPadOrCrop,
    ResizeWithPadOrCropd,
    SpatialResample,
    Spacingd,
)
from scipy import ndimage

from symot_med.config import Profile
from symot_med.data.layouts import LayoutError, check_nifti

logger = logging.getLogger(__name__)

CT_RANGE_HU = (-1024.0, 3000.0)
MR_PERCENTILES = (0.5, 99.5)
CT_MODALITIES = frozenset({"ct"})
CROP_MARGIN_VOXELS = 2

# Resampled grids above this many voxels (1 GiB per float32 copy) most likely come from a wrong
# voxel size in the header. A 500 x 500 x 300 mm pelvis CT at 1 mm is 75 million voxels.
MAX_RESAMPLED_VOXELS = 2**28


def modality_kind(modality: str) -> str:
    """Return ``ct`` for CT and ``mr`` for every MR sequence."""
    return "ct" if modality in CT_MODALITIES else "mr"


def background_value(modality: str) -> float:
    """Native-unit value written outside the body: -1000 HU (air) for CT, 0 for MR."""
    return -1000.0 if modality_kind(modality) == "ct" else 0.0


@dataclass
class IntensityScale:
    """Linear map between native units and normalised [0, 1] units: v = low + x (high - low)."""

    low: float
    high: float

    def normalise(self, values: np.ndarray) -> np.ndarray:
        return np.clip((values - self.low) / (self.high - self.low), 0.0, 1.0).astype(np.float32)

    def denormalise(self, values: np.ndarray) -> np.ndarray:
        return (self.low + values * (self.high - self.low)).astype(np.float32)


def mr_scale(values: np.ndarray) -> IntensityScale:
    """Robust MR scale from the 0.5th and 99.5th percentiles of in-mask ``values``."""
    if values.size == 0:
        raise ValueError(
            "cannot scale an MR volume with an empty mask: the mask file has no voxel above zero, or, without a "
            "mask file, no voxel passes the automatic threshold. A tiny voxel size in the header can also leave only "
            "a few voxels after resampling. Check the image and its voxel size in the header, pass a mask that marks "
            "the head (the data set's mask file, or --mask of `symot-med translate`), or remove the case from the "
            "data folder"
        )
    low, high = np.percentile(values, MR_PERCENTILES)
    if high <= low:
        high = low + 1.0
    return IntensityScale(float(low), float(high))


def intensity_scale(modality: str, values: np.ndarray) -> IntensityScale:
    """Scale for ``modality``: fixed HU window for CT, in-mask percentiles for MR."""
    if modality_kind(modality) == "ct":
        return IntensityScale(*CT_RANGE_HU)
    return mr_scale(values)


def threshold_mask(volume: np.ndarray, modality: str) -> np.ndarray:
    """Foreground of a volume without a mask file: body above -500 HU for CT; for MR, voxels
    above 5 % of the 99th percentile of non-zero voxels. A binary opening removes specks (in
    3D, leaving out axes of fewer than 3 voxels), and holes are filled slice by slice.

    Args:
        volume: (H, W, D) array in native units.

    Returns:
        (H, W, D) boolean mask.
    """
    if modality_kind(modality) == "ct":
        mask = volume > -500.0
    else:
        positive = volume[volume > 0]
        if positive.size == 0:
            return np.zeros(volume.shape, dtype=bool)
        mask = volume > 0.05 * np.percentile(positive, 99)

    structure = ndimage.generate_binary_structure(3, 1)
    for axis, size in enumerate(mask.shape):
        if size < 3:
            # Erosion treats voxels beyond the volume as background, so opening along an axis
            # of one or two voxels would empty the mask. The opening skips such axes.
            structure = np.moveaxis(structure, axis, 0)
            structure[[0, 2]] = False
            structure = np.moveaxis(structure, 0, axis)
    mask = ndimage.binary_opening(mask, structure=structure, iterations=1)
    for k in range(mask.shape[2]):
        mask[:, :, k] = ndimage.binary_fill_holes(mask[:, :, k])
    return mask


class LoadNiftid(LoadImaged):
    """``LoadImaged`` with the nibabel reader whose read errors name the file.

    A file that cannot be read (truncated, corrupt gzip stream) raises ValueError
    ``cannot read <path>: <cause>; replace or remove the file``, where MONAI 1.6's own error
    names neither the file nor the key. Only ``image_only=True`` is supported, so the loaded value
    is a MetaTensor that carries its metadata.
    """

    def __init__(self, keys: KeysCollection, reader: str = "NibabelReader", image_only: bool = True, **kwargs: Any) -> None:
        if not image_only:
            raise ValueError("LoadNiftid supports image_only=True only; use LoadImaged for separate metadata dictionaries")
        super().__init__(keys, reader=reader, image_only=True, **kwargs)

    def __call__(self, data: Mapping[Hashable, Any], reader: ImageReader | None = None) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            try:
                d[key] = self._loader(d[key], reader)
            except Exception as error:  # nibabel, gzip and zlib raise several types for a damaged file
                raise ValueError(f"cannot read {d[key]}: {error}; replace or remove the file") from error
        return d


class ForegroundMaskd(MapTransform):
    """Add ``mask`` (1, H, W, D) from the mask file when loaded, else from ``threshold_mask``."""

    def __init__(self, modality: str, image_key: str = "image", mask_key: str = "mask") -> None:
        super().__init__(keys=[image_key])
        self.modality = modality
        self.image_key = image_key
        self.mask_key = mask_key

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        image = d[self.image_key]
        if self.mask_key in d:
            d[self.mask_key] = (d[self.mask_key] > 0).to(torch.float32)
            return d

        mask = threshold_mask(image[0].numpy(), self.modality)
        d[self.mask_key] = MetaTensor(torch.from_numpy(mask[None].astype(np.float32)), meta=image.meta)
        return d


class WarnCroppedForegroundd(MapTransform):
    """Transform that logs a warning when the crop to the profile's slice cuts off foreground.

    Placed just before ``ResizeWithPadOrCropd``, it applies the same crop to a copy of ``mask``
    (1, X, Y, Z) and compares the foreground voxels before and after. A translation leaves the
    cut-off part at background. At most ``max_warnings`` warnings are logged per process, so a
    data set of large heads does not repeat one per file, and a long-lived process (a notebook)
    stops showing them after the fifth.
    """

    max_warnings = 5
    warnings_logged = 0

    def __init__(self, slice_size: tuple[int, int], image_key: str = "image", mask_key: str = "mask") -> None:
        super().__init__(keys=[image_key])
        self.slice_size = slice_size
        self.image_key = image_key
        self.mask_key = mask_key
        self.crop = ResizeWithPadOrCrop(spatial_size=(slice_size[0], slice_size[1], -1))

    def __call__(self, data: dict) -> dict:
        mask = data[self.mask_key]
        plain_mask = mask.as_tensor() if isinstance(mask, MetaTensor) else torch.as_tensor(mask)
        before = int((plain_mask > 0.5).sum())
        after = int((self.crop(plain_mask) > 0.5).sum())
        if after >= before or WarnCroppedForegroundd.warnings_logged >= self.max_warnings:
            return data

        occupied = plain_mask[0].numpy() > 0.5
        extent = []
        for other_axes in ((1, 2), (0, 2)):
            indices = np.flatnonzero(occupied.any(axis=other_axes))
            extent.append(int(indices[-1] - indices[0]) + 1)

        image = data[self.image_key]
        spacing, source = None, "the input"
        if isinstance(image, MetaTensor):
            spacing = [float(v) for v in image.pixdim[:2]]
            source = image.meta.get("filename_or_obj", source)

        WarnCroppedForegroundd.warnings_logged += 1
        last = ""
        if WarnCroppedForegroundd.warnings_logged == self.max_warnings:
            last = " Further crop warnings in this process are not shown."
        logger.warning(
            "%s: cropping to the profile's slice of %s leaves out %d of %d foreground voxels (%.2g %%). The "
            "foreground spans %s in the axial plane, and the crop keeps the centre of its bounding box plus a "
            "%d-voxel margin. The slices lack the part left out, and a translation leaves it at background. If "
            "the head is not that large, check the voxel size in the file's header.%s",
            source, _voxels_and_mm(self.slice_size, spacing), before - after, before,
            100 * (before - after) / before, _voxels_and_mm(extent, spacing), CROP_MARGIN_VOXELS, last,
        )
        return data


def _voxels_and_mm(size: list[int] | tuple[int, int], spacing: list[float] | None) -> str:
    """Format an in-plane size as "H x W voxels (h x w mm)", without mm when the spacing is unknown."""
    text = f"{size[0]} x {size[1]} voxels"
    if spacing is not None:
        text += f" ({size[0] * spacing[0]:.0f} x {size[1] * spacing[1]:.0f} mm)"
    return text


class NormaliseIntensityd(MapTransform):
    """Scale ``image`` to [0, 1] per modality (see module docstring) and zero it outside ``mask``.

    Stores the scale under ``intensity_low`` and ``intensity_high`` so it can be undone.
    """

    def __init__(self, modality: str, image_key: str = "image", mask_key: str = "mask") -> None:
        super().__init__(keys=[image_key])
        self.modality = modality
        self.image_key = image_key
        self.mask_key = mask_key

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        image = d[self.image_key]
        mask = d[self.mask_key][0].numpy() > 0.5
        values = image[0].numpy()

        scale = intensity_scale(self.modality, values[mask])
        normalised = scale.normalise(values)
        normalised[~mask] = 0.0

        d[self.image_key] = MetaTensor(torch.from_numpy(normalised[None]), meta=image.meta)
        d["intensity_low"] = scale.low
        d["intensity_high"] = scale.high
        return d


def build_preprocessing(modality: str, profile: Profile, with_mask_file: bool) -> Compose:
    """MONAI pipeline from file paths {"image", optional "mask"} to RAS, resampled, cropped,
    normalised tensors (1, H, W, D) with H, W = ``profile.slice_size``."""
    keys = ["image", "mask"] if with_mask_file else ["image"]
    all_keys = ["image", "mask"]
    height, width = profile.slice_size

    return Compose(
        [
            LoadNiftid(keys=keys, dtype=np.float32),
            EnsureChannelFirstd(keys=keys, channel_dim="no_channel"),
            ForegroundMaskd(modality),
            Orientationd(keys=all_keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            Spacingd(keys=all_keys, pixdim=profile.spacing, mode=["bilinear", "nearest"], padding_mode="zeros"),
            CropForegroundd(keys=all_keys, source_key="mask", margin=CROP_MARGIN_VOXELS, allow_smaller=True),
            WarnCroppedForegroundd(profile.slice_size),
            ResizeWithPadOrCropd(keys=all_keys, spatial_size=(height, width, -1)),
            NormaliseIntensityd(modality),
        ]
    )


@dataclass
class GridRecord:
    """Record of the preprocessing of one volume, enough to undo it.

    Attributes:
        modality: canonical modality of the volume.
        native_shape: (X, Y, Z) shape of the input file.
        native_affine: 4x4 voxel-to-world (RAS, mm) matrix of the input file.
        preprocessed_shape: (H, W, D) shape after preprocessing.
        preprocessed_affine: 4x4 voxel-to-world matrix of the preprocessed grid.
        intensity_low: native value mapped to 0 by the normalisation.
        intensity_high: native value mapped to 1 by the normalisation.
    """

    modality: str
    native_shape: list[int]
    native_affine: list[list[float]]
    preprocessed_shape: list[int]
    preprocessed_affine: list[list[float]]
    intensity_low: float
    intensity_high: float

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GridRecord":
        return cls(**d)


@dataclass
class PreprocessedVolume:
    """A preprocessed volume: ``image`` and ``mask`` are (H, W, D) float32 arrays in RAS order,
    the image normalised to [0, 1]; ``record`` stores how to undo it."""

    image: np.ndarray
    mask: np.ndarray
    record: GridRecord


MASK_HINT = "pass a NIfTI mask on the input image's voxel grid (non-zero inside), or leave the mask out"


def check_resampled_size(path: Path, image: nib.spatialimages.SpatialImage, profile: Profile) -> None:
    """Raise ValueError naming ``path`` when the header's affine is degenerate, or when resampling
    to the profile's spacing would give a huge grid.

    The resampled shape is estimated as the field of view (shape times the voxel size, the
    column norms of the affine, in mm) over the profile's spacing, before any memory is taken.
    """
    shape = np.asarray(image.shape[:3], dtype=float)
    affine = np.asarray(image.affine, dtype=float)
    linear = affine[:3, :3]
    voxel_mm = np.linalg.norm(linear, axis=0)
    if not np.isfinite(affine[:3]).all() or np.linalg.matrix_rank(linear) < 3:
        raise ValueError(
            f"{path}: the affine in the header is degenerate (NaN or infinite entries, or a rotation and scaling "
            f"part that is not invertible; voxel axes of {_dims(voxel_mm)} mm), so the voxels have no position in "
            "space. Fix the sform or qform (and pixdim) in the file's header."
        )
    resampled = np.ceil(shape * voxel_mm / np.asarray(profile.spacing, dtype=float))
    if np.prod(resampled) > MAX_RESAMPLED_VOXELS:
        raise ValueError(
            f"{path}: {_dims(shape)} voxels of {_dims(voxel_mm)} mm would resample to {_dims(resampled)} voxels "
            f"at the profile's {_dims(profile.spacing)} mm, more than {MAX_RESAMPLED_VOXELS}. Check the voxel "
            "size in the file's header (pixdim and the affine), or crop the volume."
        )


def _dims(values) -> str:
    """Format a shape or a voxel size as "A x B x C", without trailing zeros."""
    return " x ".join(f"{float(v):g}" for v in values)


def check_finite(path: Path, image: nib.spatialimages.SpatialImage, strict: bool = False) -> np.ndarray | None:
    """Raise ValueError naming ``path`` and the count when any voxel is NaN or infinite.

    Such voxels would spread through resampling and normalisation into the whole slice, so
    they are rejected before any work. Scaled integer files can hold them too, because
    nibabel applies ``scl_slope`` in floating point.

    Args:
        path: the file, for the message.
        image: the loaded image.
        strict: raise ValueError naming ``path`` when its data cannot be read (corrupt gzip
            stream). Otherwise such a file passes, and the preprocessing reports it.

    Returns:
        The voxel values in native units, or None when they could not be read.
    """
    try:
        values = np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel and zlib raise several types for corrupt data
        if strict:
            raise ValueError(f"cannot read {path} ({error}); replace or remove the file") from None
        return None
    if not np.issubdtype(values.dtype, np.floating):
        return values
    bad = int(values.size - np.count_nonzero(np.isfinite(values)))
    if bad:
        raise ValueError(
            f"{path} has {bad} of {values.size} voxels that are NaN or infinite; replace them, for example "
            "with the background value, and run again"
        )
    return values


def check_same_grid(mask_path: Path, image: nib.spatialimages.SpatialImage, image_path: Path) -> None:
    """Raise ValueError naming both files unless the mask has the image's voxel grid (shape and affine)."""
    mask = nib.load(str(mask_path))
    same_shape = tuple(mask.shape[:3]) == tuple(image.shape[:3])
    if not same_shape or not np.allclose(mask.affine, image.affine, atol=1e-3):
        raise ValueError(
            f"mask {mask_path} (shape {tuple(mask.shape)}) is not on the voxel grid of {image_path} "
            f"(shape {tuple(image.shape)}): shapes or affines differ; pass the mask made for this volume"
        )


def preprocess_volume(
    image_path: str | Path, modality: str, profile: Profile, mask_path: str | Path | None = None
) -> PreprocessedVolume:
    """Run the MONAI preprocessing on one file and return the arrays and the undo record."""
    image_path = Path(image_path)
    check_nifti(image_path)
    data = {"image": str(image_path)}
    native = nib.load(str(image_path))
    check_resampled_size(image_path, native, profile)
    check_finite(image_path, native)
    if mask_path is not None:
        check_nifti(Path(mask_path), MASK_HINT)
        check_same_grid(Path(mask_path), native, image_path)
        data["mask"] = str(mask_path)

    pipeline = build_preprocessing(modality, profile, with_mask_file=mask_path is not None)
    try:
        out = pipeline(data)
    except LayoutError:
        raise
    except Exception as error:  # MONAI wraps errors of its transforms in RuntimeError
        cause = error.__cause__ or error
        raise ValueError(f"preprocessing {image_path} failed: {cause}") from error

    image = out["image"]
    record = GridRecord(
        modality=modality,
        native_shape=[int(n) for n in native.shape],
        native_affine=np.asarray(native.affine, dtype=float).tolist(),
        preprocessed_shape=[int(n) for n in image.shape[1:]],
        preprocessed_affine=np.asarray(image.affine, dtype=float).tolist(),
        intensity_low=float(out["intensity_low"]),
        intensity_high=float(out["intensity_high"]),
    )
    return PreprocessedVolume(
        image=image[0].numpy().astype(np.float32),
        mask=(out["mask"][0].numpy() > 0.5).astype(np.float32),
        record=record,
    )


def to_native(volume: np.ndarray, record: GridRecord, fill: float = 0.0, mode: str = "bilinear") -> np.ndarray:
    """Resample a volume on the preprocessed grid back onto the input file's grid.

    Args:
        volume: (H, W, D) array on the grid ``record.preprocessed_*`` describes.
        record: the GridRecord of the input volume.
        fill: value for native voxels outside the preprocessed field of view.
        mode: ``bilinear`` for intensities, ``nearest`` for masks.

    Returns:
        (X, Y, Z) float32 array on the grid of ``record.native_*``.
    """
    expected = tuple(record.preprocessed_shape)
    if tuple(volume.shape) != expected:
        raise ValueError(f"volume has shape {tuple(volume.shape)}; the record expects {expected}")

    source = MetaTensor(
        torch.from_numpy(np.asarray(volume, dtype=np.float32) - fill)[None],
        affine=torch.tensor(record.preprocessed_affine, dtype=torch.float64),
    )
    resample = SpatialResample(mode=mode, padding_mode="zeros", align_corners=True, dtype=torch.float64)
    out = resample(
        source,
        dst_affine=torch.tensor(record.native_affine, dtype=torch.float64),
        spatial_size=record.native_shape,
    )
    return (np.asarray(out[0].numpy(), dtype=np.float32) + fill).astype(np.float32)
