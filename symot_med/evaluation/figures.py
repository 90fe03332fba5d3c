"""Figures of translated volumes: input | translated | ground truth on a few axial slices, the
method comparison with difference maps, and autoencoder reconstructions."""

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


def _save_figure(figure, out_path: str | Path) -> Path:
    """Write ``figure`` to ``out_path`` atomically at 90 dpi, close it and return the path."""
    out_path = Path(out_path)
    with atomic_path(out_path) as temporary:
        figure.savefig(temporary, dpi=90)
    plt.close(figure)
    return out_path


# Upper end of the colour scale of reconstruction differences, in normalised units.
RECONSTRUCTION_DIFFERENCE_MAX = 0.2


def reconstruction_figure(rows: list[tuple[str, np.ndarray, np.ndarray]], out_path: str | Path) -> Path:
    """Plot, per row, slice | reconstruction | |reconstruction - slice|.

    Args:
        rows: ``(title, slice, reconstruction)`` with (H, W) arrays in normalised units (about
            [0, 1]). Slices and reconstructions share the grey scale [0, 1]; differences use
            [0, ``RECONSTRUCTION_DIFFERENCE_MAX``].
        out_path: PNG file, written atomically.
    """
    figure, axes = plt.subplots(len(rows), 3, figsize=(7.5, 2.5 * len(rows)), squeeze=False)

    for r, (title, image, reconstruction) in enumerate(rows):
        panels = [
            (image, "gray", 1.0),
            (reconstruction, "gray", 1.0),
            (np.abs(reconstruction - image), "magma", RECONSTRUCTION_DIFFERENCE_MAX),
        ]
        for c, (panel, colours, high) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(np.rot90(panel), cmap=colours, vmin=0.0, vmax=high)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(title, fontsize=8)

    for c, name in enumerate(["held-out slice", "reconstruction", f"|difference| (0 to {RECONSTRUCTION_DIFFERENCE_MAX:g})"]):
        axes[0, c].set_title(name, fontsize=10)
    figure.tight_layout()

    return _save_figure(figure, out_path)


@dataclass
class ComparisonRow:
    """One direction of the comparison figure: normalised (X, Y, Z) RAS volumes of one subject.

    Attributes:
        title: row label, for example ``T1 -> T2 BraTS2021_00002``.
        input: the input volume.
        ground_truth: the ground truth of the output modality.
        outputs: method label -> that method's output.
        mask: boolean scoring mask; it picks the slice and the crop.
        output_modality: selects the display window of the outputs (CT shows about -200 to 1200 HU).
        input_modality: selects the display window of the input.
    """

    title: str
    input: np.ndarray
    ground_truth: np.ndarray
    outputs: dict[str, np.ndarray]
    mask: np.ndarray
    output_modality: str
    input_modality: str = "mr"


# Display windows of normalised volumes. On the CT scale [-1024, 3000] HU -> [0, 1], -200 and
# 1200 HU are 0.205 and 0.553.
NORMALISED_WINDOWS = {"ct": (0.205, 0.553), "mr": (0.0, 1.0)}
DIFFERENCE_MAX = 0.5


def comparison_figure(rows: list[ComparisonRow], out_path: str | Path) -> Path:
    """Plot, per direction, one axial slice of input | ground truth | each method's output, and
    below it |output - ground truth| on a shared scale (0 to 0.5 of the normalised range).

    Every method shows the same slice (the one with the largest mask area) and the same crop.
    """
    n_columns = 2 + max(len(row.outputs) for row in rows)
    figure, axes = plt.subplots(2 * len(rows), n_columns, figsize=(1.9 * n_columns, 3.9 * len(rows)), squeeze=False)

    for r, row in enumerate(rows):
        k = int(np.argmax(row.mask.reshape(-1, row.mask.shape[2]).sum(axis=0)))
        xs = np.flatnonzero(row.mask.any(axis=(1, 2)))
        ys = np.flatnonzero(row.mask.any(axis=(0, 2)))
        crop = (slice(xs[0], xs[-1] + 1), slice(ys[0], ys[-1] + 1), k)

        low, high = NORMALISED_WINDOWS["ct" if row.output_modality == "ct" else "mr"]
        input_window = NORMALISED_WINDOWS["ct" if row.input_modality == "ct" else "mr"]
        panels = [("input", row.input, input_window), ("ground truth", row.ground_truth, (low, high))]
        panels += [(label, volume, (low, high)) for label, volume in row.outputs.items()]
        image_axes, difference_axes = axes[2 * r], axes[2 * r + 1]

        for c in range(n_columns):
            for ax in (image_axes[c], difference_axes[c]):
                ax.set_xticks([])
                ax.set_yticks([])
                if c >= len(panels):
                    ax.axis("off")
        for c, (label, volume, (vmin, vmax)) in enumerate(panels):
            image_axes[c].imshow(np.rot90(volume[crop]), cmap="gray", vmin=vmin, vmax=vmax)
            image_axes[c].set_title(label, fontsize=8)
            if c >= 2:
                difference = np.abs(volume[crop] - row.ground_truth[crop])
                difference_axes[c].imshow(np.rot90(difference), cmap="magma", vmin=0.0, vmax=DIFFERENCE_MAX)
                difference_axes[c].set_title(f"|{label} - truth|", fontsize=7)
            else:
                difference_axes[c].axis("off")
        image_axes[0].set_ylabel(f"{row.title}\nz={k}", fontsize=8)
        image_axes[0].axis("on")
        image_axes[0].set_xticks([])
        image_axes[0].set_yticks([])

    figure.tight_layout()
    out_path = Path(out_path)
    with atomic_path(out_path) as temporary:
        figure.savefig(temporary, dpi=90)
    plt.close(figure)
    return out_path
