"""SSIM ceiling that the demo cohort's simulated noise sets for autoencoder reconstructions.

The demo cohort adds Rician noise to MR and Gaussian noise to CT. An autoencoder that does not
reproduce that noise is at best the noise-free image. This script regenerates each held-out
subject of a finished demo with the noise set to zero; every other random draw stays the same.
It preprocesses that subject as the slice cache did. The noise-free slices are then scored
against the cached noisy ones with the metric of the demo's reconstruction table: 2D SSIM over
the whole slice (MONAI, 11-pixel Gaussian window) and PSNR, data range 1. Prints one JSON line.

Usage, after ``symot-med demo --out demo_out``::

    python benchmarks/noise_ceiling.py demo_out
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from monai.metrics import PSNRMetric, SSIMMetric

from symot_med.data import demo_cohort
from symot_med.data.slices import SliceCache
from symot_med.inference.translate import profile_from_dict
from symot_med.data.transforms import preprocess_volume

# Pair folder of the demo and the cohort's data set it comes from.
PAIRS = {"t1t2": "brats", "ctmr": "synthrad"}


def noise_free_subject(template, cohort: dict, dataset: str, case_id: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Regenerate one subject of ``cohort.json`` with zero noise; return its volumes and affine."""
    record = next(s for s in cohort["subjects"][dataset] if s["case_id"] == case_id)
    rng = np.random.default_rng(np.random.SeedSequence(record["seed_entropy"]))
    if dataset == "brats":
        parameters = demo_cohort.draw_brats_parameters(rng)
        parameters["noise_fraction"] = {sequence: 0.0 for sequence in parameters["noise_fraction"]}
        volumes = demo_cohort.make_brats_subject(template, rng, parameters)
        offset = demo_cohort.BRATS_OFFSET
    else:
        parameters = demo_cohort.draw_synthrad_parameters(rng)
        parameters["noise_fraction"] = 0.0
        parameters["ct_noise_hu"] = 0.0
        volumes = demo_cohort.make_synthrad_subject(template, rng, parameters)
        offset = demo_cohort.SYNTHRAD_OFFSET
    return volumes, demo_cohort.output_affine(template.affine, offset)


def pair_ceiling(demo_dir: Path, pair: str, template, cohort: dict, work: Path) -> dict[str, dict[str, float]]:
    """Noise-free against noisy SSIM and PSNR of every held-out slice of ``pair``, per modality."""
    cache = SliceCache.open(demo_dir / pair / "cache")
    profile = profile_from_dict(cache.manifest["profile"])
    metrics: dict[str, tuple[SSIMMetric, PSNRMetric]] = {}

    for case_id in cache.case_ids("test"):
        volumes, affine = noise_free_subject(template, cohort, PAIRS[pair], case_id)
        for modality, entry in cache.manifest["cases"][case_id]["modalities"].items():
            noisy_file = Path(entry["file"])
            mask = noisy_file.parent / "mask.nii.gz" if PAIRS[pair] == "synthrad" else None
            clean_file = work / f"{case_id}_{modality}.nii.gz"
            demo_cohort._save_nifti(clean_file, volumes[modality], affine)

            clean = preprocess_volume(clean_file, modality, profile, mask_path=mask).image
            noisy = np.load(cache.folder / entry["slices_file"])
            clean = np.moveaxis(clean, 2, 0)[entry["kept_slices"]]
            if clean.shape != noisy.shape:
                raise ValueError(f"{case_id} {modality}: noise-free slices {clean.shape} differ from the cache's {noisy.shape}")

            ssim, psnr = metrics.setdefault(modality, (SSIMMetric(spatial_dims=2, data_range=1.0), PSNRMetric(max_val=1.0)))
            prediction = torch.from_numpy(clean[:, None].astype(np.float32))
            truth = torch.from_numpy(noisy[:, None])
            ssim(y_pred=prediction, y=truth)
            psnr(y_pred=prediction, y=truth)

    return {m: {"ssim": round(float(s.aggregate()), 4), "psnr": round(float(p.aggregate()), 2)} for m, (s, p) in metrics.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo_dir", type=Path, help="output folder of `symot-med demo`")
    args = parser.parse_args()

    cohort_file = args.demo_dir / "cohort" / demo_cohort.COHORT_FILE
    if not cohort_file.is_file():
        parser.error(f"{cohort_file} not found; run `symot-med demo --out {args.demo_dir}` first")
    pairs = [pair for pair in PAIRS if (args.demo_dir / pair / "cache" / "manifest.json").is_file()]
    if not pairs:
        parser.error(f"{args.demo_dir} has no slice cache (t1t2/cache or ctmr/cache); run the demo first")
    cohort = json.loads(cohort_file.read_text())
    template = demo_cohort.load_template()

    with tempfile.TemporaryDirectory() as work:
        ceiling = {pair: pair_ceiling(args.demo_dir, pair, template, cohort, Path(work)) for pair in pairs}
    print(json.dumps(ceiling))
    return 0


if __name__ == "__main__":
    sys.exit(main())
