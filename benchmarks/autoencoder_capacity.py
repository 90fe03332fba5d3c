"""Train one VQ-VAE-2 variant on a slice cache and print its held-out reconstruction SSIM.

The autoencoder trains as in ``symot-med demo`` (``train_ae_stage``: the training subjects'
slices of both modalities pooled, a tenth of them held back for validation). It is then scored
on each modality's test-subject slices with ``evaluate_autoencoder`` (2D SSIM over the whole
slice, data range 1), as on the demo's summary page. Prints one JSON line
with the changed settings, the SSIM per modality and the wall time. The run uses one torch
thread, so two variants can train side by side on 2 cores.

Usage, after ``symot-med demo`` has written its slice caches::

    python benchmarks/autoencoder_capacity.py demo_out/t1t2/cache /tmp/ae_1024 '{"vqvae2": {"n_embed": 1024}}'
    python benchmarks/autoencoder_capacity.py demo_out/t1t2/cache /tmp/ae_base '{"vqvae2": {"n_embed": 256, "embed_dim": 32}}'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from symot_med.data.slices import SliceCache
from symot_med.models.vqvae2 import VQVAE2Config
from symot_med.pipeline.stages import train_ae_stage
from symot_med.training.autoencoder import AETrainConfig, evaluate_autoencoder, load_autoencoder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache", help="slice cache folder, for example demo_out/t1t2/cache")
    parser.add_argument(
        "out", help="output folder of the autoencoder (resumes from its last.pt; an existing autoencoder.pt is only scored)"
    )
    parser.add_argument(
        "settings", nargs="?", default="{}",
        help='JSON object with optional sections "vqvae2" and "autoencoder" of fields to change',
    )
    parser.add_argument(
        "--epochs", type=int, default=AETrainConfig.epochs,
        help='training epochs; an "epochs" field in the autoencoder section overrides it (default: %(default)s)',
    )
    args = parser.parse_args()

    example = '\'{"vqvae2": {"n_embed": 1024}}\''
    try:
        settings = json.loads(args.settings)
    except json.JSONDecodeError as error:
        parser.error(f"invalid settings {args.settings!r}: {error}; pass a JSON object such as {example}")
    sections_are_objects = isinstance(settings, dict) and all(isinstance(value, dict) for value in settings.values())
    if not sections_are_objects:
        parser.error(f"invalid settings {args.settings!r}: pass a JSON object of objects such as {example}")
    unknown = sorted(set(settings) - {"vqvae2", "autoencoder"})
    if unknown:
        parser.error(f"unknown settings sections {unknown}; use 'vqvae2' and 'autoencoder'")
    try:
        model_config = VQVAE2Config.from_dict(settings.get("vqvae2", {}))
        config = AETrainConfig.from_dict({"epochs": args.epochs, **settings.get("autoencoder", {})})
        cache = SliceCache.open(args.cache)
    except (ValueError, TypeError, FileNotFoundError) as error:
        parser.error(str(error))
    torch.set_num_threads(1)

    test = {modality: cache.slices(modality, "test") for modality in cache.manifest["intensity"]}

    start = time.perf_counter()
    path = train_ae_stage(
        Path(args.cache),
        Path(args.out),
        config,
        model_config,
        device="cpu",
        progress=False,
    )
    minutes = (time.perf_counter() - start) / 60

    model = load_autoencoder(path).eval()
    ssim = {
        modality: round(evaluate_autoencoder(model, torch.from_numpy(slices), 64, torch.device("cpu"))["val_ssim"], 4)
        for modality, slices in test.items()
    }
    print(json.dumps({"settings": settings, "epochs": config.epochs, "ssim": ssim, "minutes": round(minutes, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
