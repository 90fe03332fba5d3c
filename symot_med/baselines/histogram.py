"""Histogram matching: the trivial learned floor of the comparison.

A monotone intensity map fitted on the training slices: the input modality's foreground
quantiles are mapped to the output modality's, q_in(p) -> q_out(p) for p in [0, 1], with linear
interpolation between quantiles. Background (value 0 in normalised slices) stays 0. It changes
the histogram only, not the image's structure, so a translation method that does not beat it
has not learned a contrast mapping.
"""

from __future__ import annotations

import numpy as np

QUANTILE_LEVELS = 1001


def foreground_quantiles(slices: np.ndarray, levels: int = QUANTILE_LEVELS) -> np.ndarray:
    """Quantiles at ``levels`` evenly spaced probabilities of the values > 0 of normalised slices.

    Args:
        slices: (N, 1, H, W) normalised slices, zero outside the mask.

    Returns:
        (levels,) non-decreasing float64 array.
    """
    values = np.asarray(slices, dtype=np.float64)
    foreground = values[values > 0]
    if foreground.size == 0:
        raise ValueError(f"slices of shape {values.shape} have no value above 0 to fit a histogram to")
    return np.quantile(foreground, np.linspace(0.0, 1.0, levels))


def match_histogram(slices: np.ndarray, input_quantiles: np.ndarray, output_quantiles: np.ndarray) -> np.ndarray:
    """Map the values > 0 of ``slices`` through input quantile -> output quantile; zeros stay 0.

    Args:
        slices: (B, 1, H, W) normalised slices of the input modality.
        input_quantiles, output_quantiles: (L,) quantiles from ``foreground_quantiles``.

    Returns:
        (B, 1, H, W) float32 slices in the output modality's normalised range.
    """
    if input_quantiles.shape != output_quantiles.shape:
        raise ValueError(
            f"output_quantiles shape {output_quantiles.shape} differs from input_quantiles shape {input_quantiles.shape}"
        )
    values = np.asarray(slices, dtype=np.float64)
    mapped = np.interp(values, input_quantiles, output_quantiles)
    return np.where(values > 0, mapped, 0.0).astype(np.float32)
