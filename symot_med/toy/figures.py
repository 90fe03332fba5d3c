"""Figures of the toy run: learned maps like SyMOT-Flow's Figs. 2 and 3, and the beta sweep (Fig. 4)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402

from symot_med.toy.methods import METHOD_TITLES  # noqa: E402

logger = logging.getLogger(__name__)

SOURCE_COLOUR = "tab:blue"
MAPPED_COLOUR = "tab:orange"
LINK_COLOUR = "tab:green"


def plot_pair_maps(
    x: np.ndarray,
    z: np.ndarray,
    maps: dict[str, tuple[np.ndarray, np.ndarray]],
    path: Path,
    title: str,
    max_links: int = 2000,
) -> Path:
    """Draw each method's forward and backward map of one pair and save a PNG.

    Row 1 shows x (blue), T(x) (orange) and a green segment from each x_i to T(x_i); row 2
    shows z, T^-1(z) and their segments. The first column shows the training data alone:
    x in blue and z in orange on row 1, the reverse on row 2.

    Args:
        x: (N, 2) source points.
        z: (M, 2) target points.
        maps: method name -> ((N, 2) T(x), (M, 2) T^-1(z)), drawn in this order.
        path: PNG file to write.
        title: figure title.
        max_links: segments drawn per panel, for the first ``max_links`` points.

    Returns:
        ``path``.
    """
    columns = 1 + len(maps)
    figure, axes = plt.subplots(2, columns, figsize=(2.6 * columns, 5.4), squeeze=False)
    everything = np.concatenate([x, z] + [array for pair in maps.values() for array in pair])
    low, high = np.percentile(everything, [0.5, 99.5], axis=0)
    margin = 0.08 * (high - low)

    _scatter(axes[0, 0], x, SOURCE_COLOUR)
    _scatter(axes[0, 0], z, MAPPED_COLOUR)
    _scatter(axes[1, 0], z, SOURCE_COLOUR)
    _scatter(axes[1, 0], x, MAPPED_COLOUR)
    axes[0, 0].set_title("Training data")
    axes[0, 0].set_ylabel("forward: x -> T(x)")
    axes[1, 0].set_ylabel("backward: z -> T^-1(z)")

    for column, (method, (t_x, t_inv_z)) in enumerate(maps.items(), start=1):
        axes[0, column].set_title(METHOD_TITLES.get(method, method))
        _draw_map(axes[0, column], x, t_x, max_links)
        _draw_map(axes[1, column], z, t_inv_z, max_links)

    for axis in axes.ravel():
        axis.set_xlim(low[0] - margin[0], high[0] + margin[0])
        axis.set_ylim(low[1] - margin[1], high[1] + margin[1])
        axis.set_aspect("equal")
        axis.tick_params(labelsize=6)
    figure.suptitle(title)
    return _save(figure, path)


def plot_beta_sweep(
    betas: Sequence[float],
    costs: Sequence[float],
    mmds: Sequence[float],
    totals: Sequence[float],
    path: Path,
    title: str,
) -> Path:
    """Plot OT cost (red), MMD (blue) and total loss (green) against beta on log-log axes.

    Args:
        betas: transport-cost weights, positive.
        costs: transport cost of the learned map per beta (squared length units).
        mmds: report MMD^2 per beta.
        totals: MMD^2 terms plus beta times the cost terms, per beta.
        path: PNG file to write.
        title: figure title.
    """
    figure, axis = plt.subplots(figsize=(6.0, 4.0))
    axis.plot(betas, costs, "o-", color="tab:red", label="OT cost (forward + backward) / 2")
    axis.plot(betas, mmds, "s-", color="tab:blue", label="MMD^2 (forward + backward) / 2")
    axis.plot(betas, totals, "^-", color="tab:green", label="total: MMD^2 terms + beta x cost terms")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("beta")
    axis.grid(True, which="major", alpha=0.3)
    axis.legend(fontsize=8)
    axis.set_title(title)
    return _save(figure, path)


def _save(figure, path: Path) -> Path:
    """Write ``figure`` as a PNG at ``path``, close it and return ``path``."""
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    logger.info("wrote %s", path)
    return path


def _scatter(axis, points: np.ndarray, colour: str) -> None:
    axis.scatter(points[:, 0], points[:, 1], s=1.5, color=colour, linewidths=0, alpha=0.7)


def _draw_map(axis, start: np.ndarray, end: np.ndarray, max_links: int) -> None:
    count = min(max_links, len(start))
    segments = np.stack([start[:count], end[:count]], axis=1)  # (count, 2 ends, 2 coordinates)
    axis.add_collection(LineCollection(segments, colors=LINK_COLOUR, linewidths=0.2, alpha=0.25))
    _scatter(axis, start, SOURCE_COLOUR)
    _scatter(axis, end, MAPPED_COLOUR)
