"""Scores of translated volumes in native space for the bundles' evaluate configs.

The scores are those of ``symot_med.evaluation.metrics``. Each volume is first put on [0, 1] by
its own modality's rule (MR: in-mask 0.5th and 99.5th percentiles; CT: [-1024, 3000] HU). SSIM
(7-voxel window, 3D) and PSNR (dB) are then computed inside the mask with data range 1.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric
from monai.transforms import MapTransform
from torch import Tensor

from symot_med.data.transforms import threshold_mask
from symot_med.evaluation.metrics import masked_psnr, masked_ssim, normalise_for_metrics

SCORES = ("ssim", "psnr")


class ScoringMaskd(MapTransform):
    """Add ``label_and_mask`` (2, X, Y, Z): the ground truth and the mask to score in.

    The mask is ``mask_key`` (a loaded mask file, for SynthRAD2023) when present, else the
    ground truth's foreground (``symot_med.data.transforms.threshold_mask``), the rule of the
    package's demo.

    Args:
        modality: modality of the ground truth.
        label_key: ground truth (1, X, Y, Z) in native units on the input's grid.
        mask_key: optional mask (1, X, Y, Z) on the same grid.
        output_key: key of the stacked result.
    """

    def __init__(
        self, modality: str, label_key: str = "label", mask_key: str = "scoring_mask", output_key: str = "label_and_mask"
    ) -> None:
        super().__init__(keys=[label_key])
        self.modality = modality
        self.label_key = label_key
        self.mask_key = mask_key
        self.output_key = output_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        label = torch.as_tensor(d[self.label_key]).float()
        if self.mask_key in d:
            mask = torch.as_tensor(d[self.mask_key]).float() > 0.5
        else:
            mask = torch.from_numpy(threshold_mask(label[0].cpu().numpy(), self.modality))[None]
        if mask.shape != label.shape:
            raise ValueError(f"{self.mask_key} has shape {tuple(mask.shape)} but {self.label_key} has {tuple(label.shape)}")
        d[self.output_key] = torch.cat([label, mask.to(label)], dim=0)
        return d


class TranslationScore(CumulativeIterationMetric):
    """SSIM or PSNR of volumes in native units inside a mask, one value per volume.

    ``y_pred`` (B, 1, X, Y, Z) is the translated volume, or the input volume for the identity
    baseline. ``y`` (B, 2, X, Y, Z) comes from ``ScoringMaskd``. ``aggregate`` returns the mean.

    Args:
        score: ``ssim`` or ``psnr``.
        modality: modality of the ground truth, which sets its normalisation.
        prediction_modality: modality of ``y_pred`` when it differs (the identity baseline
            scores the input as if it were the output); default ``modality``.
    """

    def __init__(self, score: str, modality: str, prediction_modality: str | None = None) -> None:
        super().__init__()
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        self.score = score
        self.modality = modality
        self.prediction_modality = prediction_modality or modality

    def _compute_tensor(self, y_pred: Tensor, y: Tensor) -> Tensor:  # type: ignore[override]
        if y.dim() != 5 or y.shape[1] != 2 or y_pred.shape[1] != 1 or y_pred.shape[2:] != y.shape[2:]:
            raise ValueError(
                f"expected y_pred (B, 1, X, Y, Z) and y (B, 2, X, Y, Z) on one grid, got "
                f"{tuple(y_pred.shape)} and {tuple(y.shape)}"
            )
        values = []
        for prediction, label_and_mask in zip(y_pred, y):
            truth = label_and_mask[0].cpu().numpy().astype(np.float32)
            mask = label_and_mask[1].cpu().numpy() > 0.5
            predicted = prediction[0].cpu().numpy().astype(np.float32)
            truth = normalise_for_metrics(truth, self.modality, mask)
            predicted = normalise_for_metrics(predicted, self.prediction_modality, mask)
            if self.score == "ssim":
                values.append(masked_ssim(truth, predicted, mask, data_range=1.0))
            else:
                values.append(masked_psnr(truth, predicted, mask, data_range=1.0))
        return torch.tensor(values, dtype=torch.float64)[:, None]

    def aggregate(self) -> Tensor:  # type: ignore[override]
        data = self.get_buffer()
        if not isinstance(data, Tensor) or data.numel() == 0:
            raise ValueError("no volumes were scored")
        return data.mean()
