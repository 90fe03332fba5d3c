"""Training of the VQ-VAE-2 autoencoder shared by both modalities of a pair.

One autoencoder is trained on the slices of both modalities pooled together, so that the two
modalities' latent maps live in one coordinate system and the flow's transport cost compares
like with like.

Output folder:
    ``autoencoder.pt``: final weights and configuration (read by ``load_autoencoder``);
    ``last.pt``: model, optimiser, shuffle-generator state, configuration and history after
    the latest finished epoch; a new call with the same folder resumes from it;
    ``history.json``: one record per epoch (losses, validation PSNR and SSIM, codebook use).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import PSNRMetric, SSIMMetric
from monai.metrics.regression import compute_ssim_and_cs
from torch import Tensor
from tqdm.auto import tqdm

from symot_med.device import resolve_device
from symot_med.models.quantizer import codebook_stats
from symot_med.models.vqvae2 import VQVAE2, VQVAE2Config
from symot_med.training.checkpoints import check_versions, load_checkpoint, save_checkpoint, write_history

logger = logging.getLogger(__name__)

FINAL_NAME = "autoencoder.pt"
LAST_NAME = "last.pt"
HISTORY_NAME = "history.json"

# Validation metrics use a fixed data range, not one taken from each batch, so scores are
# comparable across batches and runs. Slices are normalised to about [0, 1].
DATA_RANGE = 1.0


@dataclass
class AETrainConfig:
    """Optimisation settings of ``train_autoencoder``.

    The defaults are the demo profile's. Small batches give many more optimiser steps for the
    same CPU time. On the demo cohort's 96 x 96 T1/T2 slices, 16 epochs at batch 4 and learning
    rate 1e-3 reached a validation SSIM of 0.92. With batch 16 and 2e-3, 16 epochs reached 0.88.
    The demo's ``summary.md`` reports the held-out SSIM of the defaults.

    Attributes:
        epochs: passes over the training slices.
        batch_size: slices per optimiser step; the last batch of an epoch may be smaller.
        lr: peak Adam learning rate.
        seed: seed of the weight initialisation, shuffling and codebook restarts.
        recon_loss: ``"l1"`` (mean absolute error), ``"mse"`` (mean squared error) or
            ``"l1_ssim"`` (mean absolute error plus 1 - SSIM, MONAI's Gaussian window of 11
            pixels, data range 1) between slice and reconstruction; the commitment loss is
            added to it.
        lr_schedule: ``"cosine"`` (decay from ``lr`` to 0 over all steps) or ``"constant"``.
        weight_decay: Adam weight decay.
        grad_clip: maximum global gradient norm, or 0 for no clipping.
        val_batch_size: slices per forward pass during validation.
    """

    epochs: int = 20
    batch_size: int = 4
    lr: float = 1e-3
    seed: int = 0
    # On the demo's held-out CT/MR subjects, L1 + SSIM reconstructed CT / MR at SSIM 0.970 / 0.943
    # against 0.958 / 0.933 with L1 alone, at about 1.5 times the time per epoch
    # (benchmarks/README.md).
    recon_loss: Literal["l1", "mse", "l1_ssim"] = "l1_ssim"
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    val_batch_size: int = 64

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.val_batch_size < 1:
            raise ValueError(
                "AETrainConfig.epochs, batch_size and val_batch_size must be >= 1, got "
                f"{self.epochs}, {self.batch_size} and {self.val_batch_size}"
            )
        if self.lr <= 0.0 or self.weight_decay < 0.0 or self.grad_clip < 0.0:
            raise ValueError(
                f"AETrainConfig needs lr > 0, weight_decay >= 0 and grad_clip >= 0, got "
                f"{self.lr}, {self.weight_decay} and {self.grad_clip}"
            )
        if self.recon_loss not in ("l1", "mse", "l1_ssim"):
            raise ValueError(f"AETrainConfig.recon_loss must be 'l1', 'mse' or 'l1_ssim', got {self.recon_loss!r}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(
                f"AETrainConfig.lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AETrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown AETrainConfig keys {unknown}: expected a subset of {sorted(known)}")
        return cls(**values)


def check_slices(slices: np.ndarray, name: str) -> np.ndarray:
    """Validate a slice array (N, 1, H, W) and return it as contiguous float32."""
    if not isinstance(slices, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array of shape (N, 1, H, W), got {type(slices).__name__}")
    if slices.ndim != 4 or slices.shape[1] != 1 or slices.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, 1, H, W) with N >= 1, got {slices.shape}")
    if not np.isfinite(slices).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return np.ascontiguousarray(slices, dtype=np.float32)


def build_model(model_config: VQVAE2Config, seed: int) -> VQVAE2:
    """Build a ``VQVAE2`` whose initial weights depend only on ``seed``.

    torch's layer initialisers draw from the global generator, so it is seeded inside
    ``fork_rng``, which restores the caller's generator state afterwards.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VQVAE2(model_config)


def train_autoencoder(
    train: np.ndarray,
    val: np.ndarray,
    out_dir: str | os.PathLike,
    config: AETrainConfig,
    model_config: VQVAE2Config,
    device: str | torch.device = "auto",
    progress: bool = True,
    modalities: Sequence[str] | None = None,
) -> Path:
    """Train a VQ-VAE-2 on normalised slices and return the path of ``autoencoder.pt``.

    Args:
        train: float32 slices (N, 1, H, W) of both modalities pooled, normalised to about
            [0, 1]; H and W divisible by 8.
        val: float32 slices (M, 1, H, W) for the per-epoch PSNR and SSIM (data range 1).
        out_dir: output folder; when it contains ``last.pt`` training resumes from it.
        config: optimisation settings.
        model_config: architecture.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        progress: show a tqdm progress bar per epoch.
        modalities: the modalities the slices come from, recorded in the checkpoint so that
            flow training can check it is given the right autoencoder; None records none.

    Raises:
        ValueError: for invalid slice arrays, or a ``last.pt`` written with another
            configuration or other data sizes.
        FloatingPointError: when the loss becomes NaN or infinite.
    """
    train = check_slices(train, "train")
    val = check_slices(val, "val")
    if train.shape[2:] != val.shape[2:]:
        raise ValueError(f"train and val slices differ in size: {train.shape[2:]} and {val.shape[2:]}")
    device = resolve_device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_info = {"n_train": int(train.shape[0]), "n_val": int(val.shape[0]), "slice_shape": list(train.shape[2:])}
    if modalities is not None:
        data_info["modalities"] = list(modalities)

    model = build_model(model_config, config.seed)
    model.latent_shapes(*train.shape[2:])  # rejects sizes not divisible by 8 before training
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    shuffle_generator = torch.Generator().manual_seed(config.seed)
    state = {"epoch": 0, "history": []}

    last_path = out_dir / LAST_NAME
    if last_path.exists():
        state = _resume(last_path, model, optimizer, shuffle_generator, config, model_config, data_info)
    logger.info(
        "training autoencoder in %s on %s: %d train and %d val slices of %s, epochs %d to %d, "
        "train config %s, model config %s",
        out_dir, device, data_info["n_train"], data_info["n_val"], data_info["slice_shape"],
        state["epoch"] + 1, config.epochs, asdict(config), asdict(model_config),
    )

    train_tensor = torch.from_numpy(train)
    val_tensor = torch.from_numpy(val)
    steps_per_epoch = math.ceil(train.shape[0] / config.batch_size)
    history: list[dict[str, float]] = state["history"]

    for epoch in range(state["epoch"], config.epochs):
        started = time.perf_counter()
        order = torch.randperm(train.shape[0], generator=shuffle_generator)
        train_record = _train_epoch(
            model, optimizer, train_tensor, order, config, device, epoch, steps_per_epoch, progress
        )
        val_record = evaluate_autoencoder(model, val_tensor, config.val_batch_size, device)

        record = {"epoch": epoch + 1, **train_record, **val_record, "seconds": time.perf_counter() - started}
        history.append(record)
        _log_epoch(record, config.epochs)

        payload = {
            "epoch": epoch + 1,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "shuffle_generator": shuffle_generator.get_state(),
            "model_config": asdict(model_config),
            "train_config": asdict(config),
            "data": data_info,
            "history": history,
        }
        save_checkpoint(last_path, payload)
        write_history(out_dir / HISTORY_NAME, history)

    final_path = save_checkpoint(
        out_dir / FINAL_NAME,
        {
            "kind": "autoencoder",
            "model_config": asdict(model_config),
            "state_dict": model.state_dict(),
            "train_config": asdict(config),
            "data": data_info,
            "history": history,
        },
    )
    logger.info("wrote %s", final_path)
    return final_path


def load_autoencoder(path: str | os.PathLike, device: str | torch.device = "cpu") -> VQVAE2:
    """Load a trained autoencoder from ``autoencoder.pt`` (or a folder holding it), in eval mode."""
    path = Path(path)
    if path.is_dir():
        path = path / FINAL_NAME
    record = load_checkpoint(path)
    if record.get("kind") != "autoencoder":
        raise ValueError(f"{path} is not an autoencoder checkpoint (kind {record.get('kind')!r})")
    check_versions(record, path)

    model = VQVAE2(VQVAE2Config.from_dict(record["model_config"]))
    model.load_state_dict(record["state_dict"])
    model.to(resolve_device(device))
    model.eval()
    return model


@torch.no_grad()
def evaluate_autoencoder(model: VQVAE2, slices: Tensor, batch_size: int, device: torch.device) -> dict[str, float]:
    """Reconstruct ``slices`` (N, 1, H, W) in eval mode and return validation scores.

    Returns:
        ``val_psnr`` in dB and ``val_ssim`` (MONAI's Gaussian window of 11 pixels, sigma 1.5),
        both with data range 1, averaged over slices, on reconstructions that are not clipped.
        ``val_l1`` is the mean absolute error. ``{top,bottom}_{perplexity,usage}`` describe the
        codebook use over all slices.
    """
    was_training = model.training
    model.eval()
    psnr = PSNRMetric(max_val=DATA_RANGE)
    ssim = SSIMMetric(spatial_dims=2, data_range=DATA_RANGE)
    abs_error_sum = 0.0
    indices: dict[str, list[Tensor]] = {"top": [], "bottom": []}

    for start in range(0, slices.shape[0], batch_size):
        x = slices[start : start + batch_size].to(device)
        top, bottom = model.encode(x)
        top_q, _, index_top = model.quantizer_top.quantize(top)
        bottom_q, _, index_bottom = model.quantizer_bottom.quantize(bottom)
        recon = model.decode(top_q, bottom_q)

        psnr(y_pred=recon, y=x)
        ssim(y_pred=recon, y=x)
        abs_error_sum += float((recon - x).abs().sum())
        indices["top"].append(index_top.cpu())
        indices["bottom"].append(index_bottom.cpu())

    record = {
        "val_psnr": float(psnr.aggregate()),
        "val_ssim": float(ssim.aggregate()),
        "val_l1": abs_error_sum / slices.numel(),
    }
    for level, level_indices in indices.items():
        stats = codebook_stats(torch.cat(level_indices), model.config.n_embed)
        record.update({f"{level}_{key}": value for key, value in stats.items()})
    model.train(was_training)
    return record


def reconstruction_loss(recon: Tensor, x: Tensor, kind: str) -> Tensor:
    """Return the mean absolute (``"l1"``) or mean squared (``"mse"``) error of (B, C, H, W) maps,
    or for ``"l1_ssim"`` the mean absolute error plus 1 - SSIM (data range 1)."""
    if kind == "l1":
        return F.l1_loss(recon, x)
    elif kind == "l1_ssim":
        ssim = compute_ssim_and_cs(recon, x, spatial_dims=2, kernel_size=(11, 11), kernel_sigma=(1.5, 1.5),
                                   data_range=DATA_RANGE, kernel_type="gaussian")[0]
        return F.l1_loss(recon, x) + (1.0 - ssim.mean())
    elif kind == "mse":
        return F.mse_loss(recon, x)
    else:
        raise ValueError(f"reconstruction loss must be 'l1' or 'mse', got {kind!r}")


def learning_rate(step: int, total_steps: int, config: AETrainConfig) -> float:
    """Return the learning rate for optimiser step ``step`` (0-based) of ``total_steps``."""
    if config.lr_schedule == "constant":
        return config.lr
    elif config.lr_schedule == "cosine":
        return 0.5 * config.lr * (1.0 + math.cos(math.pi * step / total_steps))
    else:
        raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {config.lr_schedule!r}")


def _train_epoch(
    model: VQVAE2,
    optimizer: torch.optim.Optimizer,
    slices: Tensor,
    order: Tensor,
    config: AETrainConfig,
    device: torch.device,
    epoch: int,
    steps_per_epoch: int,
    progress: bool,
) -> dict[str, float]:
    model.train()
    total_steps = steps_per_epoch * config.epochs
    sums = {"train_loss": 0.0, "train_recon": 0.0, "train_vq": 0.0, "restarts": 0.0}
    bar = tqdm(
        total=steps_per_epoch,
        desc=f"autoencoder epoch {epoch + 1}/{config.epochs}",
        disable=not progress,
        leave=False,
    )

    for step in range(steps_per_epoch):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(epoch * steps_per_epoch + step, total_steps, config)

        batch = slices[order[step * config.batch_size : (step + 1) * config.batch_size]].to(device)
        recon, vq_loss, stats = model(batch)
        recon_loss = reconstruction_loss(recon, batch, config.recon_loss)
        loss = recon_loss + vq_loss
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"autoencoder loss became {float(loss)} at epoch {epoch + 1}, step {step + 1}; "
                "lower lr or check the slices for extreme values"
            )

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()

        sums["train_loss"] += float(loss.detach())
        sums["train_recon"] += float(recon_loss.detach())
        sums["train_vq"] += float(vq_loss.detach())
        sums["restarts"] += stats["top_restarts"] + stats["bottom_restarts"]
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.detach()):.4f}")

    bar.close()
    means = {key: value / steps_per_epoch for key, value in sums.items() if key != "restarts"}
    means["restarts"] = sums["restarts"]
    return means


def _resume(
    last_path: Path,
    model: VQVAE2,
    optimizer: torch.optim.Optimizer,
    shuffle_generator: torch.Generator,
    config: AETrainConfig,
    model_config: VQVAE2Config,
    data_info: dict[str, Any],
) -> dict[str, Any]:
    record = load_checkpoint(last_path)
    if "modalities" not in record.get("data", {}):
        # Checkpoints of earlier versions do not record the modalities.
        data_info = {key: value for key, value in data_info.items() if key != "modalities"}
    expected = {"model_config": asdict(model_config), "train_config": asdict(config), "data": data_info}
    for key, value in expected.items():
        if record.get(key) != value:
            raise ValueError(
                f"cannot resume from {last_path}: its {key} {record.get(key)} differs from this "
                f"run's {value}; use another output folder or delete {last_path.name}"
            )
    check_versions(record, last_path)

    model.load_state_dict(record["model"])
    optimizer.load_state_dict(record["optimizer"])
    shuffle_generator.set_state(record["shuffle_generator"])
    logger.info("resuming autoencoder training from %s after epoch %d", last_path, record["epoch"])
    return {"epoch": int(record["epoch"]), "history": list(record["history"])}


def _log_epoch(record: dict[str, float], epochs: int) -> None:
    logger.info(
        "autoencoder epoch %d/%d: loss %.4f (recon %.4f, vq %.4f), val PSNR %.2f dB, SSIM %.4f, "
        "perplexity top %.1f bottom %.1f, usage top %.2f bottom %.2f, %d restarts, %.1f s",
        record["epoch"], epochs, record["train_loss"], record["train_recon"], record["train_vq"],
        record["val_psnr"], record["val_ssim"], record["top_perplexity"], record["bottom_perplexity"],
        record["top_usage"], record["bottom_usage"], record["restarts"], record["seconds"],
    )

