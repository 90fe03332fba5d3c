"""Training harness of the toy experiments: one flow, one method, one budget.

All methods share :class:`ToyTrainConfig`, so they get the same flow architecture, optimiser,
learning-rate schedule, batch size, number of steps, initial weights and batch order. Only
the loss (:func:`symot_med.toy.methods.method_loss`) and its weight beta differ.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from symot_med.losses import median_bandwidth
from symot_med.models.flow import build_dense_flow
from symot_med.toy.methods import METHODS, Method, method_loss, needs_inverse

logger = logging.getLogger(__name__)

# Loss terms recorded in the history, when the method has them.
HISTORY_KEYS = (
    "total", "mmd_forward", "mmd_inverse", "sw_forward", "sw_inverse", "cost_forward", "cost_inverse",
)


# Bandwidth multipliers 2^-6 .. 2^0 of the training MMD. The toy sets have structure (noise,
# cluster widths) at 1/60 to 1/10 of their median pairwise distance, which the package's default
# ladder 2^-2 .. 2^2 does not resolve. With that ladder, Moons to Circles ended at about 4 times
# the report MMD^2 in our development runs (1000 steps, beta 0.01).
TOY_MMD_SCALES: tuple[float, ...] = (1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)


@dataclass(frozen=True)
class ToyTrainConfig:
    """Budget and architecture shared by every method of a toy run.

    Attributes:
        steps: optimiser steps.
        batch_size: points per side (x and z) per step, drawn without replacement.
        lr: peak AdamW learning rate.
        final_lr: learning rate at the last step; the rate decays from ``lr`` to it along a
            half cosine after ``warmup_steps`` of linear warm-up.
        warmup_steps: steps of linear warm-up from ``lr / warmup_steps`` to ``lr``.
        weight_decay: AdamW weight decay.
        grad_clip: maximum global gradient norm, or 0 for no clipping.
        n_blocks: FrEIA ``AllInOneBlock`` coupling blocks of the dense flow.
        hidden: width of the two hidden layers of each coupling subnet.
        clamp: soft clamp of the coupling log-scales.
        mmd_scales: multipliers of the base bandwidth, one Gaussian kernel each, for the
            training MMD.
        mmd_bandwidth: base bandwidth of the training MMD. "data" is the median pairwise
            distance of the pooled training sets x and z, computed once per run. "batch"
            recomputes the median of each MMD term's pooled batch at every step.
        n_projections: directions of the sliced Wasserstein distance (SWOT-Flow only).
        seed: seed of the flow's initial weights, the batch order and the SW directions.
    """

    # 1500 steps left SyMOT-Flow's MMD^2 at 3.2x to 5.2x the noise floor on Moons to Circles and
    # 8 Gauss to 8 Gauss. 3000 steps bring it below 3x at costs within 10 % of exact OT, in
    # single runs at the page's betas (benchmarks/README.md). The beta sweep uses half.
    steps: int = 3000
    batch_size: int = 200
    lr: float = 3e-3
    final_lr: float = 1e-5
    warmup_steps: int = 50
    weight_decay: float = 1e-5
    grad_clip: float = 10.0
    n_blocks: int = 8
    hidden: int = 128
    clamp: float = 2.0
    mmd_scales: tuple[float, ...] = TOY_MMD_SCALES
    mmd_bandwidth: Literal["data", "batch"] = "data"
    n_projections: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "n_blocks", "hidden", "n_projections"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ToyTrainConfig.{name} must be a positive int, got {value!r}.")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 2:
            raise ValueError(f"ToyTrainConfig.batch_size must be an int >= 2 for the MMD, got {self.batch_size!r}.")
        if not isinstance(self.warmup_steps, int) or not 0 <= self.warmup_steps < self.steps:
            raise ValueError(
                f"ToyTrainConfig.warmup_steps must be an int in [0, steps), got {self.warmup_steps!r} "
                f"with steps={self.steps}."
            )
        if not (self.lr > 0 and 0 < self.final_lr <= self.lr):
            raise ValueError(
                f"ToyTrainConfig needs 0 < final_lr <= lr, got lr={self.lr} and final_lr={self.final_lr}."
            )
        if self.weight_decay < 0 or self.grad_clip < 0 or self.clamp <= 0:
            raise ValueError(
                "ToyTrainConfig needs weight_decay >= 0, grad_clip >= 0 and clamp > 0, got "
                f"{self.weight_decay}, {self.grad_clip} and {self.clamp}."
            )
        if self.mmd_bandwidth not in ("data", "batch"):
            raise ValueError(f"ToyTrainConfig.mmd_bandwidth must be 'data' or 'batch', got {self.mmd_bandwidth!r}.")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"ToyTrainConfig.seed must be in [0, 2^32), got {self.seed}.")

    def to_dict(self) -> dict:
        """Return the settings as a JSON-serialisable dict."""
        values = asdict(self)
        values["mmd_scales"] = list(self.mmd_scales)
        return values


@dataclass
class ToyTrainResult:
    """A trained flow with its loss history.

    Attributes:
        flow: the trained ``Ff.SequenceINN`` in eval mode, float32, on the CPU.
        history: loss terms of the logged steps, each a dict with "step" and ``HISTORY_KEYS``
            entries that the method has.
        seconds: wall-clock training time.
    """

    flow: torch.nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def learning_rate(step: int, config: ToyTrainConfig) -> float:
    """Return the learning rate of 0-based ``step``: linear warm-up, then a half cosine to ``final_lr``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    decay_steps = max(config.steps - config.warmup_steps - 1, 1)
    progress = min((step - config.warmup_steps) / decay_steps, 1.0)
    return config.final_lr + 0.5 * (config.lr - config.final_lr) * (1.0 + math.cos(math.pi * progress))


def train_toy_flow(
    x: np.ndarray,
    z: np.ndarray,
    method: Method,
    beta: float,
    config: ToyTrainConfig,
    *,
    log_every: int = 50,
    progress: bool = False,
) -> ToyTrainResult:
    """Train a dense flow T from the points ``x`` to the points ``z`` with one method.

    Each step draws ``batch_size`` points of each set without replacement, evaluates T(x)
    and, when the method needs it, T^-1(z), and takes one AdamW step on the method's loss.

    Args:
        x: (N, D) source points, N >= batch_size.
        z: (M, D) target points, M >= batch_size.
        method: one of ``METHODS``.
        beta: weight of the transport cost, non-negative.
        config: budget and architecture.
        log_every: steps between history entries; the last step is always logged.
        progress: show a tqdm bar over the steps.

    Returns:
        :class:`ToyTrainResult` with the flow in eval mode.

    Raises:
        ValueError: for an unknown method, a negative beta, or point sets that do not fit.
        FloatingPointError: if the loss becomes NaN or infinite.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; expected one of {METHODS}.")
    if not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be finite and non-negative, got {beta!r}.")
    x_all = _as_points("x", x, config.batch_size)
    z_all = _as_points("z", z, config.batch_size)
    if x_all.shape[1] != z_all.shape[1]:
        raise ValueError(f"x and z must have the same dimension, got {x_all.shape[1]} and {z_all.shape[1]}.")

    flow = build_dense_flow(
        x_all.shape[1], n_blocks=config.n_blocks, hidden=config.hidden, clamp=config.clamp, seed=config.seed
    )
    flow.train()
    optimizer = torch.optim.AdamW(flow.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    use_inverse = needs_inverse(method)
    bandwidth = median_bandwidth(x_all, z_all) if config.mmd_bandwidth == "data" else None

    history: list[dict[str, float]] = []
    start = time.perf_counter()
    for step in tqdm(range(config.steps), desc=method, disable=not progress, leave=False):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        x_batch = x_all[torch.randperm(x_all.shape[0], generator=generator)[: config.batch_size]]
        z_batch = z_all[torch.randperm(z_all.shape[0], generator=generator)[: config.batch_size]]

        t_x, _ = flow(x_batch)  # SequenceINN returns (output, log_jac_det)
        t_inv_z = flow(z_batch, rev=True)[0] if use_inverse else None
        terms = method_loss(
            method, x_batch, z_batch, t_x, t_inv_z, beta=beta, scales=config.mmd_scales,
            bandwidth=bandwidth, n_projections=config.n_projections, generator=generator,
        )
        if not torch.isfinite(terms["total"]):
            raise FloatingPointError(
                f"The {method} loss became {terms['total'].item()} at step {step}; lower lr "
                f"(now {config.lr}) or beta (now {beta})."
            )

        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(flow.parameters(), config.grad_clip)
        optimizer.step()

        if step % log_every == 0 or step == config.steps - 1:
            entry = {"step": step}
            entry.update({key: terms[key].item() for key in HISTORY_KEYS if key in terms})
            history.append(entry)

    flow.eval()
    seconds = time.perf_counter() - start
    logger.debug("trained %s (beta %g) in %.1f s, %d steps", method, beta, seconds, config.steps)
    return ToyTrainResult(flow=flow, history=history, seconds=seconds)


@torch.no_grad()
def apply_flow(flow: torch.nn.Module, points: np.ndarray, *, inverse: bool = False) -> np.ndarray:
    """Map (N, D) points with T, or with T^-1 when ``inverse``; return (N, D) float64."""
    tensor = torch.as_tensor(np.asarray(points), dtype=torch.float32)
    mapped, _ = flow(tensor, rev=inverse)
    return mapped.double().numpy()


def _as_points(name: str, points: np.ndarray, batch_size: int) -> torch.Tensor:
    array = np.asarray(points)
    if array.ndim != 2 or array.shape[0] < batch_size:
        raise ValueError(
            f"{name} must be an (N, D) array with N >= batch_size ({batch_size}), got shape {array.shape}."
        )
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    return torch.as_tensor(array, dtype=torch.float32)
