"""Image similarity inside a mask: SSIM and PSNR on normalised 3D volumes.

Volumes are first put on a common [0, 1] scale (``normalise_for_metrics``): MR by its own 0.5th
and 99.5th in-mask percentiles (MR units are arbitrary per scan), CT by the fixed window
[-1024, 3000] HU. Both metrics then use data range 1 and are computed in 3D.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity

from symot_med.data.transforms import intensity_scale


def _check_pair(ground_truth: np.ndarray, prediction: np.ndarray, mask: np.ndarray) -> None:
    if ground_truth.shape != prediction.shape:
        raise ValueError(f"ground_truth shape {ground_truth.shape} differs from prediction shape {prediction.shape}")
    if mask.shape != ground_truth.shape:
        raise ValueError(f"mask shape {mask.shape} differs from ground_truth shape {ground_truth.shape}")
    for name, array in (("ground_truth", ground_truth), ("prediction", prediction)):
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name} contains NaN or infinite values")
    if not mask.any():
        raise ValueError("mask is empty")


def normalise_for_metrics(volume: np.ndarray, modality: str, mask: np.ndarray) -> np.ndarray:
    """Scale ``volume`` (native units) to [0, 1] as the module docstring says; zero outside ``mask``."""
    scale = intensity_scale(modality, volume[mask])
    normalised = scale.normalise(volume.astype(np.float32))
    normalised[~mask] = 0.0
    return normalised


def masked_psnr(ground_truth: np.ndarray, prediction: np.ndarray, mask: np.ndarray, data_range: float) -> float:
    """PSNR = 10 log10(data_range^2 / MSE) over the voxels inside ``mask``, in dB.

    Returns ``inf`` when the volumes agree exactly inside the mask.
    """
    _check_pair(ground_truth, prediction, mask)
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    mse = float(np.mean((ground_truth[mask].astype(np.float64) - prediction[mask]) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / mse))


def masked_ssim(
    ground_truth: np.ndarray, prediction: np.ndarray, mask: np.ndarray, data_range: float, win_size: int = 7
) -> float:
    """Mean of the SSIM map (Wang et al. 2004; skimage's uniform ``win_size``-voxel window,
    K1 = 0.01, K2 = 0.03) over the voxels inside ``mask``.

    The map is computed on the mask's bounding box grown by ``win_size`` voxels, so every masked
    voxel has a full window.
    """
    _check_pair(ground_truth, prediction, mask)
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range}")

    lower = np.maximum(np.argwhere(mask).min(axis=0) - win_size, 0)
    upper = np.minimum(np.argwhere(mask).max(axis=0) + win_size + 1, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(lower, upper))
    _, ssim_map = structural_similarity(
        ground_truth[box].astype(np.float64),
        prediction[box].astype(np.float64),
        data_range=data_range,
        win_size=win_size,
        full=True,
    )
    return float(ssim_map[mask[box]].mean())


def score_volume(
    ground_truth: np.ndarray,
    prediction: np.ndarray,
    mask: np.ndarray,
    modality: str,
    prediction_modality: str | None = None,
) -> dict:
    """SSIM and PSNR (dB) of ``prediction`` against ``ground_truth`` inside ``mask``.

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
