"""Dictionary transforms and the NIfTI writer that the bundles' inference configs use.

- ``NormaliseModalityd`` runs the package's ``NormaliseIntensityd`` (MR: in-mask percentiles,
  CT: [-1024, 3000] HU window) and keeps the image's transform trace, which ``Invertd`` needs.
- ``DenormaliseModalityd`` maps translated [0, 1] volumes back to native units and writes the
  background value outside the mask; CT is rounded and clipped to [-1024, 3000] HU before the
  int16 cast.
- ``NativeSpaceNiftiWriter`` is a MONAI ``ImageWriter`` for ``SaveImaged`` that writes the input
  file's own header (affine, qform and sform codes) instead of a fresh one, atomically.
- ``TranslatedNameFormatter`` names outputs ``<case>_<in>_to_<out>``, so SynthRAD's
  ``<case>/mr.nii.gz`` files do not overwrite each other.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, NibabelWriter
from monai.transforms import MapTransform, Transform
from monai.utils import get_equivalent_dtype

from symot_med import __version__
from symot_med.data.transforms import IntensityScale, NormaliseIntensityd, background_value
from symot_med.inference.translate import cast_output, output_name
from symot_med.io import save_nifti

logger = logging.getLogger(__name__)

# The writer accepts an output whose affine differs from the input file's by at most this much
# (mm, per matrix entry); Invertd recomputes the affine in float64, so it is not bit-identical.
AFFINE_TOLERANCE_MM = 1e-4


class NormaliseModalityd(MapTransform):
    """Normalise ``image`` (1, H, W, D) to [0, 1] with the package's rule for ``modality``.

    Outside ``mask`` the image becomes 0. The scale is stored under ``intensity_low`` and
    ``intensity_high`` (native units). Unlike the package transform, the output keeps the
    input's ``applied_operations``, so that ``Invertd`` can undo the spatial steps before it.
    """

    def __init__(self, modality: str, image_key: str = "image", mask_key: str = "mask") -> None:
        super().__init__(keys=[image_key])
        self.image_key = image_key
        self.normalise = NormaliseIntensityd(modality, image_key=image_key, mask_key=mask_key)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        image = data[self.image_key]
        if not isinstance(image, MetaTensor):
            raise TypeError(f"{self.image_key} must be a MetaTensor from LoadImaged, got {type(image).__name__}")
        trace = list(image.applied_operations)
        out = self.normalise(data)
        out[self.image_key].applied_operations = trace
        return out


class DenormaliseModalityd(MapTransform):
    """Map translated volumes (1, X, Y, Z) in [0, 1] to native units of ``modality``.

    v = low + x (high - low) with ``scale``; voxels where ``mask`` < 0.5 get the modality's
    background (-1000 HU for CT, 0 for MR). CT becomes int16 HU, rounded and clipped to
    [-1024, 3000]; MR stays float32. The affine and metadata are kept.

    Args:
        keys: keys of the volumes to map, on the same grid as ``mask``.
        modality: output modality, ``ct`` or an MR sequence.
        scale: native values that 0 and 1 stand for, for example
            ``TranslationNetwork.output_intensity()``.
        mask_key: key of the foreground mask (1, X, Y, Z) on the same grid.
    """

    def __init__(
        self, keys: KeysCollection, modality: str, scale: IntensityScale, mask_key: str = "mask"
    ) -> None:
        super().__init__(keys)
        if not isinstance(scale, IntensityScale):
            raise TypeError(f"scale must be an IntensityScale, got {type(scale).__name__}")
        self.modality = modality
        self.scale = scale
        self.mask_key = mask_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        mask = _as_numpy(d[self.mask_key]) >= 0.5
        for key in self.key_iterator(d):
            volume = d[key]
            values = _as_numpy(volume)
            if values.shape != mask.shape:
                raise ValueError(
                    f"{key} has shape {values.shape} but {self.mask_key} has {mask.shape}; "
                    "invert both to the input's grid first (Invertd)"
                )
            native = self.scale.denormalise(values.astype(np.float32))
            native[~mask] = background_value(self.modality)
            array = torch.from_numpy(cast_output(native, self.modality))
            d[key] = MetaTensor(array, meta=volume.meta) if isinstance(volume, MetaTensor) else array
        return d


class TranslatedNameFormatter:
    """``output_name_formatter`` for ``SaveImaged``: ``<case>_<in>_to_<out>``.

    The case is the parent folder's name when it is a case folder of a known layout, otherwise
    the file's stem (see ``symot_med.inference.translate.output_name``).
    """

    def __init__(self, input_modality: str, output_modality: str) -> None:
        self.input_modality = input_modality
        self.output_modality = output_modality

    def __call__(self, metadict: Mapping[str, Any], saver: Transform) -> dict[str, Any]:
        source = metadict.get("filename_or_obj")
        if not source:
            raise ValueError("the output has no filename_or_obj metadata; load the input with LoadImaged")
        name = output_name(Path(str(source)), self.input_modality, self.output_modality)
        return {"subject": name.removesuffix(".nii.gz"), "idx": None}


class NativeSpaceNiftiWriter(NibabelWriter):
    """Write NIfTI with the input file's header, shape and affine, through a temporary name.

    MONAI's ``NibabelWriter`` writes a fresh header with qform and sform codes 1. This writer
    loads the input file named in the metadata (``filename_or_obj``), checks that the data has
    its shape and that the affine agrees within ``AFFINE_TOLERANCE_MM``, and writes with
    ``symot_med.io.save_nifti``, which copies the header and the exact affine. An existing file
    of an earlier run is replaced with a warning. Use it with ``resample=False`` after ``Invertd``.
    """

    def set_metadata(self, meta_dict: Mapping | None, resample: bool = True, **options: Any) -> None:
        if not meta_dict or not meta_dict.get("filename_or_obj"):
            raise ValueError("NativeSpaceNiftiWriter needs filename_or_obj metadata naming the input file")
        self.reference_path = Path(str(meta_dict["filename_or_obj"]))
        super().set_metadata(meta_dict, resample=resample, **options)

    def write(self, filename: str | Path, verbose: bool = False, **obj_kwargs: Any) -> None:
        reference = nib.load(str(self.reference_path))
        array = np.asarray(_as_numpy(self.data_obj))
        if self.output_dtype is not None:
            array = array.astype(get_equivalent_dtype(self.output_dtype, np.ndarray), copy=False)
        if tuple(array.shape) != tuple(reference.shape[:3]):
            raise ValueError(
                f"output for {self.reference_path} has shape {array.shape}, the input has "
                f"{reference.shape}; invert the preprocessing (Invertd) before saving"
            )
        affine = np.asarray(_as_numpy(self.affine), dtype=float)
        if not np.allclose(affine, reference.affine, atol=AFFINE_TOLERANCE_MM):
            raise ValueError(
                f"output for {self.reference_path} has affine\n{affine}\nbut the input has\n"
                f"{reference.affine}; invert the preprocessing (Invertd) before saving"
            )
        if Path(filename).exists():
            logger.warning("replacing %s, an output of an earlier run", filename)
        save_nifti(filename, array, reference, f"symot-med {__version__} translation")
        if verbose:
            logger.info("wrote %s", filename)


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)
