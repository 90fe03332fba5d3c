"""Translation with a trained baseline, through the same volume path as SyMOT-Flow.

``BaselineTranslator`` only supplies the slice step. Preprocessing, restacking,
de-normalisation and ``to_native`` come from ``symot_med.inference.translate.VolumeTranslator``,
so baseline outputs are NIfTI files on the input's grid exactly like ``Translator``'s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from symot_med.baselines.histogram import match_histogram
from symot_med.baselines.networks import NetworkConfig
from symot_med.baselines.training import CARD_NAME, GAN_METHODS, build_gan, read_baseline_card, to_signed, to_unit
from symot_med.config import Direction, get_pair
from symot_med.data.transforms import IntensityScale
from symot_med.device import resolve_device
from symot_med.inference.translate import VolumeTranslator, profile_from_dict
from symot_med.training.checkpoints import check_versions, load_checkpoint


class BaselineTranslator(VolumeTranslator):
    """Load a baseline model folder (``baseline.json`` and ``baseline.pt``) and translate volumes.

    Args:
        model_dir: folder written by ``train_baseline_stage``.
        device: ``auto``, ``cpu`` or ``cuda``.
        batch_size: slices per forward pass.
    """

    def __init__(self, model_dir: str | Path, device: str = "auto", batch_size: int = 32) -> None:
        card = read_baseline_card(model_dir)
        self.method = card["method"]
        self.pair = get_pair(card["pair"])
        self.profile = profile_from_dict(card["profile"])
        self.intensity = {m: IntensityScale(s["low"], s["high"]) for m, s in card["intensity"].items()}
        self.device = resolve_device(device)
        self.batch_size = batch_size

        record = load_checkpoint(card["checkpoint"])
        check_versions(record, card["checkpoint"])
        if record.get("method") != self.method:
            raise ValueError(
                f"{card['checkpoint']} contains method {record.get('method')!r} but {CARD_NAME} names "
                f"{self.method!r}; retrain the baseline into a new folder"
            )
        trained_shape = record.get("data", {}).get("slice_shape")
        if trained_shape is not None and trained_shape != list(self.profile.slice_size):
            raise ValueError(
                f"{card['checkpoint']} was trained on slices of {trained_shape}, but profile.slice_size in "
                f"{Path(card['checkpoint']).parent / CARD_NAME} is {list(self.profile.slice_size)}; restore the file "
                "written by `symot-med baseline train`"
            )
        if self.method in GAN_METHODS:
            self.model = build_gan(self.method, NetworkConfig.from_dict(record["network"]), seed=0)
            self.model.load_state_dict(record["state_dict"])
            self.model.to(self.device).eval()
        else:
            self.quantiles = {"a": record["quantiles_a"].numpy(), "b": record["quantiles_b"].numpy()}

    @torch.no_grad()
    def translate_slices(self, slices: np.ndarray, direction: Direction) -> np.ndarray:
        """Translate normalised slices (B, 1, H, W) in [0, 1]; ``forward`` is source to target."""
        if direction not in ("forward", "inverse"):
            raise ValueError(f"direction must be 'forward' or 'inverse', got {direction!r}")
        to_target = direction == "forward"
        if self.method not in GAN_METHODS:
            source, target = ("a", "b") if to_target else ("b", "a")
            return match_histogram(slices, self.quantiles[source], self.quantiles[target])

        outputs = []
        for start in range(0, len(slices), self.batch_size):
            x = to_signed(torch.from_numpy(slices[start : start + self.batch_size]).to(self.device))
            outputs.append(to_unit(self.model.translate(x, to_b=to_target)).cpu().numpy())
        return np.concatenate(outputs, axis=0) if outputs else np.zeros_like(slices)
