"""Training of the SyMOT flow between two modalities' VQ-VAE-2 latent maps.

The autoencoder is frozen, and every slice is encoded once. The invertible ``LatentFlow`` T is
then trained on unpaired batches, x from the source modality and z from the target. The loss is
``symot_med.losses.symot.symot_loss`` with the reduced MMD estimator:
MMD^2(T(x), z) + MMD^2(T^-1(z), x) + beta * (cost(x, T(x)) + cost(T^-1(z), z)).

Output folder:
    ``flow.pt``: final flow weights and configuration (read by ``load_flow``);
    ``last.pt``: flow, optimiser, batch-generator states, configuration and history after the
    latest finished epoch; a new call with the same folder resumes from it;
    ``history.json``: mean loss terms per epoch.
"""

from __future__ import annotations

import logging
import math
import os
import time
from copy import deepcopy
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from symot_med.device import resolve_device
from symot_med.losses.symot import symot_loss
from symot_med.models.flow import LatentFlow
from symot_med.models.vqvae2 import VQVAE2
from symot_med.training.autoencoder import check_slices
from symot_med.training.checkpoints import check_versions, load_checkpoint, save_checkpoint, write_history
from symot_med.training.ema import WeightAverage

logger = logging.getLogger(__name__)

FINAL_NAME = "flow.pt"
LAST_NAME = "last.pt"
HISTORY_NAME = "history.json"
LOSS_TERMS = ("total", "mmd_forward", "mmd_inverse", "cost_forward", "cost_inverse")

# Largest acceptable |T^-1(T(x)) - x| on real latents after training; larger values are logged
# as a warning, because the flow would then not serve both directions.
ROUND_TRIP_TOLERANCE = 1e-4
# Latents per side used for the round-trip check.
ROUND_TRIP_SAMPLES = 64

# Relative tolerance when checking on resume that the latents are those of the interrupted run
# (they are recomputed, and a different device may round differently).
FINGERPRINT_RTOL = 1e-4


@dataclass
class FlowTrainConfig:
    """Settings of ``train_flow``: optimisation, loss weight and flow architecture.

    The subnets are narrower than the method paper's (hidden 32 with 1 residual block instead of
    8 residual blocks) so that a demo pair trains in minutes on a CPU. With these defaults one
    step on 2 x 32 latents of 96 x 96 slices takes about 0.5 CPU-seconds on one core (torch
    2.13, 2-core x86 development machine), against 1.7 s for hidden 64 with 2 residual blocks.

    Attributes:
        epochs: passes; one pass is max(len(x), len(z)) // batch_size steps.
        batch_size: samples per side (x and z) per step; at most the smaller slice count.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        lr_schedule: ``"cosine"`` (half cosine per step from ``lr`` down to
            ``lr * final_lr_fraction``) or ``"constant"``.
        final_lr_fraction: learning rate at the last step of the cosine, as a fraction of ``lr``.
        ema_decay: decay of the exponential moving average of the flow weights that ``flow.pt``
            stores for inference, or 0 to store the trained weights themselves. The first steps
            use min(ema_decay, (1 + t) / (10 + t)) at step t, so a short run is not dominated
            by the initial weights.
        beta: weight of the transport cost against the MMD terms.
        latents: flow inputs, ``"quantized"`` (snapped to the codebooks, the decoder's training
            inputs) or ``"continuous"`` (the encoder's pre-quantisation maps).
        cost_over_dims: ``"mean"`` divides each squared distance |a - b|^2 by the latent
            size D, ``"sum"`` does not.
        n_blocks: invertible coupling blocks of the flow.
        layout: ``"per_level"`` (one flow per latent level) or ``"joint"`` (one flow on all
            levels rearranged to the top level's size); see ``LatentFlow``.
        hidden: channels of the coupling subnets.
        n_res_blocks: residual blocks per coupling subnet.
        clamp: soft clamp of the coupling log-scales.
        grad_clip: maximum global gradient norm, or 0 for no clipping.
        seed: seed of the flow initialisation and of the two batch orders.
    """

    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    final_lr_fraction: float = 0.05
    ema_decay: float = 0.999
    beta: float = 1e-5
    latents: Literal["quantized", "continuous"] = "quantized"
    cost_over_dims: Literal["mean", "sum"] = "mean"
    n_blocks: int = 4
    layout: Literal["per_level", "joint"] = "per_level"
    hidden: int = 32
    n_res_blocks: int = 1
    clamp: float = 2.0
    grad_clip: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "n_blocks", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"FlowTrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ValueError(f"FlowTrainConfig.batch_size must be >= 2 for the MMD, got {self.batch_size}")
        if self.latents not in ("quantized", "continuous"):
            raise ValueError(f"FlowTrainConfig.latents must be 'quantized' or 'continuous', got {self.latents!r}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"FlowTrainConfig.lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}")
        if not 0.0 <= self.final_lr_fraction <= 1.0 or not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(
                "FlowTrainConfig needs final_lr_fraction in [0, 1] and ema_decay in [0, 1), got "
                f"{self.final_lr_fraction} and {self.ema_decay}"
            )
        if self.lr <= 0.0 or self.weight_decay < 0.0 or self.grad_clip < 0.0 or self.beta < 0.0:
            raise ValueError(
                "FlowTrainConfig needs lr > 0 and weight_decay, grad_clip, beta >= 0, got "
                f"{self.lr}, {self.weight_decay}, {self.grad_clip}, {self.beta}"
            )
        if self.cost_over_dims not in ("mean", "sum"):
            raise ValueError(
                f"FlowTrainConfig.cost_over_dims must be 'mean' or 'sum', got {self.cost_over_dims!r}"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FlowTrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown FlowTrainConfig keys {unknown}: expected a subset of {sorted(known)}")
        return cls(**values)


@torch.no_grad()
def encode_slices(
    ae: VQVAE2,
    slices: np.ndarray,
    batch_size: int = 64,
    device: str | torch.device = "auto",
    quantized: bool = True,
) -> tuple[Tensor, Tensor]:
    """Encode slices (N, 1, H, W) to latent maps with a frozen autoencoder, snapped to its
    codebooks when ``quantized``.

    The autoencoder is moved to ``device`` and put in eval mode, so its codebooks do not change.

    Returns:
        ``top`` (N, E, H/8, W/8) and ``bottom`` (N, E, H/4, W/4), float32 on the CPU.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    slices = check_slices(slices, "slices")
    device = resolve_device(device)
    ae.to(device).eval()

    tops, bottoms = [], []
    for start in range(0, slices.shape[0], batch_size):
        batch = torch.from_numpy(slices[start : start + batch_size]).to(device)
        top, bottom = ae.latents(batch, quantized=quantized)
        tops.append(top.float().cpu())
        bottoms.append(bottom.float().cpu())
    return torch.cat(tops), torch.cat(bottoms)


def train_flow(
    ae: VQVAE2,
    x_slices: np.ndarray,
    z_slices: np.ndarray,
    out_dir: str | os.PathLike,
    config: FlowTrainConfig,
    device: str | torch.device = "auto",
    progress: bool = True,
    target_ae: VQVAE2 | None = None,
) -> Path:
    """Train a ``LatentFlow`` from the source latents to the target latents; return ``flow.pt``.

    Args:
        ae: trained autoencoder shared by both modalities (or the source modality's when
            ``target_ae`` is given); it stays frozen.
        x_slices: source-modality training slices (N_x, 1, H, W), normalised.
        z_slices: target-modality training slices (N_z, 1, H, W), unpaired with ``x_slices``.
        out_dir: output folder; when it contains ``last.pt`` training resumes from it.
        config: optimisation, loss and architecture settings.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        progress: show a tqdm progress bar per epoch.
        target_ae: the target modality's own autoencoder, when each modality has one; it
            encodes ``z_slices`` and stays frozen.

    Raises:
        ValueError: for invalid arrays, a batch size above the smaller slice count, or a
            ``last.pt`` from another configuration or other latents.
        FloatingPointError: when the loss becomes NaN or infinite.
    """
    x_slices = check_slices(x_slices, "x_slices")
    z_slices = check_slices(z_slices, "z_slices")
    if x_slices.shape[2:] != z_slices.shape[2:]:
        raise ValueError(f"x and z slices differ in size: {x_slices.shape[2:]} and {z_slices.shape[2:]}")
    smaller = min(x_slices.shape[0], z_slices.shape[0])
    if config.batch_size > smaller:
        raise ValueError(
            f"batch_size {config.batch_size} exceeds the smaller slice count {smaller}; lower batch_size"
        )
    device = resolve_device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    quantized = config.latents == "quantized"
    x_latents = encode_slices(ae, x_slices, device=device, quantized=quantized)
    z_latents = encode_slices(target_ae or ae, z_slices, device=device, quantized=quantized)
    data_info = {
        "n_x": int(x_slices.shape[0]),
        "n_z": int(z_slices.shape[0]),
        "latent_shapes": [list(level.shape[1:]) for level in x_latents],
        "fingerprint": _fingerprint(x_latents) + _fingerprint(z_latents),
    }

    flow = build_flow(data_info["latent_shapes"], config).to(device)
    optimizer = torch.optim.AdamW(flow.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    average = WeightAverage(flow, config.ema_decay)
    x_generator, z_generator = _batch_generators(config.seed)
    state: dict[str, Any] = {"epoch": 0, "history": []}

    last_path = out_dir / LAST_NAME
    if last_path.exists():
        state = _resume(last_path, flow, optimizer, average, (x_generator, z_generator), config, data_info)
    logger.info(
        "training flow in %s on %s: %d source and %d target slices, latent shapes %s, "
        "epochs %d to %d, config %s",
        out_dir, device, data_info["n_x"], data_info["n_z"], data_info["latent_shapes"],
        state["epoch"] + 1, config.epochs, asdict(config),
    )

    steps_per_epoch = max(data_info["n_x"], data_info["n_z"]) // config.batch_size
    history: list[dict[str, float]] = state["history"]
    for epoch in range(state["epoch"], config.epochs):
        started = time.perf_counter()
        x_batches = _epoch_batches(data_info["n_x"], steps_per_epoch, config.batch_size, x_generator)
        z_batches = _epoch_batches(data_info["n_z"], steps_per_epoch, config.batch_size, z_generator)
        record = _train_epoch(
            flow, optimizer, average, x_latents, z_latents, x_batches, z_batches, config, device, epoch, progress
        )
        record = {"epoch": epoch + 1, **record, "seconds": time.perf_counter() - started}
        history.append(record)
        _log_epoch(record, config.epochs)

        payload = {
            "epoch": epoch + 1,
            "flow": flow.state_dict(),
            "optimizer": optimizer.state_dict(),
            "average": average.state_dict(),
            "x_generator": x_generator.get_state(),
            "z_generator": z_generator.get_state(),
            "flow_config": flow.config(),
            "train_config": asdict(config),
            "data": data_info,
            "history": history,
        }
        save_checkpoint(last_path, payload)
        write_history(out_dir / HISTORY_NAME, history)

    round_trip = round_trip_error(average.averaged, x_latents, z_latents, device)
    round_trip_float32 = round_trip_error(average.averaged, x_latents, z_latents, device, dtype=torch.float32)
    if max(round_trip.values()) > ROUND_TRIP_TOLERANCE:
        logger.warning(
            "flow round trip on training latents in float64 exceeds %g: %s; the two directions do "
            "not invert each other exactly (lower clamp or lr)", ROUND_TRIP_TOLERANCE, round_trip,
        )
    final_path = save_checkpoint(
        out_dir / FINAL_NAME,
        {
            "kind": "flow",
            "flow_config": flow.config(),
            "state_dict": average.averaged.state_dict(),
            "weights": "moving average" if config.ema_decay > 0 else "last step",
            "train_config": asdict(config),
            "data": data_info,
            "history": history,
            "round_trip": round_trip,
            "round_trip_float32": round_trip_float32,
        },
    )
    logger.info(
        "wrote %s (round trip max |error| in float64: %s, in float32: %s)", final_path, round_trip, round_trip_float32
    )
    return final_path


@torch.no_grad()
def round_trip_error(
    flow: LatentFlow,
    x_latents: tuple[Tensor, ...],
    z_latents: tuple[Tensor, ...],
    device: str | torch.device = "cpu",
    n_samples: int = ROUND_TRIP_SAMPLES,
    dtype: torch.dtype = torch.float64,
) -> dict[str, float]:
    """Largest absolute round-trip error of ``flow`` on the first ``n_samples`` latents per side.

    A copy of ``flow`` runs in ``dtype``, so ``flow`` itself is left as it is. The default,
    float64, is the precision translation uses (``TranslationNetwork``); pass ``torch.float32``
    for the precision of training.

    Returns:
        ``{"forward_then_inverse": max |T^-1(T(x)) - x|, "inverse_then_forward": max |T(T^-1(z)) - z|}``
        in latent units, over all levels.
    """
    flow_copy = deepcopy(flow).to(device=device, dtype=dtype).eval()
    x = tuple(level[:n_samples].to(device=device, dtype=dtype) for level in x_latents)
    z = tuple(level[:n_samples].to(device=device, dtype=dtype) for level in z_latents)
    x_back = flow_copy(flow_copy(x), rev=True)
    z_back = flow_copy(flow_copy(z, rev=True))
    return {
        "forward_then_inverse": max(float((a - b).abs().max()) for a, b in zip(x_back, x)),
        "inverse_then_forward": max(float((a - b).abs().max()) for a, b in zip(z_back, z)),
    }


def learning_rate(config: FlowTrainConfig, step: int, total_steps: int) -> float:
    """Learning rate of 0-based ``step`` out of ``total_steps`` under ``config.lr_schedule``."""
    if config.lr_schedule == "constant" or total_steps <= 1:
        return config.lr
    progress = min(step / (total_steps - 1), 1.0)
    final = config.lr * config.final_lr_fraction
    return final + 0.5 * (config.lr - final) * (1.0 + math.cos(math.pi * progress))


def load_flow(path: str | os.PathLike, device: str | torch.device = "cpu") -> LatentFlow:
    """Load a trained flow from ``flow.pt`` (or a folder holding it), in eval mode.

    Raises:
        ValueError: when the file is not a flow checkpoint, or was written with another FrEIA
            version (FrEIA's block parameters differ between releases).
    """
    path = Path(path)
    if path.is_dir():
        path = path / FINAL_NAME
    record = load_checkpoint(path)
    if record.get("kind") != "flow":
        raise ValueError(f"{path} is not a flow checkpoint (kind {record.get('kind')!r})")
    check_versions(record, path, strict=("FrEIA",))

    flow = LatentFlow.from_config(record["flow_config"])
    flow.load_state_dict(record["state_dict"])
    flow.to(resolve_device(device))
    flow.eval()
    return flow


def build_flow(latent_shapes: list[list[int]], config: FlowTrainConfig) -> LatentFlow:
    """Build a ``LatentFlow`` for per-level latent shapes (C, H, W), seeded by ``config.seed``."""
    return LatentFlow(
        [tuple(shape) for shape in latent_shapes],
        n_blocks=config.n_blocks,
        hidden=config.hidden,
        n_res_blocks=config.n_res_blocks,
        clamp=config.clamp,
        seed=config.seed,
        layout=config.layout,
    )


def _batch_generators(seed: int) -> tuple[torch.Generator, torch.Generator]:
    # Two independent streams, so the x and z batch orders are unrelated.
    x_seed, z_seed = (int(child.generate_state(1)[0]) for child in np.random.SeedSequence(seed).spawn(2))
    return torch.Generator().manual_seed(x_seed), torch.Generator().manual_seed(z_seed)


def _epoch_batches(n_samples: int, n_batches: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """Draw ``n_batches`` index batches of ``batch_size`` from successive random permutations.

    Each permutation gives n_samples // batch_size batches and drops its remainder, so no
    batch repeats a sample. The smaller modality goes through several permutations per epoch.
    """
    per_permutation = n_samples // batch_size
    batches: list[Tensor] = []
    for _ in range(math.ceil(n_batches / per_permutation)):
        order = torch.randperm(n_samples, generator=generator)
        batches.extend(order[: per_permutation * batch_size].split(batch_size))
    return batches[:n_batches]


def _train_epoch(
    flow: LatentFlow,
    optimizer: torch.optim.Optimizer,
    average: WeightAverage,
    x_latents: tuple[Tensor, Tensor],
    z_latents: tuple[Tensor, Tensor],
    x_batches: list[Tensor],
    z_batches: list[Tensor],
    config: FlowTrainConfig,
    device: torch.device,
    epoch: int,
    progress: bool,
) -> dict[str, float]:
    flow.train()
    sums = dict.fromkeys(LOSS_TERMS, 0.0)
    sums["grad_norm"] = 0.0
    bar = tqdm(total=len(x_batches), desc=f"flow epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False)

    total_steps = config.epochs * len(x_batches)
    for step, (x_index, z_index) in enumerate(zip(x_batches, z_batches)):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, epoch * len(x_batches) + step, total_steps)
        x = tuple(level[x_index].to(device) for level in x_latents)  # (B, E, h, w) per level
        z = tuple(level[z_index].to(device) for level in z_latents)
        terms = symot_loss(
            x,
            z,
            flow(x),
            flow(z, rev=True),
            beta=config.beta,
            variant="symmetric",
            estimator="reduced",
            cost_over_dims=config.cost_over_dims,
        )
        if not torch.isfinite(terms["total"]):
            raise FloatingPointError(
                f"flow loss became {float(terms['total'])} at epoch {epoch + 1}, step {step + 1}; "
                "lower lr or clamp, or raise grad clipping"
            )

        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        max_norm = config.grad_clip if config.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(flow.parameters(), max_norm)
        optimizer.step()
        average.update(flow)

        for key in LOSS_TERMS:
            sums[key] += float(terms[key].detach())
        sums["grad_norm"] += float(grad_norm)
        bar.update(1)
        bar.set_postfix(loss=f"{float(terms['total'].detach()):.4f}")

    bar.close()
    return {key: value / len(x_batches) for key, value in sums.items()}


def _fingerprint(latents: tuple[Tensor, ...]) -> list[float]:
    return [float(level.double().sum()) for level in latents]


def _resume(
    last_path: Path,
    flow: LatentFlow,
    optimizer: torch.optim.Optimizer,
    average: WeightAverage,
    generators: tuple[torch.Generator, torch.Generator],
    config: FlowTrainConfig,
    data_info: dict[str, Any],
) -> dict[str, Any]:
    record = load_checkpoint(last_path)
    check_versions(record, last_path, strict=("FrEIA",))
    if record.get("train_config") != asdict(config):
        raise ValueError(
            f"cannot resume from {last_path}: its train_config {record.get('train_config')} differs "
            f"from this run's {asdict(config)}; use another output folder or delete {last_path.name}"
        )
    _check_same_data(last_path, record.get("data", {}), data_info)

    flow.load_state_dict(record["flow"])
    optimizer.load_state_dict(record["optimizer"])
    average.load_state_dict(record["average"])
    generators[0].set_state(record["x_generator"])
    generators[1].set_state(record["z_generator"])
    logger.info("resuming flow training from %s after epoch %d", last_path, record["epoch"])
    return {"epoch": int(record["epoch"]), "history": list(record["history"])}


def _check_same_data(last_path: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    for key in ("n_x", "n_z", "latent_shapes"):
        if saved.get(key) != current[key]:
            raise ValueError(
                f"cannot resume from {last_path}: its {key} {saved.get(key)} differs from this "
                f"run's {current[key]}; use another output folder or delete {last_path.name}"
            )
    old, new = saved.get("fingerprint", []), current["fingerprint"]
    matches = len(old) == len(new) and all(
        math.isclose(a, b, rel_tol=FINGERPRINT_RTOL, abs_tol=FINGERPRINT_RTOL) for a, b in zip(old, new)
    )
    if not matches:
        raise ValueError(
            f"cannot resume from {last_path}: the latents differ from the interrupted run's "
            "(another autoencoder or other slices); use another output folder or delete "
            f"{last_path.name}"
        )


def _log_epoch(record: dict[str, float], epochs: int) -> None:
    logger.info(
        "flow epoch %d/%d: total %.4g, MMD forward %.4g inverse %.4g, cost forward %.4g "
        "inverse %.4g, grad norm %.3g, %.1f s",
        record["epoch"], epochs, record["total"], record["mmd_forward"], record["mmd_inverse"],
        record["cost_forward"], record["cost_inverse"], record["grad_norm"], record["seconds"],
    )
