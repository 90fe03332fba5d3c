"""Image similarity of a translated volume against its ground truth, inside a mask.

Every function takes NumPy volumes (X, Y, Z) on one grid, and the axial axis is the last one
(Z, as after reorientation to RAS). Scores are floats. The data range is always an explicit
argument, never taken from the data.

Two families:

- SynthRAD2023 CT metrics in Hounsfield units (``synthrad_mae``, ``synthrad_psnr``,
  ``synthrad_ssim``), as the SynthRAD2023 challenge defines them for synthetic CT.
- Metrics on normalised volumes (``masked_ssim``, ``masked_ssim_2d``, ``masked_psnr``), used for
  MR outputs. ``normalise_for_metrics`` first puts each volume on [0, 1]: MR by its own 0.5th
  and 99.5th in-mask percentiles (MR units are arbitrary per scan), CT by the fixed window
  [-1024, 3000] HU. The data range is then 1.

SSIM follows Wang et al., "Image quality assessment: from error visibility to structural
similarity", IEEE TIP 13(4), 2004, with a uniform window and the sample covariance, the
settings of ``skimage.metrics.structural_similarity``'s defaults.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from symot_med.data.transforms import CT_RANGE_HU, intensity_scale, modality_kind

SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_WINDOW = 7

# SynthRAD2023: CT is clipped to this HU range for PSNR and SSIM, whose data range is its width.
SYNTHRAD_HU_RANGE = (-1024.0, 3000.0)
SYNTHRAD_DATA_RANGE = SYNTHRAD_HU_RANGE[1] - SYNTHRAD_HU_RANGE[0]
# The challenge averages the SSIM map inside the mask after dropping this many voxels at every
# face of the volume, where the window extends past the volume.
SYNTHRAD_SSIM_BORDER = 3


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------


def check_data_range(data_range: float | None) -> float:
    """Return ``data_range`` as a float, raising ValueError unless it is finite and positive."""
    if data_range is None:
        raise ValueError(
            "data_range is None; pass the intensity range explicitly (1.0 for volumes normalised "
            "to [0, 1], 4024.0 for CT clipped to [-1024, 3000] HU)"
        )
    try:
        value = float(data_range)
    except (TypeError, ValueError):
        raise ValueError(f"data_range must be a positive number, got {data_range!r}") from None
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"data_range must be a finite positive number, got {data_range!r}")
    return value


def check_finite(array: np.ndarray, name: str) -> None:
    """Raise ValueError naming ``name`` when ``array`` contains NaN or infinite values."""
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} contains NaN or infinite values ({int(bad.sum())} of {array.size}; "
            f"first at index {first}, value {array[first]})"
        )


def check_volumes(ground_truth: np.ndarray, prediction: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Check a ground truth, a prediction and a mask of one shape; return the mask as bool.

    Raises:
        ValueError: on different shapes, NaN or infinite values, or an empty mask; the message
            names the argument and the value.
    """
    ground_truth = np.asarray(ground_truth)
    prediction = np.asarray(prediction)
    if ground_truth.shape != prediction.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from ground_truth shape {ground_truth.shape}")
    if mask is None:
        mask = np.ones(ground_truth.shape, dtype=bool)
    mask = np.asarray(mask)
    if mask.shape != ground_truth.shape:
        raise ValueError(f"mask shape {mask.shape} differs from ground_truth shape {ground_truth.shape}")
    check_finite(ground_truth, "ground_truth")
    check_finite(prediction, "prediction")
    mask = mask.astype(bool) if mask.dtype == bool else mask > 0.5
    if not mask.any():
        raise ValueError(f"mask of shape {mask.shape} is empty; pass a mask with at least one voxel set")
    return mask


# ---------------------------------------------------------------------------------------------
# SSIM map
# ---------------------------------------------------------------------------------------------


def ssim_map(
    x: np.ndarray, y: np.ndarray, data_range: float, win_size: int = SSIM_WINDOW, axes: tuple[int, ...] | None = None
) -> np.ndarray:
    """Return the local SSIM of ``x`` and ``y`` at every voxel.

    SSIM = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2)),
    C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L = ``data_range``. Means, variances and the
    covariance are taken over a uniform window of ``win_size`` voxels along each of ``axes``.
    The default is every axis, and 2D maps of the axial slices of a (X, Y, Z) volume use
    ``axes=(0, 1)``. (Co)variances use the sample normalisation N / (N - 1) with N voxels in the
    window. The filter reflects at the array's faces, so values within ``win_size // 2`` voxels
    of a face include mirrored data.

    Args:
        x, y: arrays of one shape, in the units of ``data_range``.
        data_range: L, the intensity range of the data (for example 1 for [0, 1]).
        win_size: odd window width in voxels.
        axes: axes the window spans; the window is 1 voxel wide along the others.

    Returns:
        float64 array of ``x``'s shape, 1 where the two agree exactly.
    """
    data_range = check_data_range(data_range)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"y shape {y.shape} differs from x shape {x.shape}")
    if win_size < 3 or win_size % 2 == 0:
        raise ValueError(f"win_size must be an odd integer >= 3, got {win_size}")
    axes = tuple(range(x.ndim)) if axes is None else tuple(axes)
    for axis in axes:
        if x.shape[axis] < win_size:
            raise ValueError(f"axis {axis} of shape {x.shape} is shorter than win_size {win_size}")

    size = [win_size if axis in axes else 1 for axis in range(x.ndim)]
    n = win_size ** len(axes)

    def mean(values: np.ndarray) -> np.ndarray:
        return ndimage.uniform_filter(values, size=size, mode="reflect")

    mu_x, mu_y = mean(x), mean(y)
    sample = n / (n - 1.0)
    var_x = sample * (mean(x * x) - mu_x * mu_x)
    var_y = sample * (mean(y * y) - mu_y * mu_y)
    cov_xy = sample * (mean(x * y) - mu_x * mu_y)

    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    numerator = (2.0 * mu_x * mu_y + c1) * (2.0 * cov_xy + c2)
    denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return numerator / denominator


def _bounding_box(mask: np.ndarray, margin: int, axes: tuple[int, ...]) -> tuple[slice, ...]:
    """Return the mask's bounding box grown by ``margin`` voxels along ``axes``, clipped to the array."""
    occupied = np.argwhere(mask)
    lower, upper = occupied.min(axis=0), occupied.max(axis=0) + 1
    box = []
    for axis, (low, high) in enumerate(zip(lower, upper)):
        grow = margin if axis in axes else 0
        box.append(slice(max(int(low) - grow, 0), min(int(high) + grow, mask.shape[axis])))
    return tuple(box)


# ---------------------------------------------------------------------------------------------
# Metrics on normalised volumes (MR)
# ---------------------------------------------------------------------------------------------


def masked_ssim(
    ground_truth: np.ndarray, prediction: np.ndarray, mask: np.ndarray, data_range: float, win_size: int = SSIM_WINDOW
) -> float:
    """3D SSIM: the mean of the 3D ``ssim_map`` over the voxels inside ``mask``.

    The map is computed on the mask's bounding box grown by ``win_size`` voxels, so every masked
    voxel has a window of real data unless the mask reaches the volume's face.

    Args:
        ground_truth, prediction: (X, Y, Z) volumes in the units of ``data_range``.
        mask: (X, Y, Z) boolean mask.
        data_range: intensity range L, for example 1 for normalised volumes.
    """
    mask = check_volumes(ground_truth, prediction, mask)
    data_range = check_data_range(data_range)
    box = _bounding_box(mask, win_size, tuple(range(mask.ndim)))
    local = ssim_map(ground_truth[box], prediction[box], data_range, win_size)
    return float(local[mask[box]].mean())


def masked_ssim_2d(
    ground_truth: np.ndarray,
    prediction: np.ndarray,
    mask: np.ndarray,
    data_range: float,
    win_size: int = SSIM_WINDOW,
    slice_axis: int = -1,
) -> float:
    """2D SSIM per slice: the mean over slices of the in-mask mean of each slice's 2D SSIM map.

    Each slice along ``slice_axis`` that contains mask voxels counts once, whatever its mask area.
    The window spans the two in-plane axes only.

    Args:
        ground_truth, prediction: (X, Y, Z) volumes in the units of ``data_range``.
        mask: (X, Y, Z) boolean mask.
        data_range: intensity range L.
        slice_axis: axis across slices; -1 (Z) gives axial slices of an RAS volume.
    """
    mask = check_volumes(ground_truth, prediction, mask)
    data_range = check_data_range(data_range)
    slice_axis = slice_axis % mask.ndim
    in_plane = tuple(axis for axis in range(mask.ndim) if axis != slice_axis)
    box = _bounding_box(mask, win_size, in_plane)
    local = ssim_map(ground_truth[box], prediction[box], data_range, win_size, axes=in_plane)

    inside = mask[box]
    per_slice_sum = np.sum(local * inside, axis=in_plane)
    per_slice_count = np.sum(inside, axis=in_plane)
    occupied = per_slice_count > 0
    return float(np.mean(per_slice_sum[occupied] / per_slice_count[occupied]))


def masked_psnr(ground_truth: np.ndarray, prediction: np.ndarray, mask: np.ndarray, data_range: float) -> float:
    """PSNR = 10 log10(L^2 / MSE) in dB, with MSE the mean squared error over the voxels inside
    ``mask`` and L = ``data_range``.

    Returns ``inf`` when the volumes agree exactly inside the mask.
    """
    mask = check_volumes(ground_truth, prediction, mask)
    data_range = check_data_range(data_range)
    difference = ground_truth[mask].astype(np.float64) - prediction[mask].astype(np.float64)
    mse = float(np.mean(difference**2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / mse))


def masked_mae(ground_truth: np.ndarray, prediction: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute error over the voxels inside ``mask``, in the volumes' units."""
    mask = check_volumes(ground_truth, prediction, mask)
    difference = ground_truth[mask].astype(np.float64) - prediction[mask].astype(np.float64)
    return float(np.mean(np.abs(difference)))


def normalise_for_metrics(volume: np.ndarray, modality: str, mask: np.ndarray) -> np.ndarray:
    """Scale ``volume`` (native units) to [0, 1] by the module docstring's rule; zero outside ``mask``."""
    mask = np.asarray(mask, dtype=bool)
    check_finite(np.asarray(volume), "volume")
    scale = intensity_scale(modality, volume[mask])
    normalised = scale.normalise(np.asarray(volume, dtype=np.float32))
    normalised[~mask] = 0.0
    return normalised


# ---------------------------------------------------------------------------------------------
# SynthRAD2023 CT metrics
# ---------------------------------------------------------------------------------------------


def synthrad_mae(ct_true: np.ndarray, ct_pred: np.ndarray, mask: np.ndarray) -> float:
    """SynthRAD2023 MAE in HU: mean |ct_true - ct_pred| over the voxels inside ``mask``, no clipping.

    Args:
        ct_true, ct_pred: (X, Y, Z) CT volumes in HU.
        mask: (X, Y, Z) body mask.
    """
    return masked_mae(ct_true, ct_pred, mask)


def synthrad_psnr(ct_true: np.ndarray, ct_pred: np.ndarray, mask: np.ndarray) -> float:
    """SynthRAD2023 PSNR in dB: both volumes clipped to [-1024, 3000] HU, MSE over the voxels
    inside ``mask``, data range 4024 HU. ``inf`` when the clipped volumes agree inside the mask.
    """
    mask = check_volumes(ct_true, ct_pred, mask)
    low, high = SYNTHRAD_HU_RANGE
    return masked_psnr(np.clip(ct_true, low, high), np.clip(ct_pred, low, high), mask, SYNTHRAD_DATA_RANGE)


def synthrad_ssim(ct_true: np.ndarray, ct_pred: np.ndarray, mask: np.ndarray) -> float:
    """SynthRAD2023 SSIM of CT volumes in HU.

    Steps:
        1. Clip both to [-1024, 3000] HU and set voxels outside ``mask`` to -1024.
        2. Add 1024, so values lie in [0, 4024].
        3. Compute the 3D SSIM map (uniform 7-voxel window, data range 4024) over the volume.
        4. Drop 3 voxels at every face and average the map over the mask voxels that remain.

    Args:
        ct_true, ct_pred: (X, Y, Z) CT volumes in HU, each axis at least 7 voxels long.
        mask: (X, Y, Z) body mask.
    """
    mask = check_volumes(ct_true, ct_pred, mask)
    low, high = SYNTHRAD_HU_RANGE
    border = SYNTHRAD_SSIM_BORDER
    for axis, n in enumerate(mask.shape):
        if n < SSIM_WINDOW:
            raise ValueError(f"axis {axis} of shape {mask.shape} is shorter than the {SSIM_WINDOW}-voxel SSIM window")
    averaged = np.zeros(mask.shape, dtype=bool)
    inner = tuple(slice(border, n - border) for n in mask.shape)
    averaged[inner] = mask[inner]
    if not averaged.any():
        raise ValueError(f"mask has no voxels more than {border} voxels inside the volume's faces")

    # Outside the mask both volumes are 0 after the shift. The map at an averaged voxel therefore
    # only depends on the box around the mask grown by the window. The box reaches a face only
    # where the volume does, so the map on the box equals the map on the whole volume there.
    box = _bounding_box(averaged, SSIM_WINDOW, tuple(range(mask.ndim)))
    shifted = []
    for volume in (ct_true, ct_pred):
        clipped = np.clip(np.asarray(volume[box], dtype=np.float64), low, high)
        clipped[~mask[box]] = low
        shifted.append(clipped - low)

    local = ssim_map(shifted[0], shifted[1], SYNTHRAD_DATA_RANGE, SSIM_WINDOW)
    return float(local[averaged[box]].mean())


# ---------------------------------------------------------------------------------------------
# Scores of one translated volume
# ---------------------------------------------------------------------------------------------


def score_volume(
    ground_truth: np.ndarray,
    prediction: np.ndarray,
    mask: np.ndarray,
    modality: str,
    prediction_modality: str | None = None,
) -> dict:
    """3D SSIM and PSNR (dB) of ``prediction`` against ``ground_truth`` inside ``mask``.

    Each volume, in native units, is put on [0, 1] by ``normalise_for_metrics`` with its own
    modality's rule: ``modality`` for the ground truth and ``prediction_modality`` (default:
    the same) for the prediction. Scoring an input volume as if it were the output (the
    identity baseline) passes the input's modality there. Data range 1, 3D.
    """
    truth = normalise_for_metrics(ground_truth, modality, mask)
    predicted = normalise_for_metrics(prediction, prediction_modality or modality, mask)
    return {
        "ssim": masked_ssim(truth, predicted, mask, data_range=1.0),
        "psnr": masked_psnr(truth, predicted, mask, data_range=1.0),
    }


def score_translation(
    ground_truth: np.ndarray,
    prediction: np.ndarray,
    mask: np.ndarray,
    modality: str,
    prediction_modality: str | None = None,
) -> dict[str, float]:
    """Score one translated volume by the output modality's rules.

    Every output gets ``ssim_2d`` (axial 2D SSIM per slice, normalised volumes, data range 1).
    A CT output (``modality`` is CT) gets the SynthRAD2023 metrics: ``ssim_3d`` and ``psnr``
    as ``synthrad_ssim`` and ``synthrad_psnr``, and ``mae_hu``. An MR output gets ``ssim_3d``
    and ``psnr`` on the normalised volumes (3D, data range 1).

    Args:
        ground_truth, prediction: (X, Y, Z) volumes in native units on one grid, axial axis last.
        mask: (X, Y, Z) brain or body mask.
        modality: the ground truth's modality.
        prediction_modality: the prediction's modality when it differs (the identity baseline
            scores the input volume), which selects its normalisation.
    """
    mask = check_volumes(ground_truth, prediction, mask)
    prediction_modality = prediction_modality or modality
    truth = normalise_for_metrics(ground_truth, modality, mask)
    predicted = normalise_for_metrics(prediction, prediction_modality, mask)
    scores = {"ssim_2d": masked_ssim_2d(truth, predicted, mask, data_range=1.0)}

    if modality_kind(modality) == "ct":
        # An MR input scored as CT (identity) is first put on the HU scale of the CT window.
        if modality_kind(prediction_modality) == "ct":
            prediction_hu = np.asarray(prediction, dtype=np.float64)
        else:
            low, high = CT_RANGE_HU
            prediction_hu = low + predicted.astype(np.float64) * (high - low)
        scores["ssim_3d"] = synthrad_ssim(ground_truth, prediction_hu, mask)
        scores["psnr"] = synthrad_psnr(ground_truth, prediction_hu, mask)
        scores["mae_hu"] = synthrad_mae(ground_truth, prediction_hu, mask)
    else:
        scores["ssim_3d"] = masked_ssim(truth, predicted, mask, data_range=1.0)
        scores["psnr"] = masked_psnr(truth, predicted, mask, data_range=1.0)
    return scores
