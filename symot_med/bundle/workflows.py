"""Iteration functions and handlers for MONAI's ignite engines in the bundles' train configs.

The model, loss and checkpoint code is the package's: ``VQVAE2``'s forward pass and
``reconstruction_loss`` for the autoencoder, ``SyMOTLoss`` for the flow, ``save_checkpoint`` for
the final files. The functions here only run one optimiser step of them inside a
``SupervisedTrainer`` and return the loss terms for the logging handlers.

Final files, written on rank 0 when training completes:

- ``autoencoder.pt``: the package's autoencoder checkpoint (``load_autoencoder`` reads it, and so
  does ``symot-med train-flow --autoencoder``).
- ``model.pt``: a package checkpoint of kind ``translation``. Its ``state_dict`` is that of a
  ``TranslationNetwork`` and includes the training data's intensity scales. The train_flow
  configs store the moving average of the flow weights (decay ``FlowTrainConfig.ema_decay``)
  in it, as ``train_flow`` does in the package's ``flow.pt``.
  The inference and evaluate configs load it with ``load_translation_network``, and
  ``ckpt_export`` reads it with ``--key_in_ckpt state_dict``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch import Tensor

from symot_med.bundle.data import split_latent_batch
from symot_med.bundle.distributed import gather_levels, is_main_process
from symot_med.bundle.network import TRANSLATION_KIND, SymmetricFlow, TranslationNetwork
from symot_med.config import Pair
from symot_med.data.transforms import IntensityScale
from symot_med.models.flow import LatentFlow
from symot_med.models.vqvae2 import VQVAE2
from symot_med.training.autoencoder import AETrainConfig
from symot_med.training.autoencoder import learning_rate as autoencoder_learning_rate
from symot_med.training.checkpoints import save_checkpoint
from symot_med.training.ema import WeightAverage
from symot_med.training.flow import FlowTrainConfig
from symot_med.training.flow import learning_rate as flow_learning_rate

logger = logging.getLogger(__name__)


def per_step_scheduler(optimizer: torch.optim.Optimizer, steps_per_epoch: int, config: AETrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Build a per-iteration ``LambdaLR`` that follows ``training.autoencoder.learning_rate``.

    Step it once per iteration (``LrScheduleHandler`` with ``epoch_level=False``).
    """
    total_steps = _total_steps(steps_per_epoch, config.epochs)
    return _lambda_scheduler(
        optimizer, config.lr, lambda step: autoencoder_learning_rate(min(step, total_steps), total_steps, config)
    )


def flow_step_scheduler(
    optimizer: torch.optim.Optimizer, steps_per_epoch: int, config: FlowTrainConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """Build a per-iteration ``LambdaLR`` that follows ``training.flow.learning_rate``.

    Iteration k (0-based) of ``steps_per_epoch * config.epochs`` then runs at the rate that
    ``train_flow`` uses for step k: a half cosine from ``lr`` to ``lr * final_lr_fraction``, or
    ``lr`` throughout. Step it once per iteration (``LrScheduleHandler`` with
    ``epoch_level=False``).
    """
    total_steps = _total_steps(steps_per_epoch, config.epochs)
    return _lambda_scheduler(optimizer, config.lr, lambda step: flow_learning_rate(config, step, total_steps))


def _total_steps(steps_per_epoch: int, epochs: int) -> int:
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}; the training set is empty")
    return steps_per_epoch * epochs


def _lambda_scheduler(
    optimizer: torch.optim.Optimizer, peak_lr: float, rate: Callable[[int], float]
) -> torch.optim.lr_scheduler.LambdaLR:
    """Build a ``LambdaLR`` that sets every group's learning rate to ``rate(step)``.

    ``LambdaLR`` multiplies each group's initial rate by a factor, so that initial rate must
    equal ``peak_lr``.
    """
    for group in optimizer.param_groups:
        if not math.isclose(group["lr"], peak_lr, rel_tol=1e-9):
            raise ValueError(
                f"invalid optimizer learning rate {group['lr']}: the train config's lr is {peak_lr}, "
                "so build the optimizer with the config's lr"
            )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: rate(step) / peak_lr)


class AutoencoderIteration:
    """``iteration_update`` of a ``SupervisedTrainer`` that trains a ``VQVAE2``.

    One step: reconstruct ``batch["image"]`` (B, 1, H, W), loss = ``engine.loss_function(recon,
    x)`` plus the commitment loss, backward, gradient clipping at ``grad_clip`` (0: none) and an
    optimiser step. In training mode the forward pass also updates the EMA codebooks.

    Returns:
        Floats ``loss``, ``recon`` and ``vq`` and the codebook statistics of the batch.
    """

    def __init__(self, grad_clip: float = 1.0) -> None:
        if not grad_clip >= 0.0:
            raise ValueError(f"grad_clip must be >= 0, got {grad_clip}")
        self.grad_clip = float(grad_clip)

    def __call__(self, engine: Engine, batch: Mapping[str, Tensor]) -> dict[str, float]:
        x = batch["image"].to(engine.state.device, non_blocking=engine.non_blocking)
        engine.network.train()
        recon, vq_loss, stats = engine.network(x)
        recon_loss = engine.loss_function(recon, x)
        loss = recon_loss + vq_loss

        engine.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.grad_clip)
        engine.optimizer.step()
        return {"loss": float(loss.detach()), "recon": float(recon_loss.detach()), "vq": float(vq_loss.detach()), **stats}


class ReconstructionInferer:
    """Inferer for a ``SupervisedEvaluator``: return only the reconstruction (B, 1, H, W) of a VQVAE2."""

    def __call__(self, inputs: Tensor, network: torch.nn.Module) -> Tensor:
        recon, _, _ = network(inputs)
        return recon


def prepare_reconstruction_batch(
    batchdata: Mapping[str, Tensor], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any
) -> tuple[Tensor, Tensor]:
    """``prepare_batch`` for autoencoder validation: the slices are input and target."""
    image = batchdata["image"].to(device=device, non_blocking=non_blocking)
    return image, image


class FlowIteration:
    """``iteration_update`` of a ``SupervisedTrainer`` that trains the flow with the SyMOT loss.

    ``engine.network`` is a ``SymmetricFlow`` (or DistributedDataParallel around one) and
    ``engine.loss_function`` a ``SyMOTLoss``. The batch is a collated ``UnpairedLatentDataset``
    batch. Under torch.distributed the samples and their images under T and T^-1 are gathered
    from every rank with gradients, so the MMD and the transport cost are those of the global
    batch. The learning rate is the optimizer's, which ``flow_step_scheduler`` sets per step.

    Args:
        n_levels: latent levels per side in the batch.
        grad_clip: maximum global gradient norm, or 0 for no clipping.
        average: moving average of the flow weights, updated after every optimiser step as in
            ``train_flow``, or None for no average. Every rank updates its own copy, and
            DistributedDataParallel keeps the weights equal across ranks, so the copies agree.

    Returns:
        Floats: every loss term (``total``, ``mmd_forward``, ``mmd_inverse``, ``cost_forward``,
        ``cost_inverse``) and ``grad_norm``, the gradient norm before clipping.
    """

    def __init__(self, n_levels: int = 2, grad_clip: float = 1.0, average: WeightAverage | None = None) -> None:
        if n_levels < 1:
            raise ValueError(f"n_levels must be >= 1, got {n_levels}")
        if not grad_clip >= 0.0:
            raise ValueError(f"grad_clip must be >= 0, got {grad_clip}")
        self.n_levels = n_levels
        self.grad_clip = float(grad_clip)
        self.average = average

    def __call__(self, engine: Engine, batch: Mapping[str, Tensor]) -> dict[str, float]:
        x, z = split_latent_batch(batch, self.n_levels)
        x = tuple(level.to(engine.state.device, non_blocking=engine.non_blocking) for level in x)
        z = tuple(level.to(engine.state.device, non_blocking=engine.non_blocking) for level in z)

        engine.network.train()
        t_x, t_inv_z = engine.network(x, z)
        terms = engine.loss_function(gather_levels(x), gather_levels(z), gather_levels(t_x), gather_levels(t_inv_z))
        if not torch.isfinite(terms["total"]):
            raise FloatingPointError(
                f"flow loss became {float(terms['total'])} at epoch {engine.state.epoch}, iteration "
                f"{engine.state.iteration}; lower the learning rate or the clamp, or clip gradients harder"
            )

        engine.optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        max_norm = self.grad_clip if self.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(engine.network.parameters(), max_norm)
        engine.optimizer.step()
        if self.average is not None:
            self.average.update(trained_flow(engine.network))
        return {**{key: float(value.detach()) for key, value in terms.items()}, "grad_norm": float(grad_norm)}


def trained_flow(network: torch.nn.Module) -> LatentFlow:
    """Return the ``LatentFlow`` inside a ``SymmetricFlow``, or inside DistributedDataParallel around one.

    Raises:
        TypeError: when ``network`` is neither.
    """
    if isinstance(network, torch.nn.parallel.DistributedDataParallel):
        network = network.module
    if not isinstance(network, SymmetricFlow):
        raise TypeError(f"the trainer's network must be a SymmetricFlow, got {type(network).__name__}")
    return network.flow


class FlowValidationIteration:
    """``iteration_update`` of a ``SupervisedEvaluator`` on held-out latent batches.

    ``engine.loss_function`` is a ``SyMOTLoss`` with ``estimator="biased"``: the full biased
    MMD^2 is a proper squared distance, unlike the reduced training form. Runs on each rank's
    own batches, without gathering.

    Returns:
        Floats: the loss terms and ``mmd``, the sum of the forward and inverse MMD^2.
    """

    def __init__(self, loss_function: Callable[..., dict[str, Tensor]], n_levels: int = 2) -> None:
        self.loss_function = loss_function
        self.n_levels = n_levels

    def __call__(self, engine: Engine, batch: Mapping[str, Tensor]) -> dict[str, float]:
        x, z = split_latent_batch(batch, self.n_levels)
        x = tuple(level.to(engine.state.device) for level in x)
        z = tuple(level.to(engine.state.device) for level in z)
        engine.network.eval()
        with torch.no_grad():
            t_x, t_inv_z = engine.network(x, z)
            terms = self.loss_function(x, z, t_x, t_inv_z)
        record = {key: float(value) for key, value in terms.items()}
        record["mmd"] = record["mmd_forward"] + record.get("mmd_inverse", 0.0)
        return record


def lower_is_better(current: float, best: float) -> bool:
    """``metric_cmp_fn`` for a loss-like key metric; MONAI starts ``best`` at -1."""
    return best < 0 or current < best


class _FinalCheckpoint:
    """Base of the handlers that write one package checkpoint when training completes, on rank 0."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not is_main_process():
            return
        save_checkpoint(self.path, self.payload(engine))
        logger.info("wrote %s after epoch %d", self.path, engine.state.epoch)

    def payload(self, engine: Engine) -> dict[str, Any]:
        raise NotImplementedError


class SaveAutoencoder(_FinalCheckpoint):
    """Write the package's autoencoder checkpoint (read by ``load_autoencoder``) at completion.

    Args:
        path: output file, usually ``<model_dir>/autoencoder.pt``.
        network: the trained ``VQVAE2``.
        train_config: the settings it was trained with, stored for the record.
    """

    def __init__(self, path: str | os.PathLike, network: VQVAE2, train_config: AETrainConfig) -> None:
        super().__init__(path)
        self.network = network
        self.train_config = train_config

    def payload(self, engine: Engine) -> dict[str, Any]:
        return {
            "kind": "autoencoder",
            "model_config": self.network.config.to_dict(),
            "state_dict": self.network.state_dict(),
            "train_config": asdict(self.train_config),
            "data": {"n_train": len(engine.data_loader.dataset), "epochs": engine.state.epoch},
        }


class SaveTranslationModel(_FinalCheckpoint):
    """Write ``model.pt``: the ``TranslationNetwork`` of the trained flow, at completion.

    The flow weights are ``average.averaged`` when ``average`` is given, as ``train_flow``
    writes to ``flow.pt``, and otherwise those of the last step. The record's ``weights`` entry
    says which: ``"moving average"`` (``ema_decay`` > 0) or ``"last step"``.

    Args:
        path: output file, usually ``<model_dir>/model.pt``.
        autoencoder: the frozen autoencoder the flow was trained on.
        flow: the trained flow (not the DistributedDataParallel wrapper).
        pair: the modality pair.
        source_intensity: native scale of the source modality's training data.
        target_intensity: native scale of the target modality's training data.
        train_config: the flow's training settings, stored for the record.
        average: the moving average of ``flow`` that ``FlowIteration`` updates, or None.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        autoencoder: VQVAE2,
        flow: LatentFlow,
        pair: Pair,
        source_intensity: IntensityScale,
        target_intensity: IntensityScale,
        train_config: FlowTrainConfig,
        average: WeightAverage | None = None,
    ) -> None:
        if average is not None and average.decay != train_config.ema_decay:
            raise ValueError(
                f"invalid moving average decay {average.decay}: train_config.ema_decay is "
                f"{train_config.ema_decay}, so build the average with the config's ema_decay"
            )
        super().__init__(path)
        self.autoencoder = autoencoder
        self.flow = flow
        self.pair = pair
        self.source_intensity = source_intensity
        self.target_intensity = target_intensity
        self.train_config = train_config
        self.average = average

    def payload(self, engine: Engine) -> dict[str, Any]:
        averaged = self.average is not None and self.average.decay > 0
        flow = self.flow if self.average is None else self.average.averaged
        # In float32 the network does not convert the training modules. Inference loads these
        # weights into a float64 flow.
        network = TranslationNetwork(self.autoencoder, flow, "forward", flow_dtype=torch.float32)
        network.set_intensity(self.source_intensity, self.target_intensity)
        extra = {
            "train_config": asdict(self.train_config),
            "epochs": engine.state.epoch,
            "weights": "moving average" if averaged else "last step",
        }
        return translation_record(network, self.pair, extra)


def translation_record(network: TranslationNetwork, pair: Pair, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Return the checkpoint payload of ``model.pt`` for ``network`` (see the module docstring)."""
    return {
        "kind": TRANSLATION_KIND,
        "pair": pair.name,
        "autoencoder_config": network.autoencoder.config.to_dict(),
        "flow_config": network.flow.config(),
        "state_dict": network.state_dict(),
        **dict(extra or {}),
    }
