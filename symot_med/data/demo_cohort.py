"""Synthetic demo cohort written in the BraTS 2021 and SynthRAD2023 Task 1 brain layouts.

No real patient data can be reached offline, so the package's default input is made from the
MNI ICBM152 2009a template that ships inside the nilearn wheel. The generator uses its brain
mask (nilearn thresholds the skull-stripped T1 template), its grey- and white-matter
probability maps and its affine (197x233x189 voxels, 1 mm). CSF is the brain mask minus grey
and white matter.

Each subject gets its own random smooth deformation of the template, MR images from the
spin-echo signal equation ``S = PD (1 - exp(-TR/T1)) exp(-TE/T2)`` with per-tissue relaxation
times, a smooth multiplicative bias field and Rician noise. BraTS-like subjects get a lesion
(necrotic core, enhancing rim, oedema) and a BraTS label map. SynthRAD-like subjects get CSF,
skull and scalp shells around the brain, a CT in Hounsfield units and a body mask.

The output goes through the same loaders as real data (``symot_med.data.layouts``).
``generate_demo_cohort`` is the entry point.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from tqdm import tqdm

logger = logging.getLogger(__name__)

GENERATOR = "symot_med.data.demo_cohort"
# Increase when a change alters the generated arrays, so that a cohort written by an older
# generator is not returned as if it were the requested one.
GENERATOR_VERSION = 1
DATASETS = ("brats", "synthrad")
COHORT_FILE = "cohort.json"
LICENSE_FILE = "TEMPLATE_LICENSE.txt"
MAX_SUBJECTS = {"brats": 99_999, "synthrad": 999}

TEMPLATE_SHAPE = (197, 233, 189)

# BraTS grid: 240x240x155 at 1 mm. Output voxel index = template voxel index + offset: the
# brain (template x 26..170, y 27..207, z 0..154) is centred in x and y, and 5 mm of the lower
# brainstem are cut so that the deformed brain keeps a margin below the top slice.
BRATS_SHAPE = (240, 240, 155)
BRATS_OFFSET = (22, 3, -5)

# SynthRAD grid: the head (brain plus at most about 20 mm of shells and 4 mm of deformation)
# with a few millimetres of air in x, y and above. The bottom slice is the template's bottom
# slice, which cuts through the brainstem as a real head scan cuts through the neck.
SYNTHRAD_SHAPE = (207, 243, 186)
SYNTHRAD_OFFSET = (5, 5, 0)

# Template voxels farther than this from the brain surface are treated as this far, in mm.
DISTANCE_CAP_MM = 40.0

CT_AIR_HU = -1000
CT_MIN_HU, CT_MAX_HU = -1024, 3071


@dataclass(frozen=True)
class Tissue:
    """Relaxation times in ms and proton density relative to CSF of one tissue."""

    t1_ms: float
    t2_ms: float
    proton_density: float


# The CSF, grey matter, white matter, fat and skin ("muscle/skin") values at 1.5 T are
# BrainWeb's tissue MR parameters (McGill BIC, brainweb tissue_mr_parameters table). The lesion
# and bone values are not measured values. They are chosen here to give the usual appearance:
# oedema and necrosis bright on T2w and dark on T1w, cortical bone dark on every sequence.
TISSUES: dict[str, Tissue] = {
    "csf": Tissue(2569.0, 329.0, 1.0),
    "gm": Tissue(833.0, 83.0, 0.86),
    "wm": Tissue(500.0, 70.0, 0.77),
    "fat": Tissue(350.0, 70.0, 1.0),
    "skin": Tissue(900.0, 47.0, 1.0),
    "cortical_bone": Tissue(300.0, 1.0, 0.05),
    "diploe": Tissue(350.0, 40.0, 0.35),
    "necrosis": Tissue(1800.0, 200.0, 0.95),
    "enhancing": Tissue(1100.0, 110.0, 0.88),
    "oedema": Tissue(1000.0, 140.0, 0.90),
}

# Spin-echo timings in ms, typical of clinical T1w and T2w spin echo at 1.5 T.
SEQUENCES = {"t1": {"tr_ms": 500.0, "te_ms": 15.0}, "t2": {"tr_ms": 4000.0, "te_ms": 100.0}}

# Approximate unenhanced head CT values in HU; per-subject values are drawn around them.
CT_BRAIN_HU = {"csf": 8.0, "gm": 38.0, "wm": 28.0}

# Shells outside the brain, innermost first: (name, tissue, thickness range in mm).
# Every thickness is at least 1 mm, the width of the partial-volume ramp, so that each shell
# reaches its tissue's full CT and MR value somewhere.
SHELLS = (
    ("csf", "csf", (1.5, 3.0)),
    ("inner_table", "cortical_bone", (1.2, 2.0)),
    ("diploe", "diploe", (2.0, 4.0)),
    ("outer_table", "cortical_bone", (1.5, 2.5)),
    ("galea", "skin", (1.0, 2.0)),
    ("fat", "fat", (2.0, 4.0)),
    ("skin", "skin", (1.0, 2.0)),
)

BRATS_LABELS = {"necrotic_core": 1, "oedema": 2, "enhancing": 4}


def spin_echo_signal(tissue: Tissue, tr_ms: float, te_ms: float) -> float:
    """Return ``PD (1 - exp(-TR/T1)) exp(-TE/T2)``, which is 1 for PD 1 at full relaxation."""
    recovery = 1.0 - np.exp(-tr_ms / tissue.t1_ms)
    decay = np.exp(-te_ms / tissue.t2_ms)
    return float(tissue.proton_density * recovery * decay)


# ---------------------------------------------------------------------------------------------
# Template


@dataclass(frozen=True)
class Template:
    """Template maps on the 197x233x189 template grid (1 mm, RAS), all float32.

    Attributes:
        affine: 4x4 voxel-to-world affine of the template, in mm.
        gm, wm: grey- and white-matter probabilities, zero outside the brain mask.
        signed_distance: distance from the brain surface in mm, negative inside the brain,
            clipped to +-DISTANCE_CAP_MM. Voxels next to the surface are at +-0.5 mm, so
            linear interpolation puts the surface at 0.
        brain_low, brain_high: first and last template voxel index of the brain mask per axis.
        lesion_centres: (K, 3) template voxel indices where white matter > 0.9 and the brain
            surface is more than 15 mm away; lesion centres are drawn from them.
    """

    affine: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    signed_distance: np.ndarray
    brain_low: np.ndarray
    brain_high: np.ndarray
    lesion_centres: np.ndarray


@functools.lru_cache(maxsize=1)
def load_template() -> Template:
    """Load the nilearn MNI152 maps and derive the signed distance map (a few seconds, cached)."""
    from nilearn import datasets  # imported here because nilearn imports scikit-learn, which is slow

    t1_image = datasets.load_mni152_template(resolution=1)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).dataobj, dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).dataobj, dtype=np.float32)
    mask = np.asarray(datasets.load_mni152_brain_mask(resolution=1).dataobj) > 0
    if gm.shape != TEMPLATE_SHAPE or mask.shape != TEMPLATE_SHAPE:
        raise RuntimeError(
            f"nilearn's MNI152 maps have shape {gm.shape}, expected {TEMPLATE_SHAPE}; "
            "this generator was written against the 1 mm ICBM152 2009a maps of nilearn 0.14"
        )

    gm *= mask
    wm *= mask

    brain_voxels = np.argwhere(mask)
    brain_low, brain_high = brain_voxels.min(axis=0), brain_voxels.max(axis=0)

    # The depth inside the brain is computed on the brain's bounding box grown by one voxel,
    # which halves the work. The result is exact: clamping any outside voxel into that box
    # gives an outside voxel that is at least as close.
    box = tuple(slice(max(low - 1, 0), high + 2) for low, high in zip(brain_low, brain_high))
    inside = np.zeros(mask.shape, dtype=np.float64)
    inside[box] = ndimage.distance_transform_edt(mask[box])
    outside = ndimage.distance_transform_edt(~mask)
    signed = np.where(mask, 0.5 - inside, outside - 0.5)
    signed = np.clip(signed, -DISTANCE_CAP_MM, DISTANCE_CAP_MM).astype(np.float32)

    lesion_centres = np.argwhere((wm > 0.9) & (signed < -15.0))

    return Template(
        affine=np.asarray(t1_image.affine, dtype=np.float64),
        gm=gm,
        wm=wm,
        signed_distance=signed,
        brain_low=brain_low,
        brain_high=brain_high,
        lesion_centres=lesion_centres,
    )


def output_affine(template_affine: np.ndarray, offset: Sequence[int]) -> np.ndarray:
    """Return the affine of a grid whose voxel ``i`` is template voxel ``i - offset``.

    Each voxel keeps its world coordinate: only the translation changes.
    """
    affine = template_affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.asarray(offset, dtype=np.float64)
    return affine


# ---------------------------------------------------------------------------------------------
# Random smooth fields


def _gaussian_basis(coordinates: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Return (N, K) Gaussian bumps, width 0.6 x spacing, on nodes covering ``coordinates``."""
    nodes = np.arange(coordinates[0] - spacing_mm, coordinates[-1] + 2 * spacing_mm, spacing_mm)
    sigma = 0.6 * spacing_mm
    basis = np.exp(-0.5 * ((coordinates[:, None] - nodes[None, :]) / sigma) ** 2)
    return basis.astype(np.float32)


def smooth_random_field(
    rng: np.random.Generator,
    axes_mm: Sequence[np.ndarray],
    spacing_mm: float,
    components: int,
    peak: float,
) -> np.ndarray:
    """Draw a smooth random field whose largest magnitude is ``peak``.

    The field is a sum of Gaussian bumps on a coarse grid with standard normal weights,
    evaluated separably (three small matrix products), so the cost grows with the number of
    output voxels times the number of nodes along one axis.

    Args:
        rng: random generator; ``components`` x nodes normal draws are taken from it.
        axes_mm: three 1D arrays, the voxel coordinates along x, y, z in mm.
        spacing_mm: distance between coarse nodes; larger is smoother.
        components: 3 for a displacement field, 1 for a scalar field.
        peak: largest vector magnitude of the returned field, estimated on every 4th voxel.

    Returns:
        (components, X, Y, Z) float32 array.
    """
    bases = [_gaussian_basis(np.asarray(axis, dtype=np.float64), spacing_mm) for axis in axes_mm]
    node_shape = tuple(basis.shape[1] for basis in bases)
    weights = rng.standard_normal((components, *node_shape)).astype(np.float32)
    size_x, size_y, size_z = (basis.shape[0] for basis in bases)

    field = np.empty((components, size_x, size_y, size_z), dtype=np.float32)
    for component in range(components):
        along_z = weights[component] @ bases[2].T  # (nx, ny, Z)
        along_y = np.matmul(along_z.transpose(0, 2, 1), bases[1].T).transpose(0, 2, 1)  # (nx, Y, Z)
        out = field[component].reshape(size_x, size_y * size_z)  # a view: field[component] is contiguous
        np.matmul(bases[0], along_y.reshape(node_shape[0], -1), out=out)

    sample = field[:, ::4, ::4, ::4]
    largest = float(np.sqrt((sample.astype(np.float64) ** 2).sum(axis=0)).max())
    field *= np.float32(peak / max(largest, 1e-12))
    return field


# ---------------------------------------------------------------------------------------------
# Warping


@dataclass
class WarpedBrain:
    """Template maps pulled through one subject's deformation onto an output region.

    ``signed_distance`` covers the whole region. The tissue fractions cover ``brain_box`` (a
    tuple of slices of the region) and sum to ``brain`` there; outside it they are zero.
    """

    signed_distance: np.ndarray
    brain_box: tuple[slice, slice, slice]
    brain: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray


def brain_box(template: Template, region_start: Sequence[int], region_shape: Sequence[int], margin: int):
    """Return slices of a region that contain the template brain moved by up to ``margin`` mm.

    ``region_start`` is the template voxel index of the region's first voxel.
    """
    low = template.brain_low - margin - np.asarray(region_start)
    high = template.brain_high + margin + 1 - np.asarray(region_start)
    low = np.clip(low, 0, region_shape)
    high = np.clip(high, 0, region_shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))


def _resample(volume: np.ndarray, coordinates: np.ndarray) -> np.ndarray:
    """Interpolate ``volume`` linearly at (3, ...) template voxel coordinates.

    Points outside the template grid take the nearest edge voxel's value. Every edge is more
    than 25 mm from the brain, so those points are air, except the bottom slice, which cuts
    through the brainstem: extending it continues the brainstem downwards.
    """
    return ndimage.map_coordinates(
        volume, coordinates, order=1, mode="nearest", prefilter=False, output=np.float32
    )


def warp_template(
    template: Template,
    rng: np.random.Generator,
    region_start: np.ndarray,
    region_shape: Sequence[int],
    peak_displacement_mm: float,
) -> WarpedBrain:
    """Deform the template by a smooth random displacement field and resample it on a region.

    Args:
        template: the template maps.
        rng: random generator for the displacement field.
        region_start: template voxel index (3 integers) of the region's first voxel.
        region_shape: region size in voxels.
        peak_displacement_mm: largest displacement, in mm (1 voxel = 1 mm).

    Returns:
        The warped maps. Linear interpolation (scipy map_coordinates, order 1) keeps the
        fractions in [0, 1]; the tissue maps are resampled only on the brain's bounding box.
    """
    axes = [np.arange(size, dtype=np.float64) + start for size, start in zip(region_shape, region_start)]
    coordinates = smooth_random_field(rng, axes, spacing_mm=20.0, components=3, peak=peak_displacement_mm)
    coordinates[0] += axes[0].astype(np.float32)[:, None, None]
    coordinates[1] += axes[1].astype(np.float32)[None, :, None]
    coordinates[2] += axes[2].astype(np.float32)[None, None, :]

    signed_distance = _resample(template.signed_distance, coordinates)

    # The brain fraction comes from the warped distance map: a 1 mm ramp across the surface.
    # Grey and white matter are resampled only where that fraction is above zero.
    box = brain_box(template, region_start, region_shape, margin=int(np.ceil(peak_displacement_mm)) + 2)
    brain = np.clip(np.float32(0.5) - signed_distance[box], 0.0, 1.0)
    in_brain = brain > 0
    brain_coordinates = coordinates[(slice(None), *box)][:, in_brain]
    del coordinates
    gm = np.zeros_like(brain)
    wm = np.zeros_like(brain)
    gm[in_brain] = _resample(template.gm, brain_coordinates)
    wm[in_brain] = _resample(template.wm, brain_coordinates)
    del brain_coordinates

    # At the surface, the interpolated tissue maps can exceed the brain fraction a little
    # because they come from another map. Grey and white matter are scaled down there.
    tissue_sum = gm + wm
    excess = tissue_sum > brain
    scale = np.divide(brain, tissue_sum, out=np.ones_like(brain), where=excess)
    gm *= scale
    wm *= scale
    csf = np.clip(brain - gm - wm, 0.0, 1.0)

    return WarpedBrain(signed_distance=signed_distance, brain_box=box, brain=brain, gm=gm, wm=wm, csf=csf)


# ---------------------------------------------------------------------------------------------
# Per-subject parameters


def _jittered_tissues(rng: np.random.Generator, names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Draw per-subject relaxation times: each T1 and T2 times a log-normal factor (sd 3 %)."""
    tissues = {}
    for name in names:
        base = TISSUES[name]
        factors = np.exp(rng.normal(0.0, 0.03, size=2))
        tissues[name] = {
            "t1_ms": float(base.t1_ms * factors[0]),
            "t2_ms": float(base.t2_ms * factors[1]),
            "proton_density": float(base.proton_density),
        }
    return tissues


def _mr_signals(tissues: dict[str, dict[str, float]], sequence: str, gain: float) -> dict[str, float]:
    """Return gain x spin-echo signal of every tissue for one sequence, in scanner units."""
    timing = SEQUENCES[sequence]
    return {
        name: gain * spin_echo_signal(Tissue(**values), timing["tr_ms"], timing["te_ms"])
        for name, values in tissues.items()
    }


def draw_brats_parameters(rng: np.random.Generator) -> dict:
    """Draw the scalar parameters of one BraTS-like subject (recorded in cohort.json)."""
    brain_and_lesion = ("csf", "gm", "wm", "necrosis", "enhancing", "oedema")
    oedema_radius = float(rng.uniform(15.0, 28.0))
    enhancing_radius = oedema_radius * float(rng.uniform(0.45, 0.65))
    core_radius = enhancing_radius * float(rng.uniform(0.45, 0.7))
    return {
        "peak_displacement_mm": float(rng.uniform(2.0, 4.0)),
        "tissues": _jittered_tissues(rng, brain_and_lesion),
        # Gains put white matter near 600 on T1w and CSF near 900 on T2w, as scanner units.
        "gain": {"t1": float(rng.uniform(1350.0, 1750.0)), "t2": float(rng.uniform(1350.0, 1750.0))},
        "bias_peak": {"t1": float(rng.uniform(0.05, 0.2)), "t2": float(rng.uniform(0.05, 0.2))},
        "noise_fraction": {"t1": float(rng.uniform(0.015, 0.04)), "t2": float(rng.uniform(0.015, 0.04))},
        "lesion": {
            "centre_draw": int(rng.integers(1 << 30)),
            "oedema_radius_mm": oedema_radius,
            "enhancing_radius_mm": enhancing_radius,
            "core_radius_mm": core_radius,
            "axis_scales": [float(x) for x in np.exp(rng.uniform(-0.2, 0.2, size=3))],
        },
    }


def draw_synthrad_parameters(rng: np.random.Generator) -> dict:
    """Draw the scalar parameters of one SynthRAD-like subject (recorded in cohort.json)."""
    shell_thickness = {name: float(rng.uniform(*limits)) for name, _, limits in SHELLS}
    return {
        "peak_displacement_mm": float(rng.uniform(2.0, 4.0)),
        "tissues": _jittered_tissues(rng, ("csf", "gm", "wm", "fat", "skin", "cortical_bone", "diploe")),
        "shell_thickness_mm": shell_thickness,
        "gain": float(rng.uniform(1350.0, 1750.0)),
        "bias_peak": float(rng.uniform(0.05, 0.2)),
        "noise_fraction": float(rng.uniform(0.015, 0.04)),
        "ct_hu": {
            "csf": CT_BRAIN_HU["csf"] + float(rng.normal(0.0, 2.0)),
            "gm": CT_BRAIN_HU["gm"] + float(rng.normal(0.0, 2.0)),
            "wm": CT_BRAIN_HU["wm"] + float(rng.normal(0.0, 2.0)),
            "cortical_bone": float(rng.uniform(1200.0, 1600.0)),
            "diploe": float(rng.uniform(500.0, 800.0)),
            "fat": float(rng.uniform(-110.0, -80.0)),
            "skin": float(rng.uniform(30.0, 50.0)),
        },
        "ct_noise_hu": float(rng.uniform(8.0, 20.0)),
    }


# ---------------------------------------------------------------------------------------------
# Image formation


def _rician(rng: np.random.Generator, signal: np.ndarray, sigma: float) -> np.ndarray:
    """Return ``|signal + sigma (n1 + i n2)|`` with independent standard normal n1, n2."""
    real = rng.standard_normal(signal.shape, dtype=np.float32)
    real *= np.float32(sigma)
    real += signal
    imaginary = rng.standard_normal(signal.shape, dtype=np.float32)
    imaginary *= np.float32(sigma)
    return np.hypot(real, imaginary)


def _bias_field(rng: np.random.Generator, shape: Sequence[int], peak: float) -> np.ndarray:
    """Return exp(f) for a smooth random f with largest |f| = ``peak`` (50 mm node spacing)."""
    axes = [np.arange(size, dtype=np.float64) for size in shape]
    field = smooth_random_field(rng, axes, spacing_mm=50.0, components=1, peak=peak)[0]
    return np.exp(field, out=field)


def _to_int16(image: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip(np.rint(image), low, high).astype(np.int16)


@dataclass
class Lesion:
    """Voxel fractions of the three lesion compartments and their BraTS labels on a sub-box.

    ``box`` is a tuple of slices of the brain region; the arrays have the box's shape.
    """

    box: tuple[slice, slice, slice]
    core: np.ndarray
    enhancing: np.ndarray
    oedema: np.ndarray
    labels: np.ndarray


def _place_lesion(
    rng: np.random.Generator,
    parameters: dict,
    template: Template,
    warped: WarpedBrain,
    box_start: np.ndarray,
) -> Lesion:
    """Build a lesion around a deep white-matter point and replace brain tissue with it.

    The shape is an ellipsoid with random axes and orientation. The oedema and rim surfaces are
    modulated by smooth random fields (up to 20 % and 8 % of their radius), so the outline is
    irregular. Solid tumour (core and rim) replaces every brain tissue; oedema replaces only
    grey and white matter. ``warped``'s tissue maps are updated in place.
    """
    candidates = template.lesion_centres
    centre_template = candidates[parameters["centre_draw"] % len(candidates)]
    centre = centre_template + np.asarray(BRATS_OFFSET) - box_start
    oedema_radius = parameters["oedema_radius_mm"]

    axes_scale = np.asarray(parameters["axis_scales"])
    rotation, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    half_size = int(np.ceil(oedema_radius * 1.2 * axes_scale.max())) + 2
    low = np.clip(centre - half_size, 0, warped.brain.shape)
    high = np.clip(centre + half_size + 1, 0, warped.brain.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(low, high))

    axes = [np.arange(a, b, dtype=np.float32) - np.float32(c) for a, b, c in zip(low, high, centre)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"))
    rotated = np.tensordot(rotation.astype(np.float32), grid, axes=1)
    radius = np.sqrt(((rotated / axes_scale.astype(np.float32)[:, None, None, None]) ** 2).sum(axis=0))

    ripple = smooth_random_field(rng, axes, spacing_mm=10.0, components=2, peak=1.0)
    oedema_surface = np.float32(oedema_radius) * (1 + np.float32(0.2) * ripple[0])
    rim_surface = np.float32(parameters["enhancing_radius_mm"]) * (1 + np.float32(0.08) * ripple[1])

    def inside(surface):
        return np.clip(surface - radius + np.float32(0.5), 0.0, 1.0)

    core = inside(np.float32(parameters["core_radius_mm"]))
    tumour = inside(rim_surface)
    lesion = inside(oedema_surface)

    brain = warped.brain[box]
    gm, wm, csf = warped.gm[box], warped.wm[box], warped.csf[box]
    tissue = gm + wm
    oedema_fraction = lesion - tumour
    oedema = oedema_fraction * tissue

    labels = np.zeros(brain.shape, dtype=np.uint8)
    labels[(lesion >= 0.5) & (tissue >= 0.5 * brain)] = BRATS_LABELS["oedema"]
    labels[tumour >= 0.5] = BRATS_LABELS["enhancing"]
    labels[core >= 0.5] = BRATS_LABELS["necrotic_core"]
    labels[brain < 0.5] = 0

    keep_tissue = 1.0 - lesion
    gm *= keep_tissue
    wm *= keep_tissue
    csf *= 1.0 - tumour

    return Lesion(
        box=box,
        core=core * brain,
        enhancing=(tumour - core) * brain,
        oedema=oedema,
        labels=labels,
    )


def make_brats_subject(
    template: Template, rng: np.random.Generator, parameters: dict
) -> dict[str, np.ndarray]:
    """Generate one skull-stripped BraTS-like subject.

    Only the brain's bounding box (plus the deformation margin) is computed; the rest of the
    240x240x155 grid is background.

    Returns:
        ``t1`` and ``t2``: (240, 240, 155) int16 images in scanner units, zero outside the
        brain. ``seg``: (240, 240, 155) uint8 BraTS labels (1 necrotic core, 2 oedema,
        4 enhancing rim).
    """
    peak = parameters["peak_displacement_mm"]
    offset = np.asarray(BRATS_OFFSET)
    box = brain_box(template, -offset, BRATS_SHAPE, margin=int(np.ceil(peak)) + 2)
    box_start = np.asarray([part.start for part in box])
    box_shape = tuple(part.stop - part.start for part in box)

    warped = warp_template(template, rng, box_start - offset, box_shape, peak)
    lesion = _place_lesion(rng, parameters["lesion"], template, warped, box_start)

    brain_mask = warped.brain >= 0.5
    volumes = {}
    for sequence in ("t1", "t2"):
        signals = _mr_signals(parameters["tissues"], sequence, parameters["gain"][sequence])
        image = signals["gm"] * warped.gm + signals["wm"] * warped.wm + signals["csf"] * warped.csf
        image[lesion.box] += (
            signals["necrosis"] * lesion.core
            + signals["enhancing"] * lesion.enhancing
            + signals["oedema"] * lesion.oedema
        )
        image *= _bias_field(rng, image.shape, parameters["bias_peak"][sequence])
        # The noise level is relative to white matter on T1w and to grey matter on T2w. Noise is
        # drawn only inside the brain mask because the output is zero outside it.
        sigma = parameters["noise_fraction"][sequence] * signals["wm" if sequence == "t1" else "gm"]
        noisy = _rician(rng, image[brain_mask], sigma)
        image[:] = 0.0
        image[brain_mask] = noisy

        volume = np.zeros(BRATS_SHAPE, dtype=np.int16)
        volume[box] = _to_int16(image, 0, np.iinfo(np.int16).max)
        volumes[sequence] = volume

    seg = np.zeros(BRATS_SHAPE, dtype=np.uint8)
    seg[box][lesion.box] = lesion.labels
    volumes["seg"] = seg
    return volumes


def _shell_profiles(parameters: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Tabulate CT (HU) and T1w MR outside the brain as functions of the distance to the brain.

    A shell between distances ``inner`` and ``outer`` fills ``ramp(outer - d) - ramp(inner - d)``
    of a voxel at distance d, with ``ramp(x) = clip(x + 0.5, 0, 1)``. Beyond the last shell is
    air (-1000 HU, no MR signal). The profiles are piecewise linear with breakpoints at every
    surface +-0.5 mm, so tabulating them at those points makes ``np.interp`` exact.

    Returns:
        distances (mm, increasing), CT values (HU), MR values (scanner units), and the outer
        surface of the last shell (mm).
    """
    signals = _mr_signals(parameters["tissues"], "t1", parameters["gain"])
    hu = parameters["ct_hu"]
    thickness = parameters["shell_thickness_mm"]

    surfaces = np.cumsum([thickness[name] for name, _, _ in SHELLS])
    all_surfaces = np.concatenate([[0.0], surfaces])
    distances = np.unique(np.concatenate([all_surfaces - 0.5, all_surfaces + 0.5]))

    def ramp(x):
        return np.clip(x + 0.5, 0.0, 1.0)

    ct = np.zeros_like(distances)
    mr = np.zeros_like(distances)
    for (_, tissue, _), inner, outer in zip(SHELLS, all_surfaces[:-1], all_surfaces[1:]):
        fraction = ramp(outer - distances) - ramp(inner - distances)
        ct += fraction * hu[tissue]
        mr += fraction * signals[tissue]
    ct += (1.0 - ramp(surfaces[-1] - distances)) * CT_AIR_HU
    return distances, ct, mr, float(surfaces[-1])


def make_synthrad_subject(
    template: Template, rng: np.random.Generator, parameters: dict
) -> dict[str, np.ndarray]:
    """Generate one SynthRAD-like head: T1w MR, CT and body mask on one grid.

    Returns:
        ``mr``: (207, 243, 186) int16 T1w image in scanner units with Rician noise everywhere.
        ``ct``: same shape, int16 HU, exactly -1000 outside the body mask.
        ``mask``: same shape, uint8 body mask (1 where less than half the voxel is air).
    """
    region_start = -np.asarray(SYNTHRAD_OFFSET)
    warped = warp_template(template, rng, region_start, SYNTHRAD_SHAPE, parameters["peak_displacement_mm"])
    box = warped.brain_box

    # Beyond the last shell everything is air, and inside the brain the shells are absent. So
    # the profiles are interpolated only in between (a few million of the grid's 9.4 million).
    distances, ct_profile, mr_profile, head_surface = _shell_profiles(parameters)
    signed_distance = warped.signed_distance
    shells = (signed_distance > distances[0]) & (signed_distance < distances[-1])
    shell_distance = signed_distance[shells]
    ct = np.where(signed_distance >= distances[-1], np.float32(CT_AIR_HU), np.float32(0.0))
    mr = np.zeros_like(signed_distance)
    ct[shells] = np.interp(shell_distance, distances, ct_profile)
    mr[shells] = np.interp(shell_distance, distances, mr_profile)

    hu = parameters["ct_hu"]
    ct[box] += hu["gm"] * warped.gm + hu["wm"] * warped.wm + hu["csf"] * warped.csf
    signals = _mr_signals(parameters["tissues"], "t1", parameters["gain"])
    mr[box] += signals["gm"] * warped.gm + signals["wm"] * warped.wm + signals["csf"] * warped.csf

    body = signed_distance < np.float32(head_surface)

    mr *= _bias_field(rng, mr.shape, parameters["bias_peak"])
    mr = _rician(rng, mr, parameters["noise_fraction"] * signals["wm"])

    noise = rng.standard_normal(ct.shape, dtype=np.float32)
    noise *= np.float32(parameters["ct_noise_hu"])
    ct += noise
    ct = np.where(body, ct, np.float32(CT_AIR_HU))

    return {
        "mr": _to_int16(mr, 0, np.iinfo(np.int16).max),
        "ct": _to_int16(ct, CT_MIN_HU, CT_MAX_HU),
        "mask": body.astype(np.uint8),
    }


# ---------------------------------------------------------------------------------------------
# Files


def _save_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Write ``array`` with ``affine`` as qform and sform (code 2, aligned to a template)."""
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=2)
    image.set_sform(affine, code=2)
    image.header.set_xyzt_units("mm")
    nib.save(image, str(path))


def brats_case_id(index: int) -> str:
    return f"BraTS2021_{index:05d}"


def synthrad_case_id(index: int) -> str:
    return f"1BA{index + 1:03d}"


def _subject_rng(seed: int, dataset: str, index: int) -> tuple[np.random.Generator, list[int]]:
    entropy = [seed, DATASETS.index(dataset), index]
    return np.random.default_rng(np.random.SeedSequence(entropy)), entropy


def _write_brats_subject(root: Path, template: Template, seed: int, index: int) -> dict:
    rng, entropy = _subject_rng(seed, "brats", index)
    parameters = draw_brats_parameters(rng)
    volumes = make_brats_subject(template, rng, parameters)

    case_id = brats_case_id(index)
    folder = root / case_id
    folder.mkdir(parents=True)
    affine = output_affine(template.affine, BRATS_OFFSET)
    for name in ("t1", "t2", "seg"):
        _save_nifti(folder / f"{case_id}_{name}.nii.gz", volumes[name], affine)
    return {"case_id": case_id, "seed_entropy": entropy, **parameters}


def _write_synthrad_subject(root: Path, template: Template, seed: int, index: int) -> dict:
    rng, entropy = _subject_rng(seed, "synthrad", index)
    parameters = draw_synthrad_parameters(rng)
    volumes = make_synthrad_subject(template, rng, parameters)

    case_id = synthrad_case_id(index)
    folder = root / "Task1" / "brain" / case_id
    folder.mkdir(parents=True)
    affine = output_affine(template.affine, SYNTHRAD_OFFSET)
    for name in ("mr", "ct", "mask"):
        _save_nifti(folder / f"{name}.nii.gz", volumes[name], affine)
    return {"case_id": case_id, "seed_entropy": entropy, **parameters}


_WRITERS = {"brats": _write_brats_subject, "synthrad": _write_synthrad_subject}

TEMPLATE_LICENSE = """\
The images in this folder are synthetic. They were generated by symot-med
({generator}, version {version}) from the MNI ICBM152 2009a nonlinear template maps
that ship inside the nilearn wheel (nilearn {nilearn_version}):

  mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz  (nilearn.datasets.load_mni152_template,
                                                      load_mni152_brain_mask)
  mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz  (load_mni152_gm_template)
  mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz  (load_mni152_wm_template)

The file names say "nlin_sym_09a" (symmetric, release a), while nilearn's documentation of
these loaders calls the template the asymmetrical ICBM152 2009, release a. nilearn ships
the files without a licence notice, and its description of the ICBM152 2009 template lists
the licence as "unknown". The MNI distributes its ICBM 2009 nonlinear template archives
with a COPYING file. Its text, as published in the 2009c archive, is reproduced below as
its authors wrote it. Some redistributions of the 2009 templates quote the same notice
with the years 1993-2009.

Copyright (C) 1993-2004 Louis Collins, McConnell Brain
Imaging Centre, Montreal Neurological Institute, McGill University.
Permission to use, copy, modify, and distribute this software and
its documentation for any purpose and without fee is hereby granted,
provided that the above copyright notice appear in all copies.  The
authors and McGill University make no representations about the
suitability of this software for any purpose.  It is provided "as
is" without express or implied warranty.  The authors are not
responsible for any data loss, equipment damage, property loss, or
injury to subjects or patients resulting from the use or misuse of
this software package.

References (as cited by nilearn's description of the ICBM152 2009 template, which also
cites Collins et al. 1999):

  VS Fonov, AC Evans, K Botteron, CR Almli, RC McKinstry, DL Collins and BDCG, Unbiased
  average age-appropriate atlases for pediatric studies, NeuroImage, Volume 54, Issue 1,
  January 2011, ISSN 1053-8119, DOI: 10.1016/j.neuroimage.2010.07.033

  VS Fonov, AC Evans, RC McKinstry, CR Almli and DL Collins, Unbiased nonlinear average
  age-appropriate brain templates from birth to adulthood, NeuroImage, Volume 47,
  Supplement 1, July 2009, Page S102, Organization for Human Brain Mapping 2009 Annual
  Meeting, DOI: 10.1016/S1053-8119(09)70884-5

Template home page: http://www.bic.mni.mcgill.ca/ServicesAtlases/ICBM152NLin2009
"""


def _nilearn_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nilearn")
    except PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------------------------------------
# Entry point


def _check_arguments(seed, n_subjects, datasets) -> tuple[str, ...]:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(n_subjects, bool) or not isinstance(n_subjects, (int, np.integer)) or n_subjects < 1:
        raise ValueError(f"n_subjects must be a positive integer, got {n_subjects!r}")
    if isinstance(datasets, str):
        datasets = (datasets,)
    requested = tuple(dict.fromkeys(datasets))
    if not requested:
        raise ValueError(f"datasets must name at least one of {list(DATASETS)}")
    unknown = [name for name in requested if name not in DATASETS]
    if unknown:
        raise ValueError(f"unknown data set {unknown[0]!r}: expected some of {list(DATASETS)}")
    for name in requested:
        if n_subjects > MAX_SUBJECTS[name]:
            raise ValueError(
                f"n_subjects {n_subjects} is more than the {MAX_SUBJECTS[name]} case ids of the {name} layout"
            )
    return requested


def _dataset_roots(out_dir: Path, datasets: Sequence[str]) -> dict[str, Path]:
    return {name: out_dir / name for name in datasets}


def _find_complete_cohort(out_dir: Path, seed: int, n_subjects: int, datasets: Sequence[str]) -> bool:
    """Return True when ``out_dir`` contains the requested cohort, False when it is absent or empty.

    Raises:
        ValueError: ``out_dir`` is a file, or contains anything other than the requested cohort.
    """
    if not out_dir.exists():
        return False
    if not out_dir.is_dir():
        raise ValueError(f"{out_dir} is a file; choose an empty or new folder for the demo cohort")
    if not any(out_dir.iterdir()):
        return False

    record_path = out_dir / COHORT_FILE
    try:
        record = json.loads(record_path.read_text())
    except (OSError, json.JSONDecodeError):
        record = None

    if (
        isinstance(record, dict)
        and record.get("generator") == GENERATOR
        and record.get("generator_version") == GENERATOR_VERSION
        and record.get("complete") is True
        and record.get("seed") == seed
        and record.get("n_subjects") == n_subjects
        and set(datasets) <= set(record.get("datasets", ()))
    ):
        return True

    if isinstance(record, dict) and record.get("generator") == GENERATOR:
        found = (
            f"a demo cohort with seed {record.get('seed')}, n_subjects {record.get('n_subjects')}, "
            f"data sets {record.get('datasets')} and generator version {record.get('generator_version')}"
        )
    else:
        found = "files that are not a demo cohort"
    raise ValueError(
        f"{out_dir} already contains {found}, not the requested cohort (seed {seed}, n_subjects "
        f"{n_subjects}, data sets {list(datasets)}); choose an empty folder"
    )


def generate_demo_cohort(
    out_dir: str | Path,
    seed: int = 0,
    n_subjects: int = 12,
    datasets: Sequence[str] = ("brats", "synthrad"),
    progress: bool = True,
) -> dict[str, Path]:
    """Write a synthetic cohort in the BraTS 2021 and SynthRAD2023 Task 1 brain layouts.

    Layout under ``out_dir``:

    - ``brats/BraTS2021_00000/BraTS2021_00000_{t1,t2,seg}.nii.gz``: 240x240x155, 1 mm,
      skull-stripped. T1w and T2w are int16 in scanner units (white matter about 600 on T1w,
      CSF about 900 on T2w). The seg is uint8 with 1 necrotic core, 2 oedema, 4 enhancing rim.
    - ``synthrad/Task1/brain/1BA001/{mr,ct,mask}.nii.gz``: 207x243x186, 1 mm, one grid per
      case; T1w MR int16 in scanner units, CT int16 in HU (-1000 outside the body), body mask
      uint8.
    - ``cohort.json`` (seed, subject count, generator version, every subject's random
      parameters) and ``TEMPLATE_LICENSE.txt`` (source template and its licence notice).

    Every volume has the MNI template's 1 mm RAS affine, translated so that each voxel keeps
    its template world coordinate. Subject ``i`` of data set ``d`` draws all its randomness
    from ``numpy.random.default_rng(SeedSequence([seed, d, i]))``, so a seed reproduces the
    arrays exactly (with the same nilearn maps) and each data set can be made alone.

    The cohort is written to a hidden folder ``.<name>.partial-*`` beside ``out_dir`` and
    renamed into place at the end, so an interrupted run leaves no partial cohort under
    ``out_dir``. An exception removes the hidden folder, but a killed process leaves it behind
    for the user to delete. A subject takes a few seconds on one CPU core (measurements in
    data_prep/README.md).

    Args:
        out_dir: new or empty folder. A folder that already contains a cohort with the same
            seed, subject count and generator version, and the requested data sets, is
            returned as it is.
        seed: non-negative integer.
        n_subjects: subjects per data set (at most 999 for SynthRAD's case ids).
        datasets: any of ``"brats"`` and ``"synthrad"``.
        progress: show a tqdm progress bar over subjects.

    Returns:
        ``{"brats": out_dir / "brats", "synthrad": out_dir / "synthrad"}`` for the requested
        data sets; each is a root that ``symot_med.data.layouts.discover_cases`` accepts.

    Raises:
        ValueError: invalid arguments, or ``out_dir`` exists and contains anything other than the
            requested cohort (including a cohort made with another seed or subject count).
    """
    requested = _check_arguments(seed, n_subjects, datasets)
    seed, n_subjects = int(seed), int(n_subjects)
    out_dir = Path(out_dir).expanduser().absolute()

    if _find_complete_cohort(out_dir, seed, n_subjects, requested):
        logger.info(
            "%s already contains the demo cohort (seed %d, %d subjects); not regenerating",
            out_dir, seed, n_subjects,
        )
        return _dataset_roots(out_dir, requested)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    logger.info(
        "generating the demo cohort (seed %d, %d subjects per data set, %s) in %s",
        seed, n_subjects, ", ".join(requested), staging,
    )
    started = time.perf_counter()
    try:
        template = load_template()
        subjects: dict[str, list[dict]] = {}
        total = n_subjects * len(requested)
        with tqdm(total=total, desc="demo cohort", unit="subject", disable=not progress) as bar:
            for dataset in requested:
                root = staging / dataset
                root.mkdir()
                subjects[dataset] = []
                for index in range(n_subjects):
                    subjects[dataset].append(_WRITERS[dataset](root, template, seed, index))
                    bar.update(1)

        licence = TEMPLATE_LICENSE.format(
            generator=GENERATOR, version=GENERATOR_VERSION, nilearn_version=_nilearn_version()
        )
        (staging / LICENSE_FILE).write_text(licence)
        record = {
            "generator": GENERATOR,
            "generator_version": GENERATOR_VERSION,
            "seed": seed,
            "n_subjects": n_subjects,
            "datasets": list(requested),
            "nilearn_version": _nilearn_version(),
            "sequences": SEQUENCES,
            "subjects": subjects,
            "complete": True,
        }
        (staging / COHORT_FILE).write_text(json.dumps(record, indent=1) + "\n")

        # out_dir is absent or empty here, because _find_complete_cohort rejects other content.
        if out_dir.is_dir():
            out_dir.rmdir()
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    logger.info("demo cohort written to %s in %.1f s", out_dir, time.perf_counter() - started)
    return _dataset_roots(out_dir, requested)
