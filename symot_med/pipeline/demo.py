"""The demo: the whole chain on the generated demo cohort, for both pairs and all four directions.

OUT/cohort                       demo cohort (BraTS-2021 and SynthRAD2023 layouts)
OUT/<pair>/cache                 slice cache
OUT/<pair>/autoencoder           VQ-VAE-2 checkpoints and history (autoencoder/<modality>
                                 with one autoencoder per modality)
OUT/<pair>/flow                  flow checkpoints, history and model.json
OUT/<pair>/histogram             histogram-matching floor fitted on the training slices
OUT/translated/<in>_to_<out>/    translated NIfTI of every held-out subject
OUT/floors/histogram_matching/   the floor's NIfTI outputs, same layout
OUT/metrics.json                 SSIM and PSNR per direction and subject, with the floors
                                 (identity, histogram matching), the autoencoder's reconstruction
                                 scores on the held-out subjects and the flow's round trip
OUT/summary.md                   the same means as markdown tables, with stage timings
OUT/translations.png             input | translated | ground truth
OUT/reconstructions.png          held-out slice | autoencoder reconstruction | difference
OUT/settings.json                the resolved settings

Every stage skips or resumes work already done in OUT, so an interrupted demo can be rerun.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from tqdm.auto import tqdm

from symot_med.baselines.networks import NetworkConfig
from symot_med.baselines.training import BaselineTrainConfig, train_baseline_stage
from symot_med.baselines.translate import BaselineTranslator
from symot_med.config import AUTOENCODER_LAYOUTS, DIRECTIONS, PAIRS, Pair, get_profile
from symot_med.data.demo_cohort import MAX_SUBJECTS, generate_demo_cohort
from symot_med.data.slices import SliceCache
from symot_med.data.transforms import threshold_mask
from symot_med.device import resolve_device
from symot_med.evaluation.figures import FigureRow, reconstruction_figure, translation_figure
from symot_med.evaluation.metrics import score_volume
from symot_med.inference.translate import Translator, VolumeTranslator
from symot_med.io import atomic_path, check_replaceable_page, read_json, write_json
from symot_med.models.vqvae2 import VQVAE2Config
from symot_med.pipeline.stages import prepare, train_autoencoders_stage, train_flow_stage
from symot_med.training.autoencoder import HISTORY_NAME as AUTOENCODER_HISTORY
from symot_med.training.autoencoder import AETrainConfig, evaluate_autoencoder, load_autoencoder
from symot_med.training.flow import HISTORY_NAME as FLOW_HISTORY
from symot_med.training.flow import ROUND_TRIP_SAMPLES, FlowTrainConfig, encode_slices, round_trip_error

# Methods scored in every direction: the model and the two floors.
METHODS = ("translated", "histogram_matching", "identity")

logger = logging.getLogger(__name__)


@dataclass
class DemoSettings:
    """Settings of one demo run; the defaults train both pairs on a 2-core CPU.

    ``autoencoders`` is ``shared`` (one VQ-VAE-2 for both modalities of a pair) or ``separate``
    (one per modality); the other fields are described with their configuration classes.
    """

    seed: int = 0
    subjects: int = 12
    test_fraction: float = 0.25
    profile: str = "demo"
    device: str = "auto"
    # One autoencoder per modality translated better in all four directions of the latent study
    # (docs/results/latent_study.md), at twice the autoencoder training time.
    autoencoders: str = "separate"
    autoencoder: AETrainConfig = field(default_factory=AETrainConfig)
    model: VQVAE2Config = field(default_factory=VQVAE2Config)
    flow: FlowTrainConfig = field(default_factory=FlowTrainConfig)
    pairs: tuple[str, ...] = ("t1t2", "ctmr")

    def __post_init__(self) -> None:
        max_subjects = min(MAX_SUBJECTS.values())
        valid = isinstance(self.subjects, int) and not isinstance(self.subjects, bool)
        if not valid or not 2 <= self.subjects <= max_subjects:
            raise ValueError(
                f"subjects (--subjects) must be an integer from 2, so that one subject is held out for testing, "
                f"to {max_subjects}, the number of SynthRAD case ids; got {self.subjects!r}"
            )
        if self.autoencoders not in AUTOENCODER_LAYOUTS:
            raise ValueError(f"autoencoders must be one of {AUTOENCODER_LAYOUTS}, got {self.autoencoders!r}")

    def to_dict(self) -> dict:
        return asdict(self)


# Settings that a rerun into an existing folder may change: they do not change what is trained.
RERUN_SETTINGS = ("device", "pairs")


def check_settings_match(out_dir: Path, settings: DemoSettings) -> None:
    """Raise ValueError when ``out_dir`` contains a demo run with other settings.

    A rerun reuses every finished stage, so other settings would silently score models trained
    with the earlier ones. ``device`` and ``pairs`` may differ.
    """
    path = out_dir / "settings.json"
    if not path.is_file():
        return

    previous = read_json(path)
    current = json.loads(json.dumps(settings.to_dict()))
    differing = []
    for key in sorted(set(previous) | set(current)):
        if key in RERUN_SETTINGS:
            continue
        old, new = previous.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            differing += [
                f"{key}.{name} ({old.get(name)!r} there, {new.get(name)!r} now)"
                for name in sorted(set(old) | set(new))
                if old.get(name) != new.get(name)
            ]
        elif old != new:
            differing.append(f"{key} ({old!r} there, {new!r} now)")
    if differing:
        raise ValueError(
            f"{out_dir} contains a demo run with other settings: {', '.join(differing)} differ from "
            f"{path}. Its finished stages would be reused, so pass the options of that run again or "
            "choose a new --out folder"
        )


def _ground_truth_mask(case_files: dict, modality: str) -> np.ndarray:
    """Mask for scoring in native space: the SynthRAD mask file, else the ground truth's foreground."""
    if case_files.get("mask"):
        return np.asarray(nib.load(case_files["mask"]).get_fdata()) > 0.5
    ground_truth = np.asarray(nib.load(case_files[modality]).get_fdata(), dtype=np.float32)
    return threshold_mask(ground_truth, modality)


def _case_files(cache: SliceCache, case_id: str, pair: Pair) -> dict:
    files = {m: str(cache.source_file(case_id, m)) for m in pair.modalities()}
    mask = Path(files[pair.source]).parent / "mask.nii.gz"
    files["mask"] = str(mask) if mask.is_file() else None
    return files


def evaluate_direction(
    translator: Translator,
    floor: VolumeTranslator,
    cache: SliceCache,
    pair: Pair,
    direction: str,
    out_dirs: dict[str, Path],
    progress: bool,
) -> tuple[dict, list[Path]]:
    """Translate every held-out case in ``direction`` with the model and the histogram-matching
    ``floor``, and score both and the identity (the input scored as the output).

    Args:
        out_dirs: output folder per written method (``translated``, ``histogram_matching``).

    Returns:
        The direction's scores (per case and mean per method) and the model's written files.
    """
    input_modality = pair.input_modality(direction)
    output_modality = pair.output_modality(direction)
    per_case = {}
    written = []

    test_ids = cache.case_ids("test")
    for case_id in tqdm(test_ids, desc=f"translate {input_modality}->{output_modality}", unit="case", disable=not progress):
        files = _case_files(cache, case_id, pair)
        out_path = translator.translate_file(files[input_modality], direction, out_dirs["translated"], mask_path=files["mask"])
        floor_path = floor.translate_file(files[input_modality], direction, out_dirs["histogram_matching"], mask_path=files["mask"])
        written.append(out_path)

        mask = _ground_truth_mask(files, output_modality)
        ground_truth = np.asarray(nib.load(files[output_modality]).get_fdata(), dtype=np.float32)
        outputs = {
            "translated": np.asarray(nib.load(str(out_path)).get_fdata(), dtype=np.float32),
            "histogram_matching": np.asarray(nib.load(str(floor_path)).get_fdata(), dtype=np.float32),
        }
        identity = np.asarray(nib.load(files[input_modality]).get_fdata(), dtype=np.float32)

        per_case[case_id] = {
            method: score_volume(ground_truth, output, mask, output_modality) for method, output in outputs.items()
        }
        per_case[case_id]["identity"] = score_volume(ground_truth, identity, mask, output_modality, input_modality)

    summary = {
        method: {
            metric: float(np.mean([c[method][metric] for c in per_case.values()]))
            for metric in ("ssim", "psnr")
        }
        for method in METHODS
    }
    return {"input": input_modality, "output": output_modality, "mean": summary, "cases": per_case}, written


@torch.no_grad()
def middle_reconstructions(
    autoencoder_paths: dict[str, Path], cache: SliceCache, device: str
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Reconstruct the middle held-out slice of each modality through its autoencoder's codebooks.

    Returns:
        ``(title, slice, reconstruction)`` per modality, each array (H, W) in normalised units.
    """
    rows = []
    for modality, path in autoencoder_paths.items():
        autoencoder = load_autoencoder(path, device=device).eval()
        slices = cache.slices(modality, "test")
        index = len(slices) // 2
        image = torch.from_numpy(slices[index : index + 1]).to(next(autoencoder.parameters()).device)
        reconstruction = autoencoder.decode(*autoencoder.latents(image, quantized=True))
        rows.append((f"{modality}, held-out slice {index}", slices[index, 0], reconstruction[0, 0].cpu().numpy()))
    return rows


def autoencoder_scores(autoencoder_paths: dict[str, Path], cache: SliceCache, device: str) -> dict[str, dict[str, float]]:
    """Reconstruction scores of each modality's autoencoder on the held-out subjects' slices.

    Args:
        autoencoder_paths: ``autoencoder.pt`` of each modality (the same file when shared).

    Returns:
        ``{modality: {"ssim": ..., "psnr": ..., "slices": N}}``: 2D SSIM (Gaussian window of 11
        pixels, sigma 1.5) and PSNR in dB on whole normalised slices with data range 1, through
        the codebooks, averaged over the modality's held-out slices.
    """
    scores = {}
    for modality in cache.manifest["intensity"]:
        model = load_autoencoder(autoencoder_paths[modality], device=resolve_device(device))
        slices = torch.from_numpy(cache.slices(modality, "test"))
        record = evaluate_autoencoder(model, slices, batch_size=64, device=next(model.parameters()).device)
        scores[modality] = {"ssim": record["val_ssim"], "psnr": record["val_psnr"], "slices": int(slices.shape[0])}
    return scores


def flow_round_trip(translator: Translator, cache: SliceCache) -> dict[str, dict[str, float]]:
    """Measure the round-trip error of the translator's flow on the first training slices' latents.

    Returns:
        ``{"round_trip": ..., "round_trip_float32": ...}``, each as from ``round_trip_error``:
        in float64, the precision translation runs the flow in, and in float32, the training
        precision.
    """
    pair = translator.pair
    target_autoencoder = translator.target_autoencoder
    if target_autoencoder is None:
        target_autoencoder = translator.autoencoder
    latents = [
        encode_slices(
            autoencoder,
            cache.slices(modality, "train")[:ROUND_TRIP_SAMPLES],
            device=translator.device,
            quantized=translator.quantized_inputs,
        )
        for autoencoder, modality in ((translator.autoencoder, pair.source), (target_autoencoder, pair.target))
    ]
    return {
        "round_trip": round_trip_error(translator.flow, *latents, translator.device),
        "round_trip_float32": round_trip_error(translator.flow, *latents, translator.device, dtype=torch.float32),
    }


def training_seconds(autoencoder_paths: dict[str, Path], flow_dir: Path) -> dict[str, float]:
    """Sum the per-epoch seconds in the autoencoders' and the flow's ``history.json``.

    The histories keep the epochs of interrupted runs, so the sums stay the same when a rerun
    reuses finished models, while this run's stage timings are then close to 0.

    Returns:
        ``{"autoencoder": seconds over all autoencoders of the pair, "flow": seconds}``.
    """
    histories = {
        "autoencoder": sorted({Path(path).parent / AUTOENCODER_HISTORY for path in autoencoder_paths.values()}),
        "flow": [flow_dir / FLOW_HISTORY],
    }
    totals = {}
    for stage, paths in histories.items():
        totals[stage] = round(sum(record["seconds"] for path in paths for record in read_json(path)), 1)
    return totals


def run_demo(out_dir: str | Path, settings: DemoSettings, progress: bool = True, command: str = "symot-med demo") -> dict:
    """Run the demo into ``out_dir`` and return the metrics dict also written to ``metrics.json``.

    ``command`` is the command line named at the top of ``summary.md``.
    """
    out_dir = Path(out_dir)
    # Check the device before settings.json is written, so a typo in it does not block a rerun.
    resolve_device(settings.device)
    check_settings_match(out_dir, settings)
    check_replaceable_page(out_dir / "summary.md", "--out", "demo", earlier_titles=("# Demo results",))
    out_dir.mkdir(parents=True, exist_ok=True)
    logger.info("demo settings: %s", settings.to_dict())
    write_json(out_dir / "settings.json", settings.to_dict())

    timings = {}
    start = time.perf_counter()
    cohort = generate_demo_cohort(out_dir / "cohort", seed=settings.seed, n_subjects=settings.subjects, progress=progress)
    timings["demo_data"] = time.perf_counter() - start

    metrics: dict = {"command": command, "directions": {}, "autoencoder": {}, "flow": {}, "settings": settings.to_dict()}
    figure_rows = []
    reconstruction_rows = []
    for pair_name in settings.pairs:
        pair = PAIRS[pair_name]
        run_dir = out_dir / pair.name
        profile = get_profile(settings.profile, pair.dataset)
        flow_config = FlowTrainConfig(**{**asdict(settings.flow), "beta": pair.beta})

        start = time.perf_counter()
        cache_dir = prepare(cohort[pair.dataset], pair, profile, run_dir / "cache", settings.seed, settings.test_fraction, progress)
        timings[f"{pair.name}_prepare"] = time.perf_counter() - start

        start = time.perf_counter()
        autoencoders = train_autoencoders_stage(
            cache_dir, run_dir / "autoencoder", settings.autoencoder, settings.model, settings.device, progress,
            layout=settings.autoencoders,
        )
        timings[f"{pair.name}_train_autoencoder"] = time.perf_counter() - start

        start = time.perf_counter()
        model_dir = train_flow_stage(cache_dir, autoencoders, run_dir / "flow", pair, flow_config, settings.device, progress)
        timings[f"{pair.name}_train_flow"] = time.perf_counter() - start

        start = time.perf_counter()
        floor_dir = train_baseline_stage(
            "histogram", cache_dir, run_dir / "histogram", BaselineTrainConfig(), NetworkConfig(), settings.device, progress
        )
        timings[f"{pair.name}_fit_histogram_matching"] = time.perf_counter() - start

        start = time.perf_counter()
        cache = SliceCache.open(cache_dir)
        metrics["autoencoder"][pair.name] = autoencoder_scores(autoencoders, cache, settings.device)
        reconstruction_rows += middle_reconstructions(autoencoders, cache, settings.device)
        translator = Translator(model_dir, device=settings.device)
        metrics["flow"][pair.name] = flow_round_trip(translator, cache)
        metrics.setdefault("training_s", {})[pair.name] = training_seconds(autoencoders, Path(model_dir))
        floor = BaselineTranslator(floor_dir, device=settings.device)
        for direction in DIRECTIONS:
            name = f"{pair.input_modality(direction)}_to_{pair.output_modality(direction)}"
            out_dirs = {
                "translated": out_dir / "translated" / name,
                "histogram_matching": out_dir / "floors" / "histogram_matching" / name,
            }
            result, written = evaluate_direction(translator, floor, cache, pair, direction, out_dirs, progress)
            metrics["directions"][name] = result

            case_id = cache.case_ids("test")[0]
            files = _case_files(cache, case_id, pair)
            figure_rows.append(
                FigureRow(
                    title=f"{name} {case_id}",
                    input_file=Path(files[result["input"]]),
                    translated_file=written[0],
                    ground_truth_file=Path(files[result["output"]]),
                    input_modality=result["input"],
                    output_modality=result["output"],
                )
            )
        timings[f"{pair.name}_translate_and_score"] = time.perf_counter() - start

    translation_figure(figure_rows, out_dir / "translations.png")
    reconstruction_figure(reconstruction_rows, out_dir / "reconstructions.png")
    metrics["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    metrics["environment"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_cores": os.cpu_count(),
        "device": str(translator.device),
    }
    write_json(out_dir / "metrics.json", metrics)
    write_summary(metrics, out_dir / "summary.md")
    return metrics


def summary_markdown(metrics: dict) -> str:
    """Markdown tables: mean SSIM and PSNR per direction beside the floors, the autoencoder's
    reconstruction scores, the flow's round trip, and the stage timings."""
    lines = [
        f"Generated by `{metrics.get('command', 'symot-med demo')}`; rerun that command to update this page, do not edit it.",
        "",
        "# Demo results",
        "",
        "Translation of the held-out subjects (3D, inside the ground truth's mask, mean over subjects):",
        "",
        "| direction | SSIM translated | SSIM histogram matching | SSIM identity "
        "| PSNR translated (dB) | PSNR histogram matching (dB) | PSNR identity (dB) | held-out subjects |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, result in metrics["directions"].items():
        mean = result["mean"]
        ssim = " | ".join(f"{mean[method]['ssim']:.3f}" for method in METHODS)
        psnr = " | ".join(f"{mean[method]['psnr']:.2f}" for method in METHODS)
        lines.append(f"| {name.replace('_to_', ' -> ')} | {ssim} | {psnr} | {len(result['cases'])} |")

    layout = metrics["settings"].get("autoencoders", "shared")
    autoencoders = "one autoencoder for both modalities of a pair" if layout == "shared" else "one autoencoder per modality"
    lines += [
        "",
        f"Autoencoder reconstruction of the held-out subjects' slices ({autoencoders}; 2D, whole slice, data range 1):",
        "",
        "| pair | modality | SSIM | PSNR (dB) | slices |",
        "|---|---|---|---|---|",
    ]
    for pair_name, per_modality in metrics["autoencoder"].items():
        for modality, scores in per_modality.items():
            lines.append(f"| {pair_name} | {modality} | {scores['ssim']:.3f} | {scores['psnr']:.2f} | {scores['slices']} |")
    lines += [
        "",
        "Figures in the same folder: `translations.png` (input | translated | ground truth) and "
        "`reconstructions.png` (the middle held-out slice of each modality | its reconstruction | "
        "absolute difference).",
    ]

    lines += [
        "",
        f"Flow round trip on the latents of the first {ROUND_TRIP_SAMPLES} training slices per modality, "
        "max |T^-1(T(x)) - x| and max |T(T^-1(z)) - z|, in float64 as translation runs the flow "
        "(in float32, the training precision, in brackets):",
        "",
    ]
    for pair_name, flow in metrics["flow"].items():
        trip, trip32 = flow["round_trip"], flow["round_trip_float32"]
        lines.append(
            f"- {pair_name}: {trip['forward_then_inverse']:.2e} and {trip['inverse_then_forward']:.2e} "
            f"({trip32['forward_then_inverse']:.2e} and {trip32['inverse_then_forward']:.2e})"
        )

    timings = metrics["timings_s"]
    total = sum(timings.values())
    training = metrics["training_s"]
    lines += ["", "Training time (min, summed over the epochs in the training histories): " + ", ".join(
        f"{pair_name} autoencoder {training[pair_name]['autoencoder'] / 60:.1f}, flow {training[pair_name]['flow'] / 60:.1f}"
        for pair_name in metrics["autoencoder"]
    ) + "."]
    lines += ["", f"Wall time of this run: {total / 60:.1f} min in total; per stage (s): "
              + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
              + ". A stage that found its results from an earlier run took about 0 s."]
    environment = metrics["environment"]
    lines += ["", f"Python {environment['python']}, torch {environment['torch']}, "
              f"{environment['cpu_cores']} CPU cores, {environment['torch_threads']} torch threads, device {environment['device']}."]
    return "\n".join(lines) + "\n"


def write_summary(metrics: dict, path: Path) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_text(summary_markdown(metrics))
    return path
