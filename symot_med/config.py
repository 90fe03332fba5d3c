"""Modality pairs and preprocessing profiles shared by every stage.

A pair names the source modality ``x`` and the target modality ``z`` of the method: the flow's
forward map T sends ``x`` to ``z`` and its inverse sends ``z`` back to ``x``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

Direction = Literal["forward", "inverse"]
DIRECTIONS: tuple[Direction, ...] = ("forward", "inverse")

# One autoencoder for both modalities of a pair, or one per modality.
AUTOENCODER_LAYOUTS = ("shared", "separate")


@dataclass(frozen=True)
class Pair:
    """Two modalities of one data set; ``source`` is ``x`` and ``target`` is ``z``."""

    name: str
    dataset: Literal["brats", "synthrad"]
    source: str
    target: str
    beta: float

    def modalities(self) -> tuple[str, str]:
        return (self.source, self.target)

    def input_modality(self, direction: Direction) -> str:
        """Return the modality a translation in ``direction`` reads."""
        if direction == "forward":
            return self.source
        elif direction == "inverse":
            return self.target
        else:
            raise ValueError(f"direction must be 'forward' or 'inverse', got {direction!r}")

    def output_modality(self, direction: Direction) -> str:
        """Return the modality a translation in ``direction`` writes."""
        if direction == "forward":
            return self.target
        elif direction == "inverse":
            return self.source
        else:
            raise ValueError(f"direction must be 'forward' or 'inverse', got {direction!r}")


# beta: 1e-5 for MRI T1/T2 and 1e-3 for CT/MR, the values Xiong, Ding and Zhang report for SyMOT-Flow.
PAIRS: dict[str, Pair] = {
    "t1t2": Pair(name="t1t2", dataset="brats", source="t1", target="t2", beta=1e-5),
    "ctmr": Pair(name="ctmr", dataset="synthrad", source="ct", target="mr", beta=1e-3),
}


def get_pair(name: str) -> Pair:
    if name not in PAIRS:
        raise ValueError(f"unknown pair {name!r}: expected one of {sorted(PAIRS)}")
    return PAIRS[name]


@dataclass(frozen=True)
class Profile:
    """Preprocessing geometry of one data set.

    Attributes:
        name: profile name, ``demo`` or ``paper``.
        dataset: ``brats`` or ``synthrad``.
        spacing: voxel size after resampling, in mm, RAS axis order.
        slice_size: axial slice size (H, W) in voxels after crop or pad; both must be
            divisible by 8 because the VQ-VAE-2's top latent map is at 1/8 of the slice size.
        min_foreground: fraction of a slice's voxels inside the mask below which the slice
            is dropped as empty.
    """

    name: str
    dataset: Literal["brats", "synthrad"]
    spacing: tuple[float, float, float]
    slice_size: tuple[int, int]
    min_foreground: float = 0.02

    def to_dict(self) -> dict:
        return asdict(self)


PROFILES: dict[tuple[str, str], Profile] = {
    ("demo", "brats"): Profile("demo", "brats", (2.0, 2.0, 2.0), (96, 96)),
    ("demo", "synthrad"): Profile("demo", "synthrad", (2.0, 2.0, 2.0), (96, 120)),
    ("paper", "brats"): Profile("paper", "brats", (1.0, 1.0, 1.0), (192, 192)),
    ("paper", "synthrad"): Profile("paper", "synthrad", (1.0, 1.0, 1.0), (168, 224)),
}


def get_profile(name: str, dataset: str) -> Profile:
    key = (name, dataset)
    if key not in PROFILES:
        names = sorted({n for n, _ in PROFILES})
        raise ValueError(f"unknown profile {name!r} for data set {dataset!r}: expected one of {names}")
    return PROFILES[key]
