"""Translate 3D volumes with a trained autoencoder and flow, back into the input's own space.

volume -> MONAI preprocessing -> axial slices (B, 1, H, W) -> VQ-VAE-2 latents -> T or T^-1
-> decode -> restack (H, W, D) -> de-normalise to the output modality's units -> resample onto
the input's grid -> NIfTI with the input's shape, affine and header.

Everything except the slice step is shared: ``translate_volume_with`` runs the volume path for
any function from normalised slices to normalised slices, so the baselines in
``symot_med.baselines`` write their volumes exactly as ``Translator`` does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from symot_med import __version__
from symot_med.bundle.network import TranslationNetwork
from symot_med.card_check import CardChecker
from symot_med.config import Direction, Pair, Profile, get_pair
from symot_med.data.layouts import match_layout
from symot_med.data.transforms import (
    CT_RANGE_HU,
    IntensityScale,
    background_value,
    modality_kind,
    preprocess_volume,
    to_native,
)
from symot_med.device import resolve_device
from symot_med.io import relative_to_folder, resolve_from_folder, save_nifti, write_json
from symot_med.training.autoencoder import load_autoencoder
from symot_med.training.checkpoints import load_checkpoint
from symot_med.training.flow import load_flow

logger = logging.getLogger(__name__)

MODEL_FILE = "model.json"


def write_model_card(
    model_dir: str | Path,
    pair: Pair,
    profile: Profile,
    intensity: dict[str, dict],
    autoencoder: Path | Mapping[str, Path],
    flow: Path,
) -> Path:
    """Write ``model.json``: everything ``Translator`` needs besides the checkpoints.

    Args:
        autoencoder: one ``autoencoder.pt`` shared by both modalities, or a mapping from each of
            the pair's modalities to its own ``autoencoder.pt``.
    """
    model_dir = Path(model_dir)
    if isinstance(autoencoder, Mapping):
        if set(autoencoder) != set(pair.modalities()):
            raise ValueError(
                f"invalid autoencoders for pair {pair.name}: given for {sorted(autoencoder)}; pass one path "
                f"for each of {sorted(pair.modalities())}, or one shared path"
            )
        autoencoders = {m: relative_to_folder(autoencoder[m], model_dir) for m in pair.modalities()}
    else:
        autoencoders = {m: relative_to_folder(autoencoder, model_dir) for m in pair.modalities()}
    payload = {
        "pair": pair.name,
        "source": pair.source,
        "target": pair.target,
        "profile": profile.to_dict(),
        "intensity": intensity,
        "autoencoders": autoencoders,
        "flow": relative_to_folder(flow, model_dir),
    }
    return write_json(model_dir / MODEL_FILE, payload)


def card_autoencoders(card: dict) -> dict[str, str]:
    """Autoencoder file of each modality in a model card. Older cards name one shared
    ``autoencoder`` instead of ``autoencoders``."""
    if "autoencoders" in card:
        return dict(card["autoencoders"])
    return {card["source"]: card["autoencoder"], card["target"]: card["autoencoder"]}


def output_name(image_path: Path, input_modality: str, output_modality: str) -> str:
    """File name of a translated volume: ``<case>_<in>_to_<out>.nii.gz``.

    The case is the parent folder's name when it is a case folder of a known layout (so
    SynthRAD's ``1BA001/mr.nii.gz`` and ``1BA002/mr.nii.gz`` do not collide), else the file
    stem without a trailing ``_<in>``, so ``scan_t1.nii.gz`` gives ``scan_t1_to_t2.nii.gz``.
    """
    if match_layout(image_path.parent.name) is not None:
        case = image_path.parent.name
    else:
        case = image_path.name.removesuffix(".gz").removesuffix(".nii")
        suffix = f"_{input_modality}"
        if case.lower().endswith(suffix) and len(case) > len(suffix):
            case = case[: -len(suffix)]
    return f"{case}_{input_modality}_to_{output_modality}.nii.gz"


def check_output_folder(out_dir: Path, inputs: Sequence[Path], folders: Sequence[Path] = ()) -> None:
    """Raise ValueError when ``out_dir`` is, or lies inside, an input's folder or one of ``folders``.

    Args:
        out_dir: output folder, which need not exist yet.
        inputs: input files; the folder of each is protected.
        folders: further input folders to protect, such as the data set folder the inputs were
            found in (its case folders are the inputs' own folders, so those alone miss it).
    """
    resolved = out_dir.resolve()
    protected = [path.resolve().parent for path in inputs] + [Path(folder).resolve() for folder in folders]
    for folder in protected:
        if resolved == folder or folder in resolved.parents:
            relation = "is the input folder" if resolved == folder else "is inside the input folder"
            raise ValueError(f"output folder {out_dir} {relation} {folder}; choose an output folder outside {folder}")


@dataclass
class TranslatedVolume:
    """A translated volume on the input's grid: ``array`` (X, Y, Z) in the output modality's
    native units (HU for CT), with the input image as ``reference``."""

    array: np.ndarray
    reference: nib.Nifti1Image
    input_modality: str
    output_modality: str


def model_card_path(model_dir: str | Path) -> Path:
    """Return the path of ``model.json`` for a model folder, or for the card file itself."""
    if Path(model_dir).name == MODEL_FILE and Path(model_dir).is_file():
        return Path(model_dir)
    return Path(model_dir) / MODEL_FILE


def read_model_card(model_dir: str | Path) -> dict:
    """Return the ``model.json`` of ``model_dir`` (the folder, or the card file itself) with absolute checkpoint paths.

    Raises:
        FileNotFoundError: naming ``model.json`` when it is absent.
    """
    card_path = model_card_path(model_dir)
    model_dir = card_path.parent
    if not card_path.exists():
        raise FileNotFoundError(f"{card_path} not found; pass the folder written by `symot-med train-flow`")
    card = CardChecker(card_path, "symot-med train-flow").read()
    check_model_card(card, card_path)

    # Cards store checkpoint paths relative to the model folder, so they are made absolute here.
    if "autoencoders" in card:
        card["autoencoders"] = {m: resolve_from_folder(path, model_dir) for m, path in card["autoencoders"].items()}
    if "autoencoder" in card:
        card["autoencoder"] = resolve_from_folder(card["autoencoder"], model_dir)
    if "flow" in card:
        card["flow"] = resolve_from_folder(card["flow"], model_dir)
    return card


def check_model_card(card: object, card_path: Path) -> None:
    """Raise ValueError naming ``card_path`` and the first missing or invalid field of a model card.

    Cards are written by ``write_model_card``, so this catches hand edits and damaged files
    before they surface as a bare KeyError or TypeError.
    """
    checker = CardChecker(card_path, "symot-med train-flow")
    modalities = checker.check_common(card)
    if any(size % 8 for size in card["profile"]["slice_size"]):
        checker.invalid(
            f"invalid field 'profile.slice_size': the autoencoder needs multiples of 8, got "
            f"{card['profile']['slice_size']!r}"
        )
    checker.expect("flow", str, card, "flow")

    if "autoencoders" in card:
        checker.expect("autoencoders", dict, card, "autoencoders")
        checker.expect_modalities("autoencoders", card, modalities)
        for modality in card["autoencoders"]:
            checker.expect(modality, str, card["autoencoders"], f"autoencoders.{modality}")
        return

    # Older cards name one shared autoencoder and the pair's two modalities.
    for key in ("autoencoder", "source", "target"):
        checker.expect(key, str, card, key)
    if sorted([card["source"], card["target"]]) != modalities:
        checker.invalid(
            f"invalid fields 'source' and 'target': they are {card['source']!r} and {card['target']!r}, "
            f"expected {modalities} for pair {card['pair']!r}"
        )


SliceFunction = Callable[[np.ndarray], np.ndarray]
"""Translation of normalised slices: (B, 1, H, W) float32 in [0, 1] to the same shape and range."""


def translate_volume_with(
    translate_slices: SliceFunction,
    image_path: str | Path,
    input_modality: str,
    output_modality: str,
    profile: Profile,
    output_scale: IntensityScale,
    mask_path: str | Path | None = None,
) -> TranslatedVolume:
    """Translate one volume slice by slice with any slice function, back onto the input's grid.

    The volume goes through the same MONAI preprocessing as the training slices, and the axial
    slices that touch the mask are passed to ``translate_slices``. The result is restacked and
    de-normalised with ``output_scale`` into the output modality's units. ``to_native`` then
    resamples it onto the input's grid, and voxels outside the mask get the output modality's
    background value.

    Args:
        translate_slices: maps (B, 1, H, W) float32 slices in [0, 1] to translated slices of the
            same shape in [0, 1].
        image_path: NIfTI file of ``input_modality``.
        input_modality: modality of ``image_path``.
        output_modality: modality written.
        profile: preprocessing geometry the slice function was trained with.
        output_scale: native scale of ``output_modality`` (the training cases' median).
        mask_path: mask NIfTI; without one the mask is a threshold of the input.
    """
    image_path = Path(image_path)
    volume = preprocess_volume(image_path, input_modality, profile, mask_path=mask_path)

    # (H, W, D) -> (D, 1, H, W); only slices that touch the mask are translated.
    slices = np.moveaxis(volume.image, 2, 0)[:, None]
    touched = np.flatnonzero(volume.mask.reshape(-1, volume.mask.shape[2]).any(axis=0))
    translated = np.zeros_like(slices)
    if touched.size:
        translated[touched] = translate_slices(np.ascontiguousarray(slices[touched]))
    normalised = np.moveaxis(translated[:, 0], 0, 2) * volume.mask

    background = background_value(output_modality)
    native_units = output_scale.denormalise(normalised)
    native_units[volume.mask < 0.5] = background
    array = to_native(native_units, volume.record, fill=background)
    native_mask = to_native(volume.mask, volume.record, fill=0.0, mode="nearest") > 0.5
    array[~native_mask] = background

    return TranslatedVolume(
        array=cast_output(array, output_modality),
        reference=nib.load(str(image_path)),
        input_modality=input_modality,
        output_modality=output_modality,
    )


def write_translated_volume(result: TranslatedVolume, image_path: str | Path, out_dir: str | Path) -> Path:
    """Write ``result`` into ``out_dir`` under ``output_name`` and return the file written."""
    image_path = Path(image_path)
    out_path = Path(out_dir) / output_name(image_path, result.input_modality, result.output_modality)
    if out_path.exists():
        logger.warning("replacing %s, an output of an earlier run", out_path)
    description = f"symot-med {__version__} {result.input_modality} to {result.output_modality}"
    save_nifti(out_path, result.array, result.reference, description)
    logger.info("wrote %s", out_path)
    return out_path


class VolumeTranslator:
    """Volume and file translation for any model that translates normalised slices.

    Subclasses set ``pair``, ``profile`` and ``intensity`` (native scale per modality) and
    implement ``translate_slices``; SyMOT-Flow and the baselines share everything else.
    """

    pair: Pair
    profile: Profile
    intensity: dict[str, IntensityScale]

    def translate_slices(self, slices: np.ndarray, direction: Direction) -> np.ndarray:
        raise NotImplementedError

    def translate_volume(
        self, image_path: str | Path, direction: Direction, mask_path: str | Path | None = None
    ) -> TranslatedVolume:
        """Translate one volume of the input modality of ``direction``."""
        output_modality = self.pair.output_modality(direction)
        return translate_volume_with(
            lambda slices: self.translate_slices(slices, direction),
            image_path,
            self.pair.input_modality(direction),
            output_modality,
            self.profile,
            self.intensity[output_modality],
            mask_path=mask_path,
        )

    def translate_file(
        self, image_path: str | Path, direction: Direction, out_dir: str | Path, mask_path: str | Path | None = None
    ) -> Path:
        """Translate ``image_path`` and write the result into ``out_dir``; return the file written."""
        image_path = Path(image_path)
        check_output_folder(Path(out_dir), [image_path])
        result = self.translate_volume(image_path, direction, mask_path)
        return write_translated_volume(result, image_path, out_dir)


def profile_from_dict(values: dict) -> Profile:
    """Rebuild a ``Profile`` from its JSON form (lists become tuples)."""
    return Profile(**{**values, "spacing": tuple(values["spacing"]), "slice_size": tuple(values["slice_size"])})


class Translator(VolumeTranslator):
    """Load a trained model folder (``model.json``, autoencoders and flow) and translate volumes.

    ``autoencoder`` is the source modality's VQ-VAE-2, and ``target_autoencoder`` the target's,
    or None when one autoencoder serves both.

    Args:
        model_dir: folder with ``model.json`` as written by ``write_model_card``.
        device: ``auto``, ``cpu`` or ``cuda``.
        batch_size: slices per forward pass.
    """

    def __init__(self, model_dir: str | Path, device: str = "auto", batch_size: int = 32) -> None:
        card = read_model_card(model_dir)

        self.pair = get_pair(card["pair"])
        self.profile = profile_from_dict(card["profile"])
        self.intensity = {m: IntensityScale(s["low"], s["high"]) for m, s in card["intensity"].items()}
        self.device = resolve_device(device)
        self.batch_size = batch_size
        files = card_autoencoders(card)
        for path in [*files.values(), card["flow"]]:
            if not Path(path).is_file():
                raise FileNotFoundError(
                    f"checkpoint {path}, named in {model_card_path(model_dir)}, not found; copy or move the whole "
                    "run folder (the model folder with its autoencoders), or train the model again"
                )
        self.autoencoder = load_autoencoder(files[self.pair.source], device=self.device).eval()
        self.target_autoencoder = None
        if files[self.pair.target] != files[self.pair.source]:
            self.target_autoencoder = load_autoencoder(files[self.pair.target], device=self.device).eval()
        self.flow = load_flow(card["flow"], device=self.device).eval()
        flow_record = load_checkpoint(card["flow"])
        self.quantized_inputs = flow_record.get("train_config", {}).get("latents", "quantized") == "quantized"

        # The flow's latent maps fix the slice size, so a card whose profile gives another size
        # would fail deep in the flow, or allocate huge slices first.
        trained_shapes = flow_record.get("data", {}).get("latent_shapes")
        card_shapes = [list(shape) for shape in self.autoencoder.latent_shapes(*self.profile.slice_size)]
        if trained_shapes is not None and trained_shapes != card_shapes:
            raise ValueError(
                f"{model_card_path(model_dir)}: profile.slice_size {list(self.profile.slice_size)} gives latent maps "
                f"{card_shapes}, but {card['flow']} was trained on {trained_shapes}. Restore the file written by "
                "`symot-med train-flow`."
            )

    @torch.no_grad()
    def translate_slices(self, slices: np.ndarray, direction: Direction) -> np.ndarray:
        """Translate normalised slices.

        Args:
            slices: (B, 1, H, W) float32 in [0, 1].
            direction: ``forward`` (source to target) or ``inverse`` (target to source).

        Returns:
            (B, 1, H, W) float32 translated slices, clipped to [0, 1].
        """
        network = TranslationNetwork(
            self.autoencoder,
            self.flow,
            direction,
            quantized_inputs=self.quantized_inputs,
            target_autoencoder=self.target_autoencoder,
        )
        outputs = []
        for start in range(0, len(slices), self.batch_size):
            x = torch.from_numpy(slices[start : start + self.batch_size]).to(self.device)
            outputs.append(network(x).cpu().numpy())
        return np.concatenate(outputs, axis=0) if outputs else np.zeros_like(slices)


def cast_output(array: np.ndarray, modality: str) -> np.ndarray:
    """CT becomes int16 HU, rounded and clipped to [-1024, 3000] before the cast; MR stays float32."""
    if modality_kind(modality) == "ct":
        return np.clip(np.rint(array), *CT_RANGE_HU).astype(np.int16)
    return array.astype(np.float32)
