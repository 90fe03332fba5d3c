"""Which latent space should the flow work in? A measurement on one slice cache.

The transport cost |x - T(x)|^2 only keeps anatomy in place if the two modalities' latents share
coordinates. This study trains, on the same training slices and with the same optimiser steps
per model (each per-modality autoencoder trains twice the epochs on half the slices):

- ``shared``: one VQ-VAE-2 on both modalities, the flow on its latents;
- ``separate``: one VQ-VAE-2 per modality, the flow from the source's latents to the target's,
  decoded by the output modality's autoencoder;

each with the flow's outputs decoded as they are or snapped to the codebooks first (``snap``).
On the shared autoencoder it compares two more choices. Flow inputs are snapped to the
codebooks (``quantized``) or the encoder's pre-quantisation maps (``continuous``). There is one
flow per latent level, or one joint flow on both levels (``joint``).

Scores are on the held-out subjects' slices, which the demo cohort and BraTS / SynthRAD2023 give
co-registered, so slice i of the source and of the target show the same anatomy. Translation:
2D SSIM (7-pixel window) and PSNR inside the ground truth's mask, data range 1, on normalised
slices. Shared coordinates: the paired-to-unpaired latent distance ratio
mean |E(x_i) - E(z_i)|^2 / mean |E(x_i) - E(z_j)|^2 over held-out slices (j a random other
slice); a small ratio means the same anatomy lands near the same latent point in both
modalities.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from symot_med.baselines.histogram import foreground_quantiles, match_histogram
from symot_med.bundle.network import TranslationNetwork
from symot_med.config import DIRECTIONS, get_pair
from symot_med.data.slices import SliceCache
from symot_med.evaluation.metrics import masked_psnr, masked_ssim_2d
from symot_med.inference.translate import card_autoencoders, read_model_card
from symot_med.io import write_json
from symot_med.models.vqvae2 import VQVAE2, VQVAE2Config
from symot_med.pipeline.stages import _validation_split, per_modality_config
from symot_med.training.autoencoder import AETrainConfig, evaluate_autoencoder, load_autoencoder, train_autoencoder
from symot_med.training.checkpoints import load_checkpoint
from symot_med.training.flow import FlowTrainConfig, encode_slices, load_flow, train_flow

logger = logging.getLogger(__name__)

# Variants: (autoencoders, flow inputs, flow layout, snap the flow's outputs before decoding).
VARIANTS = {
    "shared, quantized": ("shared", "quantized", "per_level", False),
    "shared, quantized, snap": ("shared", "quantized", "per_level", True),
    "shared, quantized, joint": ("shared", "quantized", "joint", False),
    "shared, continuous": ("shared", "continuous", "per_level", False),
    "separate, quantized": ("separate", "quantized", "per_level", False),
    "separate, quantized, snap": ("separate", "quantized", "per_level", True),
}

# The two variants that decide between one shared autoencoder and one per modality: both as the
# product translates (quantised inputs, one flow per level, outputs snapped to the codebooks).
LAYOUT_VARIANTS = {"shared": "shared, quantized, snap", "separate": "separate, quantized, snap"}


def _check_reused(path: Path, expected: dict[str, dict], fix: str) -> None:
    """Raise ValueError naming ``path``, the settings that differ and the ``fix`` unless its
    checkpoint was trained with the ``expected`` configs."""
    record = load_checkpoint(path)
    for key, values in expected.items():
        trained = record.get(key)
        if trained == values:
            continue
        if isinstance(trained, dict):
            names = sorted(name for name in set(trained) | set(values) if trained.get(name) != values.get(name))
            differences = ", ".join(f"{key}.{name} {trained.get(name)!r}" for name in names)
            expected_values = ", ".join(f"{values.get(name)!r}" for name in names)
            raise ValueError(f"{path} was trained with {differences}, where this study needs {expected_values}; {fix}")
        raise ValueError(f"{path} was trained with {key} {trained!r}, not the study's {values!r}; {fix}")


# Fixes named in the error when a model of the study's own work folder, or of a reused demo
# folder, was trained with other settings. Per-modality autoencoders train twice the
# --ae-epochs, so the advice names the options, not the numbers.
OWN_MODEL_FIX = (
    "rerun with the --ae-epochs and --flow-epochs of the earlier run into this --work folder, or with another "
    "--work folder so that the study trains anew"
)
DEMO_MODEL_FIX = (
    "rerun with the --ae-epochs and --flow-epochs that the demo ran with (none for its defaults), or pass the "
    "demo's caches with --cache so that the study trains its own models"
)


def _train_autoencoder(slices: np.ndarray, out_dir: Path, config: AETrainConfig, model: VQVAE2Config, device: str, progress: bool) -> VQVAE2:
    final = out_dir / "autoencoder.pt"
    if final.is_file():
        _check_reused(final, {"train_config": asdict(config), "model_config": asdict(model)}, OWN_MODEL_FIX)
    else:
        train, val = _validation_split(slices, config.seed)
        train_autoencoder(train, val, out_dir, config, model, device=device, progress=progress)
    return load_autoencoder(final, device=device)


def _translate(
    encoder: VQVAE2, decoder: VQVAE2, flow, slices: np.ndarray, reverse: bool, quantized: bool, snap: bool, device
) -> np.ndarray:
    """(N, 1, H, W) normalised slices -> translated slices in [0, 1]; ``encoder`` reads the input
    modality and ``decoder`` writes the output modality."""
    outputs = []
    with torch.no_grad():
        for start in range(0, len(slices), 64):
            x = torch.from_numpy(slices[start : start + 64]).to(device)
            mapped = flow(encoder.latents(x, quantized=quantized), rev=reverse)
            outputs.append(decoder.decode(*mapped, snap=snap).clamp(0.0, 1.0).cpu().numpy())
    return np.concatenate(outputs)


def score_slices(truth: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """2D SSIM and PSNR of (N, 1, H, W) slices inside the truth's mask (values > 0), data range 1."""
    truth_volume = np.moveaxis(truth[:, 0], 0, -1)  # (H, W, N)
    prediction_volume = np.moveaxis(prediction[:, 0], 0, -1)
    mask = truth_volume > 0
    return {
        "ssim": masked_ssim_2d(truth_volume, prediction_volume, mask, data_range=1.0),
        "psnr": masked_psnr(truth_volume, prediction_volume, mask, data_range=1.0),
    }


def pairing_ratio(x_latents: tuple, z_latents: tuple, seed: int = 0) -> float:
    """mean |E(x_i) - E(z_i)|^2 / mean |E(x_i) - E(z_j)|^2 over slices, j a random derangement of i."""
    x = torch.cat([level.flatten(1) for level in x_latents], dim=1)
    z = torch.cat([level.flatten(1) for level in z_latents], dim=1)
    n = x.shape[0]
    shift = np.random.default_rng(seed).integers(1, n)
    other = (torch.arange(n) + int(shift)) % n
    paired = (x - z).pow(2).sum(1).mean()
    unpaired = (x - z[other]).pow(2).sum(1).mean()
    return float(paired / unpaired)


def run_latent_study(
    cache_dir: str | Path,
    out_dir: str | Path,
    autoencoder: AETrainConfig,
    model: VQVAE2Config,
    flow: FlowTrainConfig,
    device: str = "cpu",
    progress: bool = True,
    reuse_dir: str | Path | None = None,
) -> dict:
    """Train every variant on ``cache_dir`` into ``out_dir`` (resuming finished parts) and return
    the scores, also written to ``out_dir/latent_study.json``.

    ``reuse_dir`` is a demo pair folder (``demo_out/<pair>``). Its autoencoders and flow serve
    as the shared or the separate autoencoders (as the demo trained them) and their per-level
    quantised flow, after checking that they were trained with the study's settings.
    """
    cache = SliceCache.open(cache_dir)
    pair = get_pair(cache.manifest["pair"])
    out_dir = Path(out_dir)
    flow = replace(flow, beta=pair.beta)
    train = {m: cache.slices(m, "train") for m in pair.modalities()}
    test = {m: cache.slices(m, "test") for m in pair.modalities()}

    # The demo's autoencoders and flow replace those of the variant they were trained as.
    reused_aes: dict[str, dict[str, Path]] = {}
    reused_flows = {}
    if reuse_dir is not None:
        reuse_dir = Path(reuse_dir)
        files = {m: Path(path) for m, path in card_autoencoders(read_model_card(reuse_dir / "flow")).items()}
        space = "shared" if files[pair.source] == files[pair.target] else "separate"
        ae_config = autoencoder if space == "shared" else per_modality_config(autoencoder, len(files))
        for path in set(files.values()):
            _check_reused(path, {"train_config": asdict(ae_config), "model_config": asdict(model)}, DEMO_MODEL_FIX)
        default_flow = replace(flow, latents="quantized", layout="per_level")
        _check_reused(reuse_dir / "flow" / "flow.pt", {"train_config": asdict(default_flow)}, DEMO_MODEL_FIX)
        reused_aes[space] = files
        reused_flows[(space, "quantized", "per_level")] = reuse_dir / "flow"

    if "separate" in reused_aes:
        separate = {m: load_autoencoder(reused_aes["separate"][m], device=device) for m in pair.modalities()}
    else:
        per_modality = per_modality_config(autoencoder, len(pair.modalities()))
        separate = {
            m: _train_autoencoder(train[m], out_dir / f"ae_{m}", per_modality, model, device, progress)
            for m in pair.modalities()
        }
    if "shared" in reused_aes:
        shared = load_autoencoder(reused_aes["shared"][pair.source], device=device)
    else:
        pooled = np.concatenate([train[pair.source], train[pair.target]])
        shared = _train_autoencoder(pooled, out_dir / "ae_shared", autoencoder, model, device, progress)
    autoencoders = {"shared": {m: shared for m in pair.modalities()}, "separate": separate}

    results: dict = {"pair": pair.name, "settings": {"autoencoder": asdict(autoencoder), "vqvae2": asdict(model), "flow": asdict(flow)}}
    results["reconstruction"] = {
        space: {
            m: {k: evaluate_autoencoder(aes[m], torch.from_numpy(test[m]), 64, torch.device(device))[f"val_{k}"] for k in ("ssim", "psnr")}
            for m in pair.modalities()
        }
        for space, aes in autoencoders.items()
    }
    results["pairing_ratio"] = {
        space: pairing_ratio(
            encode_slices(aes[pair.source], test[pair.source], device=device),
            encode_slices(aes[pair.target], test[pair.target], device=device),
        )
        for space, aes in autoencoders.items()
    }

    flows = {}
    for space, latents, layout, _ in VARIANTS.values():
        if (space, latents, layout) in flows:
            continue
        folder = reused_flows.get((space, latents, layout), out_dir / f"flow_{space}_{latents}_{layout}")
        settings = replace(flow, latents=latents, layout=layout)
        if (folder / "flow.pt").is_file():
            _check_reused(folder / "flow.pt", {"train_config": asdict(settings)}, OWN_MODEL_FIX)
        else:
            aes = autoencoders[space]
            train_flow(aes[pair.source], train[pair.source], train[pair.target], folder, settings,
                       device=device, progress=progress, target_ae=aes[pair.target])
        flows[(space, latents, layout)] = load_flow(folder, device=device)

    quantiles = {m: foreground_quantiles(train[m]) for m in pair.modalities()}
    results["translation"] = {}
    for direction in DIRECTIONS:
        source, target = pair.input_modality(direction), pair.output_modality(direction)
        name = f"{source}_to_{target}"
        scores = {
            "identity": score_slices(test[target], test[source]),
            "histogram matching": score_slices(test[target], match_histogram(test[source], quantiles[source], quantiles[target])),
        }
        for variant, (space, latents, layout, snap) in VARIANTS.items():
            aes = autoencoders[space]
            translated = _translate(aes[source], aes[target], flows[(space, latents, layout)], test[source],
                                    direction == "inverse", latents == "quantized", snap, device)
            scores[variant] = score_slices(test[target], translated)
        results["translation"][name] = scores
    # Training wall time per model folder; reused demo folders get the study's names.
    folders = {folder.name: folder for folder in sorted(out_dir.iterdir())}
    for space, files in reused_aes.items():
        if space == "shared":
            folders["ae_shared"] = files[pair.source].parent
        else:
            folders.update({f"ae_{m}": files[m].parent for m in pair.modalities()})
        folders[f"flow_{space}_quantized_per_level"] = reuse_dir / "flow"
    results["seconds"] = {}
    for name, folder in folders.items():
        if (folder / "history.json").is_file():
            history = json.loads((folder / "history.json").read_text())
            results["seconds"][name] = sum(record["seconds"] for record in history)
    write_json(out_dir / "latent_study.json", results)
    return results


def layout_decision(results: list[dict]) -> dict:
    """Compare shared and separate autoencoders over every direction of ``results``.

    Returns:
        ``{"wins": {"shared": n, "separate": m}, "mean_ssim": {...}, "choice": layout}``. The
        choice is the layout with the higher translation SSIM in more directions, and on a tie
        the higher mean SSIM over the directions.
    """
    wins = {layout: 0 for layout in LAYOUT_VARIANTS}
    totals = {layout: 0.0 for layout in LAYOUT_VARIANTS}
    directions = 0
    for result in results:
        for scores in result["translation"].values():
            ssim = {layout: scores[variant]["ssim"] for layout, variant in LAYOUT_VARIANTS.items()}
            wins[max(ssim, key=ssim.get)] += 1
            for layout, value in ssim.items():
                totals[layout] += value
            directions += 1
    mean = {layout: total / max(directions, 1) for layout, total in totals.items()}
    choice = max(LAYOUT_VARIANTS, key=lambda layout: (wins[layout], mean[layout]))
    return {"wins": wins, "mean_ssim": mean, "choice": choice}


def study_markdown(results: list[dict], command: str) -> str:
    """Results page of one or more pairs' ``run_latent_study`` results."""
    lines = [
        f"Generated by `{command}`; rerun that command to update this page, do not edit it.",
        "",
        "# Latent space of the flow: shared or separate autoencoders, quantised or continuous inputs",
        "",
        "See `symot_med/experiments/latent_study.py` for the variants and the metrics. Translation "
        "scores are 2D SSIM and PSNR (dB) on the held-out subjects' normalised slices, inside the "
        "ground truth's mask.",
        "",
    ]
    decision = layout_decision(results)
    directions = sum(decision["wins"].values())
    lines += [
        "## Shared or separate autoencoders",
        "",
        f"Compared as the package translates (quantised inputs, one flow per latent level, outputs snapped "
        f"to the codebooks: rows `{LAYOUT_VARIANTS['shared']}` and `{LAYOUT_VARIANTS['separate']}`), one "
        f"autoencoder per modality scores the higher translation SSIM in {decision['wins']['separate']} of "
        f"{directions} directions, one shared autoencoder in {decision['wins']['shared']}. Mean SSIM over the "
        f"directions: separate {decision['mean_ssim']['separate']:.3f}, shared {decision['mean_ssim']['shared']:.3f}. "
        f"The layout that wins more directions (on a tie, the higher mean) is **{decision['choice']}**. "
        "The per-modality autoencoders take as many optimiser steps each as the shared one, so they "
        "cost twice its training time. `symot-med demo --autoencoders` chooses the layout; the "
        "default is `DemoSettings.autoencoders`.",
        "",
        "The paired / unpaired latent distance below measures shared coordinates: a ratio near 1 "
        "means the same anatomy in the two modalities lands no nearer in latent space than "
        "different anatomy does.",
        "",
    ]
    for result in results:
        settings = result["settings"]
        lines += [
            f"## Pair {result['pair']}",
            "",
            f"Budget: autoencoders {settings['autoencoder']['epochs']} epochs (batch {settings['autoencoder']['batch_size']}), "
            f"flows {settings['flow']['epochs']} epochs (batch {settings['flow']['batch_size']}), beta {settings['flow']['beta']:g}.",
            "",
            "| method | " + " | ".join(f"{name.replace('_to_', ' -> ')} SSIM | PSNR" for name in result["translation"]) + " |",
            "|---|" + "---|---|" * len(result["translation"]),
        ]
        methods = next(iter(result["translation"].values())).keys()
        for method in methods:
            cells = " | ".join(
                f"{scores[method]['ssim']:.3f} | {scores[method]['psnr']:.2f}" for scores in result["translation"].values()
            )
            lines.append(f"| {method} | {cells} |")
        lines += ["", "| autoencoders | " + " | ".join(f"{m} reconstruction SSIM" for m in next(iter(result["reconstruction"].values()))) + " | paired / unpaired latent distance |",
                  "|---|" + "---|" * (len(next(iter(result["reconstruction"].values()))) + 1)]
        for space, per_modality in result["reconstruction"].items():
            cells = " | ".join(f"{scores['ssim']:.3f}" for scores in per_modality.values())
            lines.append(f"| {space} | {cells} | {result['pairing_ratio'][space]:.3f} |")
        lines += ["", "Wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in result["seconds"].items()) + ".", ""]
    return "\n".join(lines)
