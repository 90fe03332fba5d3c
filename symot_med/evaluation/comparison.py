"""Comparison of translation methods on the held-out subjects of a slice cache.

For one modality pair, every method translates every test case in both directions through
the same volume path (preprocessing, slices, ``to_native``). Each NIfTI output is scored
against the ground truth in native space with ``score_translation``. FID and KID compare the
axial slices of all outputs of a direction with those of the ground truth. The identity method
scores the input volume itself.

Layout of the work folder (``work_dir``):
    translated/<method>/<in>_to_<out>/<case>_<in>_to_<out>.nii.gz    outputs (kept; reruns skip them)
    translated/<method>/<in>_to_<out>/timings.json                   seconds per translated volume
    features/<sha1>.npy                                              Inception features per image set
    scores/<sha1>.json                                               scores per output and ground truth
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from symot_med.config import DIRECTIONS, Pair, get_pair
from symot_med.data.slices import SliceCache
from symot_med.data.transforms import threshold_mask
from symot_med.evaluation.fid import FeatureFunction, fid_and_kid, volume_slices_for_fid
from symot_med.evaluation.metrics import normalise_for_metrics, score_translation
from symot_med.io import read_json, write_json

logger = logging.getLogger(__name__)

IDENTITY = "identity"


@dataclass
class Method:
    """A method of the comparison.

    Attributes:
        name: short name used in folder names and tables.
        translator: object with ``translate_file(image, direction, out_dir, mask_path)``
            (``Translator`` or ``BaselineTranslator``); None for the identity method.
        budget: ``epochs`` (text), ``train_seconds``, ``parameters`` and a ``note``.
    """

    name: str
    translator: object | None
    budget: dict = field(default_factory=dict)


@dataclass
class CaseFiles:
    """NIfTI files of one held-out subject."""

    case_id: str
    images: dict[str, Path]
    mask: Path | None


def case_files(cache: SliceCache, case_id: str, pair: Pair) -> CaseFiles:
    """Return the subject's image per modality and its mask file (``mask.nii.gz`` beside the
    images, as in SynthRAD2023), or None where there is none."""
    images = {modality: cache.source_file(case_id, modality) for modality in pair.modalities()}
    mask = images[pair.source].parent / "mask.nii.gz"
    return CaseFiles(case_id, images, mask if mask.is_file() else None)


def load_canonical(path: Path) -> np.ndarray:
    """(X, Y, Z) float32 array of ``path`` reoriented to RAS, so the last axis is axial."""
    return np.asarray(nib.as_closest_canonical(nib.load(str(path))).get_fdata(), dtype=np.float32)


def scoring_mask(files: CaseFiles, ground_truth: np.ndarray, modality: str) -> np.ndarray:
    """Return the mask file in RAS when there is one, else ``threshold_mask`` of the ground truth."""
    if files.mask is not None:
        return load_canonical(files.mask) > 0.5
    return threshold_mask(ground_truth, modality)


def translate_cases(
    method: Method, cases: list[CaseFiles], pair: Pair, direction: str, out_dir: Path, progress: bool
) -> dict[str, Path]:
    """Translate every case with ``method`` into ``out_dir`` unless its output exists.

    Seconds per newly translated volume (preprocessing, model and resampling) are added to
    ``out_dir/timings.json``. Returns the output file per case id.
    """
    input_modality = pair.input_modality(direction)
    timings_path = out_dir / "timings.json"
    timings = read_json(timings_path) if timings_path.is_file() else {}
    outputs = {}
    for files in tqdm(cases, desc=f"{method.name} {input_modality}->{pair.output_modality(direction)}", disable=not progress):
        expected = out_dir / f"{files.case_id}_{input_modality}_to_{pair.output_modality(direction)}.nii.gz"
        image = files.images[input_modality]
        if expected.is_file() and files.case_id in timings:
            outputs[files.case_id] = expected
            continue
        started = time.perf_counter()
        outputs[files.case_id] = Path(method.translator.translate_file(image, direction, out_dir, mask_path=files.mask))
        timings[files.case_id] = time.perf_counter() - started
        write_json(timings_path, timings)
    return outputs


# Part of every score cache key: raise it when a metric changes, so cached scores are recomputed.
SCORES_VERSION = 1


def file_digest(*parts: Path | str | None) -> str:
    """SHA-1 over the bytes of the given files (a string or None stands for itself)."""
    digest = hashlib.sha1()
    for part in parts:
        if isinstance(part, Path):
            digest.update(part.read_bytes())
        else:
            digest.update(repr(part).encode())
    return digest.hexdigest()


def cached_scores(folder: Path, key: str, compute) -> dict[str, float]:
    """Return the scores stored under ``key`` in ``folder``, else compute and store them."""
    path = folder / f"{key}.json"
    if path.is_file():
        return {name: float(value) for name, value in read_json(path).items()}
    scores = compute()
    write_json(path, {name: repr(value) if not np.isfinite(value) else value for name, value in scores.items()})
    return scores


def summarise(per_case: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation (ddof 0) over cases of each score; infinite PSNRs are kept
    out of the mean and counted in ``n_infinite``."""
    summary: dict[str, dict[str, float]] = {}
    names = sorted({name for scores in per_case.values() for name in scores})
    for name in names:
        values = np.array([scores[name] for scores in per_case.values() if name in scores], dtype=np.float64)
        finite = values[np.isfinite(values)]
        summary[name] = {
            "mean": float(finite.mean()) if finite.size else float("nan"),
            "std": float(finite.std()) if finite.size else float("nan"),
            "n": int(values.size),
            "n_infinite": int(values.size - finite.size),
        }
    return summary


class FeatureCache:
    """Features of image sets, kept in memory and in ``folder`` by the SHA-1 of the images."""

    def __init__(self, extract: FeatureFunction, folder: Path | None, tag: str) -> None:
        self.extract = extract
        self.folder = folder
        self.tag = tag
        self.memory: dict[str, np.ndarray] = {}

    def __call__(self, images: np.ndarray) -> np.ndarray:
        digest = hashlib.sha1(self.tag.encode() + np.ascontiguousarray(images, dtype=np.float32).tobytes()).hexdigest()
        if digest in self.memory:
            return self.memory[digest]
        path = self.folder / f"{digest}.npy" if self.folder is not None else None
        if path is not None and path.is_file():
            features = np.load(path)
        else:
            features = self.extract(images)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                np.save(path, features)
        self.memory[digest] = features
        return features


@dataclass
class DirectionResult:
    """Scores of every method in one direction, and the arrays of the figure's case."""

    scores: dict = field(default_factory=dict)
    figure_arrays: dict = field(default_factory=dict)
    figure_case: str = ""


def evaluate_direction(
    methods: list[Method],
    cache: SliceCache,
    pair: Pair,
    direction: str,
    work_dir: Path,
    features: FeatureCache | None,
    fid_images: int,
    progress: bool = True,
) -> DirectionResult:
    """Translate, score and compare every method in ``direction`` on the cache's test cases.

    Args:
        methods: the methods; a method named ``identity`` scores the input volume itself.
        cache: slice cache whose test split and source files define the cases.
        pair: the cache's modality pair.
        direction: ``forward`` or ``inverse``.
        work_dir: folder for translated volumes and features (see the module docstring).
        features: feature extractor with cache, or None to skip FID and KID.
        fid_images: maximum images per set for FID and KID, spread evenly over all cases.
    """
    input_modality = pair.input_modality(direction)
    output_modality = pair.output_modality(direction)
    name = f"{input_modality}_to_{output_modality}"
    cases = [case_files(cache, case_id, pair) for case_id in cache.case_ids("test")]
    per_case_images = max(1, -(-fid_images // len(cases)))

    outputs = {}
    for method in methods:
        if method.name != IDENTITY:
            out_dir = work_dir / "translated" / method.name / name
            outputs[method.name] = translate_cases(method, cases, pair, direction, out_dir, progress)

    result = DirectionResult(figure_case=cases[0].case_id)
    per_method_cases: dict[str, dict] = {m.name: {} for m in methods}
    images: dict[str, list[np.ndarray]] = {m.name: [] for m in methods}
    real_images: list[np.ndarray] = []

    for files in tqdm(cases, desc=f"score {name}", disable=not progress):
        ground_truth = load_canonical(files.images[output_modality])
        mask = scoring_mask(files, ground_truth, output_modality)
        truth_normalised = normalise_for_metrics(ground_truth, output_modality, mask)
        real_images.append(volume_slices_for_fid(truth_normalised, mask, per_case_images))
        if files.case_id == result.figure_case:
            result.figure_arrays["ground truth"] = truth_normalised
            result.figure_arrays["input"] = normalise_for_metrics(
                load_canonical(files.images[input_modality]), input_modality, mask
            )
            result.figure_arrays["mask"] = mask

        for method in methods:
            if method.name == IDENTITY:
                prediction, prediction_modality = load_canonical(files.images[input_modality]), input_modality
            else:
                prediction, prediction_modality = load_canonical(outputs[method.name][files.case_id]), output_modality
            if prediction.shape != ground_truth.shape:
                raise ValueError(
                    f"{method.name} output for {files.case_id} has shape {prediction.shape}, the ground truth "
                    f"{ground_truth.shape}; translated volumes must be on the ground truth's grid"
                )
            prediction_file = files.images[input_modality] if method.name == IDENTITY else outputs[method.name][files.case_id]
            key = file_digest(
                prediction_file, files.images[output_modality], files.mask, output_modality, prediction_modality, SCORES_VERSION
            )
            per_method_cases[method.name][files.case_id] = cached_scores(
                work_dir / "scores",
                key,
                lambda: score_translation(ground_truth, prediction, mask, output_modality, prediction_modality),
            )
            normalised = normalise_for_metrics(prediction, prediction_modality, mask)
            images[method.name].append(volume_slices_for_fid(normalised, mask, per_case_images))
            if files.case_id == result.figure_case:
                result.figure_arrays[method.name] = normalised

    real = _stack_images(real_images, fid_images)
    for method in methods:
        entry = {"cases": per_method_cases[method.name], "summary": summarise(per_method_cases[method.name])}
        if method.name in outputs:
            timings = read_json(work_dir / "translated" / method.name / name / "timings.json")
            entry["inference_seconds_per_volume"] = float(np.mean([timings[c.case_id] for c in cases]))
        if features is not None:
            generated = _stack_images(images[method.name], fid_images)
            entry["distribution"] = fid_and_kid(features(real), features(generated))
            logger.info(
                "%s %s: FID %.2f, KID %.4f from %d images per set",
                name, method.name, entry["distribution"]["fid"], entry["distribution"]["kid"], real.shape[0],
            )
        result.scores[method.name] = entry
    return result


def _stack_images(per_case: list[np.ndarray], limit: int) -> np.ndarray:
    """Images (N, 1, S, S) of all cases zero-padded to the largest S among the cases, then at
    most ``limit`` of them spread evenly. Real and generated sets get the same padding because
    their crops come from the same masks."""
    size = max(images.shape[-1] for images in per_case)
    padded = []
    for images in per_case:
        offset = (size - images.shape[-1]) // 2
        canvas = np.zeros((images.shape[0], 1, size, size), dtype=np.float32)
        canvas[:, :, offset : offset + images.shape[-1], offset : offset + images.shape[-1]] = images
        padded.append(canvas)
    stacked = np.concatenate(padded, axis=0)
    if stacked.shape[0] > limit:
        keep = np.unique(np.round(np.linspace(0, stacked.shape[0] - 1, limit)).astype(int))
        stacked = stacked[keep]
    return stacked


def evaluate_pair(
    methods: list[Method],
    cache_dir: Path,
    work_dir: Path,
    features: FeatureCache | None,
    fid_images: int,
    progress: bool = True,
) -> tuple[dict, dict[str, DirectionResult]]:
    """Run ``evaluate_direction`` in both directions of the cache's pair.

    Returns the JSON-ready results ({direction name: {method: scores}}) and the raw results
    per direction (for the figure).
    """
    cache = SliceCache.open(cache_dir)
    pair = get_pair(cache.manifest["pair"])
    results, raw = {}, {}
    for direction in DIRECTIONS:
        name = f"{pair.input_modality(direction)}_to_{pair.output_modality(direction)}"
        raw[name] = evaluate_direction(methods, cache, pair, direction, work_dir, features, fid_images, progress)
        results[name] = {
            "pair": pair.name,
            "input": pair.input_modality(direction),
            "output": pair.output_modality(direction),
            "test_cases": cache.case_ids("test"),
            "methods": raw[name].scores,
        }
    return results, raw
