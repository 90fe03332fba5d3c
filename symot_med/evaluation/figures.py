"""Figures of translated volumes: input | translated | ground truth on a few axial slices."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from symot_med.io import atomic_path  # noqa: E402


@dataclass
class FigureRow:
    """One direction's volumes for the figure: NIfTI files of the same subject."""

    title: str
    input_file: Path
    translated_file: Path
    ground_truth_file: Path
    input_modality: str
    output_modality: str


def _ras_array(path: Path) -> np.ndarray:
    """(X, Y, Z) array of ``path`` reoriented to RAS, so axial slices display the same way."""
    return np.asarray(nib.as_closest_canonical(nib.load(str(path))).get_fdata(), dtype=np.float32)


def _display_window(volume: np.ndarray, modality: str) -> tuple[float, float]:
    if modality == "ct":
        return -200.0, 1200.0
    positive = volume[volume > 0]
    if positive.size == 0:
        return 0.0, 1.0
    return 0.0, float(np.percentile(positive, 99.5))


def _axial_slices(volume: np.ndarray, count: int) -> list[int]:
    """``count`` axial indices spread over the middle of the volume's foreground."""
    occupied = np.flatnonzero((volume != volume.min()).reshape(-1, volume.shape[2]).any(axis=0))
    if occupied.size == 0:
        return [volume.shape[2] // 2] * count
    low, high = occupied[0], occupied[-1]
    return [int(round(low + (high - low) * f)) for f in np.linspace(0.35, 0.65, count)]


def translation_figure(rows: list[FigureRow], out_path: str | Path, slices_per_row: int = 2) -> Path:
    """Plot, for each row and each of ``slices_per_row`` axial slices, input | translated | ground truth."""
    n_rows = len(rows) * slices_per_row
    figure, axes = plt.subplots(n_rows, 3, figsize=(7.5, 2.5 * n_rows), squeeze=False)

    for r, row in enumerate(rows):
        volumes = [_ras_array(row.input_file), _ras_array(row.translated_file), _ras_array(row.ground_truth_file)]
        modalities = [row.input_modality, row.output_modality, row.output_modality]
        windows = [_display_window(v, m) for v, m in zip(volumes, modalities)]
        windows[1] = windows[2]  # translated and ground truth share one grey scale

        for s, k in enumerate(_axial_slices(volumes[2], slices_per_row)):
            for c, (volume, (low, high)) in enumerate(zip(volumes, windows)):
                ax = axes[r * slices_per_row + s, c]
                ax.imshow(np.rot90(volume[:, :, k]), cmap="gray", vmin=low, vmax=high)
                ax.set_xticks([])
                ax.set_yticks([])
            axes[r * slices_per_row + s, 0].set_ylabel(f"{row.title}\nz={k}", fontsize=8)

    for c, name in enumerate(["input", "translated", "ground truth"]):
        axes[0, c].set_title(name)
    figure.tight_layout()

    out_path = Path(out_path)
    with atomic_path(out_path) as temporary:
        figure.savefig(temporary, dpi=90)
    plt.close(figure)
    return out_path
