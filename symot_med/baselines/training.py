"""Training of the baselines on the slices of a slice cache, with checkpoints and resume.

All baselines train on the same training slices as SyMOT-Flow: ``SliceCache.slices(modality,
"train")`` of both modalities, unpaired. Domain a is the pair's source modality, b its target.

Output folder of a GAN baseline (``cyclegan`` or ``unit``):
    ``baseline.pt``: final weights and configuration (read by ``BaselineTranslator``);
    ``last.pt``: networks, optimisers, generator states, image pools and history after the
    latest finished epoch; a new call with the same folder resumes from it;
    ``history.json``: mean losses and seconds per epoch;
    ``baseline.json``: the model card (method, pair, profile, intensity scales, budget).
The histogram-matching baseline writes ``baseline.pt`` (its quantiles) and ``baseline.json``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from symot_med.baselines.cyclegan import CycleGAN
from symot_med.baselines.histogram import foreground_quantiles
from symot_med.baselines.networks import NetworkConfig, count_parameters
from symot_med.baselines.unit import UNIT
from symot_med.card_check import CardChecker
from symot_med.data.slices import SliceCache
from symot_med.device import resolve_device
from symot_med.io import read_json, resolve_from_folder, write_json
from symot_med.training.autoencoder import check_slices
from symot_med.training.checkpoints import check_versions, load_checkpoint, save_checkpoint, write_history

logger = logging.getLogger(__name__)

Method = Literal["cyclegan", "unit", "histogram"]
METHODS: tuple[str, ...] = ("cyclegan", "unit", "histogram")
GAN_METHODS: tuple[str, ...] = ("cyclegan", "unit")

FINAL_NAME = "baseline.pt"
LAST_NAME = "last.pt"
HISTORY_NAME = "history.json"
CARD_NAME = "baseline.json"


@dataclass(frozen=True)
class BaselineTrainConfig:
    """Optimisation settings of a GAN baseline (Adam, learning rate constant, then linear decay).

    The defaults are a CPU budget for the demo cohort (2 epochs of about 160 steps on T1/T2);
    CycleGAN's published setting is ``epochs=200, decay_epochs=100, batch_size=1``.

    Attributes:
        epochs: passes; one pass is max(N_a, N_b) // batch_size steps, each with one batch of
            each modality.
        decay_epochs: the last ``decay_epochs`` epochs scale the learning rate linearly down,
            by 1 / (decay_epochs + 1) per epoch (CycleGAN's schedule).
        batch_size: slices per modality and step.
        lr: Adam learning rate of generators and discriminators.
        beta1, beta2: Adam betas.
        seed: seed of the initialisation, batch orders, latent noise and image pools.
    """

    epochs: int = 2
    decay_epochs: int = 1
    batch_size: int = 4
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"BaselineTrainConfig.epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        if not 0 <= self.decay_epochs <= self.epochs:
            raise ValueError(f"BaselineTrainConfig.decay_epochs must be in [0, epochs={self.epochs}], got {self.decay_epochs}")
        if self.lr <= 0.0 or not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0):
            raise ValueError(
                f"BaselineTrainConfig needs lr > 0 and betas in [0, 1), got {self.lr}, {self.beta1}, {self.beta2}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "BaselineTrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown BaselineTrainConfig keys {unknown}: expected a subset of {sorted(known)}")
        return cls(**values)


def lr_factor(epoch: int, config: BaselineTrainConfig) -> float:
    """Learning-rate factor of 0-based ``epoch``: 1 until the decay starts, then
    1 - k / (decay_epochs + 1) in the k-th decaying epoch."""
    constant = config.epochs - config.decay_epochs
    return 1.0 - max(0, epoch - constant + 1) / (config.decay_epochs + 1)


def build_gan(method: str, network: NetworkConfig, seed: int) -> CycleGAN | UNIT:
    """Build a CycleGAN or UNIT whose initial weights depend only on ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if method == "cyclegan":
            return CycleGAN(network)
        elif method == "unit":
            return UNIT(network)
        else:
            raise ValueError(f"unknown GAN baseline {method!r}: expected one of {list(GAN_METHODS)}")


def generator_parameters(model: CycleGAN | UNIT) -> list[nn.Parameter]:
    """Distinct parameters of the translation networks (UNIT shares blocks between domains)."""
    return list(nn.ModuleList(model.generators()).parameters())


def discriminator_parameters(model: CycleGAN | UNIT) -> list[nn.Parameter]:
    return list(nn.ModuleList(model.discriminators()).parameters())


def to_signed(slices: torch.Tensor) -> torch.Tensor:
    """[0, 1] slices to the networks' [-1, 1]."""
    return slices * 2.0 - 1.0


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Network outputs in [-1, 1] to [0, 1] slices."""
    return ((images + 1.0) * 0.5).clamp(0.0, 1.0)


def train_step(
    model: CycleGAN | UNIT,
    optimizers: dict[str, torch.optim.Optimizer],
    real_a: torch.Tensor,
    real_b: torch.Tensor,
    generators: dict[str, torch.Generator],
) -> dict[str, float]:
    """One generator update, then one discriminator update on the fakes; returns the loss terms."""
    for discriminator in model.discriminators():
        discriminator.requires_grad_(False)
    loss, terms, fakes = model.generator_loss(real_a, real_b, generators["noise"])
    optimizers["generator"].zero_grad(set_to_none=True)
    loss.backward()
    optimizers["generator"].step()

    for discriminator in model.discriminators():
        discriminator.requires_grad_(True)
    d_loss, d_terms = model.discriminator_loss(real_a, real_b, fakes, generators["pool"])
    optimizers["discriminator"].zero_grad(set_to_none=True)
    d_loss.backward()
    optimizers["discriminator"].step()
    return {"g_total": float(loss.detach()), **terms, "d_total": float(d_loss.detach()), **d_terms}


def _epoch_batches(count: int, steps: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """(steps, batch_size) indices into ``count`` items: shuffled passes, concatenated as needed."""
    needed = steps * batch_size
    passes = [torch.randperm(count, generator=generator) for _ in range(math.ceil(needed / count))]
    return torch.cat(passes)[:needed].reshape(steps, batch_size)


def train_gan_baseline(
    method: str,
    slices_a: np.ndarray,
    slices_b: np.ndarray,
    out_dir: str | Path,
    config: BaselineTrainConfig,
    network: NetworkConfig,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> Path:
    """Train CycleGAN or UNIT on unpaired normalised slices; return the path of ``baseline.pt``.

    Args:
        method: ``cyclegan`` or ``unit``.
        slices_a: (N_a, 1, H, W) float32 slices in [0, 1] of the source modality.
        slices_b: (N_b, 1, H, W) of the target modality, same H and W, both divisible by 4.
        out_dir: output folder; with a ``last.pt`` training resumes from it.
        config: optimisation settings.
        network: network sizes.
        device: ``auto``, ``cpu`` or ``cuda``.
        progress: show a progress bar per epoch.

    Raises:
        ValueError: for invalid slices, or a ``last.pt`` written with other settings or data sizes.
    """
    slices_a = check_slices(slices_a, "slices_a")
    slices_b = check_slices(slices_b, "slices_b")
    if slices_a.shape[2:] != slices_b.shape[2:]:
        raise ValueError(f"slices_b size {slices_b.shape[2:]} differs from slices_a size {slices_a.shape[2:]}")
    if any(n % 4 for n in slices_a.shape[2:]):
        raise ValueError(f"slice size {slices_a.shape[2:]} must be divisible by 4 for the baseline generators")
    device = resolve_device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_info = {"n_a": int(slices_a.shape[0]), "n_b": int(slices_b.shape[0]), "slice_shape": list(slices_a.shape[2:])}

    model = build_gan(method, network, config.seed).to(device)
    optimizers = {
        "generator": torch.optim.Adam(generator_parameters(model), lr=config.lr, betas=(config.beta1, config.beta2)),
        "discriminator": torch.optim.Adam(discriminator_parameters(model), lr=config.lr, betas=(config.beta1, config.beta2)),
    }
    generators = {
        "batches_a": torch.Generator().manual_seed(config.seed),
        "batches_b": torch.Generator().manual_seed(config.seed + 1),
        "noise": torch.Generator(device=device).manual_seed(config.seed + 2),
        "pool": torch.Generator().manual_seed(config.seed + 3),
    }
    settings = {"method": method, "network": network.to_dict(), "train_config": config.to_dict(), "data": data_info}
    state = {"epoch": 0, "history": []}
    last_path = out_dir / LAST_NAME
    if last_path.exists():
        state = _resume(last_path, model, optimizers, generators, settings, device)
    logger.info(
        "training %s in %s on %s: %d + %d slices of %s, epochs %d to %d, settings %s",
        method, out_dir, device, data_info["n_a"], data_info["n_b"], data_info["slice_shape"],
        state["epoch"] + 1, config.epochs, settings,
    )

    tensor_a = torch.from_numpy(slices_a)
    tensor_b = torch.from_numpy(slices_b)
    steps = max(1, max(data_info["n_a"], data_info["n_b"]) // config.batch_size)
    history: list[dict[str, float]] = state["history"]
    model.train()

    for epoch in range(state["epoch"], config.epochs):
        started = time.perf_counter()
        for optimizer in optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = config.lr * lr_factor(epoch, config)
        batches_a = _epoch_batches(data_info["n_a"], steps, config.batch_size, generators["batches_a"])
        batches_b = _epoch_batches(data_info["n_b"], steps, config.batch_size, generators["batches_b"])

        sums: dict[str, float] = {}
        bar = tqdm(total=steps, desc=f"{method} epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False)
        for step in range(steps):
            real_a = to_signed(tensor_a[batches_a[step]].to(device))
            real_b = to_signed(tensor_b[batches_b[step]].to(device))
            terms = train_step(model, optimizers, real_a, real_b, generators)
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + value
            bar.update(1)
            bar.set_postfix(g=f"{terms['g_total']:.3f}", d=f"{terms['d_total']:.3f}")
        bar.close()

        record = {"epoch": epoch + 1, **{k: v / steps for k, v in sums.items()}, "lr": config.lr * lr_factor(epoch, config)}
        record["seconds"] = time.perf_counter() - started
        history.append(record)
        logger.info(
            "%s epoch %d/%d: generator loss %.4f, discriminator loss %.4f, %.1f s",
            method, epoch + 1, config.epochs, record["g_total"], record["d_total"], record["seconds"],
        )
        save_checkpoint(
            last_path,
            {
                **settings,
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizers": {name: optimizer.state_dict() for name, optimizer in optimizers.items()},
                "generators": {name: generator.get_state() for name, generator in generators.items()},
                "extra": model.extra_state(),
                "history": history,
            },
        )
        write_history(out_dir / HISTORY_NAME, history)

    final_path = save_checkpoint(
        out_dir / FINAL_NAME,
        {"kind": "baseline", **settings, "state_dict": model.state_dict(), "history": history},
    )
    logger.info("wrote %s", final_path)
    return final_path


def _resume(
    last_path: Path,
    model: CycleGAN | UNIT,
    optimizers: dict[str, torch.optim.Optimizer],
    generators: dict[str, torch.Generator],
    settings: dict[str, Any],
    device: torch.device,
) -> dict[str, Any]:
    record = load_checkpoint(last_path)
    for key, value in settings.items():
        if record.get(key) != value:
            raise ValueError(
                f"cannot resume from {last_path}: its {key} {record.get(key)} differs from this "
                f"run's {value}; use another output folder or delete {last_path.name}"
            )
    check_versions(record, last_path)
    model.load_state_dict(record["model"])
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(record["optimizers"][name])
    for name, generator in generators.items():
        generator.set_state(record["generators"][name])
    model.load_extra_state(record["extra"], device)
    logger.info("resuming %s training from %s after epoch %d", settings["method"], last_path, record["epoch"])
    return {"epoch": int(record["epoch"]), "history": list(record["history"])}


def fit_histogram_baseline(slices_a: np.ndarray, slices_b: np.ndarray, out_dir: str | Path) -> Path:
    """Fit histogram matching on the training slices of both modalities; return ``baseline.pt``."""
    started = time.perf_counter()
    quantiles_a = foreground_quantiles(check_slices(slices_a, "slices_a"))
    quantiles_b = foreground_quantiles(check_slices(slices_b, "slices_b"))
    seconds = time.perf_counter() - started
    data_info = {"n_a": int(slices_a.shape[0]), "n_b": int(slices_b.shape[0]), "slice_shape": list(slices_a.shape[2:])}
    return save_checkpoint(
        Path(out_dir) / FINAL_NAME,
        {
            "kind": "baseline",
            "method": "histogram",
            "data": data_info,
            "quantiles_a": torch.from_numpy(quantiles_a),
            "quantiles_b": torch.from_numpy(quantiles_b),
            "history": [{"epoch": 1, "seconds": seconds}],
        },
    )


def train_baseline_stage(
    method: str,
    cache_dir: str | Path,
    out_dir: str | Path,
    config: BaselineTrainConfig,
    network: NetworkConfig,
    device: str = "auto",
    progress: bool = True,
) -> Path:
    """Train ``method`` on a slice cache's training slices and write its model card.

    Skips training when ``baseline.pt`` exists. Returns the model folder (``out_dir``), which
    ``BaselineTranslator`` loads.
    """
    if method not in METHODS:
        raise ValueError(f"unknown baseline {method!r}: expected one of {list(METHODS)}")
    cache = SliceCache.open(cache_dir)
    pair_modalities = cache.manifest["pair_modalities"]
    out_dir = Path(out_dir)
    final = out_dir / FINAL_NAME

    if final.is_file():
        check_existing_baseline(final, method, cache, config, network)
        logger.info("baseline %s exists; skipping training", final)
    else:
        slices_a = cache.slices(pair_modalities["source"], "train")
        slices_b = cache.slices(pair_modalities["target"], "train")
        if method == "histogram":
            fit_histogram_baseline(slices_a, slices_b, out_dir)
        else:
            train_gan_baseline(method, slices_a, slices_b, out_dir, config, network, device=device, progress=progress)

    write_baseline_card(out_dir, cache)
    return out_dir


def check_existing_baseline(
    final: Path, method: str, cache: SliceCache, config: BaselineTrainConfig, network: NetworkConfig
) -> None:
    """Raise ValueError when the trained ``final`` checkpoint is another method or was trained on
    another pair, profile or training data than ``cache``, and warn when its GAN settings differ
    from the requested ones, which a skipped training does not apply."""
    record = load_checkpoint(final)
    if record.get("method") != method:
        raise ValueError(
            f"{final} contains a {record.get('method')!r} baseline, not {method!r}; train {method} into another "
            "folder"
        )

    # The intensity scales come from the cache's training subjects, so equal scales tell a moved
    # cache from one with another split or other data.
    card_path = final.parent / CARD_NAME
    card = read_json(card_path) if card_path.is_file() else {}
    for key, difference in (("pair", "pair"), ("profile", "profile"), ("intensity", "training data (intensity scales)")):
        if isinstance(card, dict) and key in card and card[key] != cache.manifest[key]:
            raise ValueError(
                f"{final} was trained on a slice cache with another {difference} than {cache.folder}; pass the cache it "
                f"was trained on ({card.get('cache', 'named in ' + str(card_path))}), or train into another folder"
            )

    if method in GAN_METHODS:
        for key, requested in (("network", network.to_dict()), ("train_config", config.to_dict())):
            if record.get(key) != requested:
                logger.warning(
                    "%s was trained with %s %s, not the requested %s. Training is skipped because the model "
                    "exists; to apply the requested settings, delete %s or train into another folder",
                    final, key, record.get(key), requested, final.parent,
                )


def write_baseline_card(out_dir: Path, cache: SliceCache) -> Path:
    """Write ``baseline.json``: the method, the cache's pair, profile and intensity scales, and
    the training budget (epochs, seconds, parameter counts) read from ``baseline.pt``."""
    record = load_checkpoint(out_dir / FINAL_NAME)
    method = record["method"]
    history = record.get("history", [])
    payload: dict[str, Any] = {
        "method": method,
        "pair": cache.manifest["pair"],
        "profile": cache.manifest["profile"],
        "intensity": cache.manifest["intensity"],
        "checkpoint": FINAL_NAME,  # relative to the model folder, so the folder can move
        "cache": str(Path(cache.folder).resolve()),
        "data": record["data"],
        "epochs": len(history) if method in GAN_METHODS else 0,
        "train_seconds": float(sum(r["seconds"] for r in history)),
    }
    if method in GAN_METHODS:
        network = NetworkConfig.from_dict(record["network"])
        model = build_gan(method, network, 0)
        payload.update(
            network=record["network"],
            train_config=record["train_config"],
            parameters_translation=count_parameters(nn.ModuleList(model.generators())),
            parameters_total=count_parameters(model),
        )
    else:
        quantiles = 2 * int(record["quantiles_a"].numel())
        payload.update(parameters_translation=quantiles, parameters_total=quantiles)
    return write_json(out_dir / CARD_NAME, payload)


def read_baseline_card(model_dir: str | Path) -> dict:
    """Return ``baseline.json`` of ``model_dir`` (the folder, or the card file itself) with an
    absolute checkpoint path, raising FileNotFoundError naming the card when it is absent."""
    if Path(model_dir).name == CARD_NAME and Path(model_dir).is_file():
        model_dir = Path(model_dir).parent
    card_path = Path(model_dir) / CARD_NAME
    if not card_path.exists():
        raise FileNotFoundError(f"{card_path} not found; pass the folder written by `symot-med baseline train`")
    card = CardChecker(card_path, "symot-med baseline train").read()
    check_baseline_card(card, card_path)
    card["checkpoint"] = resolve_from_folder(card["checkpoint"], model_dir)
    return card


def check_baseline_card(card: object, card_path: Path) -> None:
    """Raise ValueError naming ``card_path`` and the first missing or invalid field of a baseline card.

    Checks the fields that translation and ``symot-med evaluate`` read: the method, pair,
    profile, intensity scales, checkpoint and training budget.
    """
    checker = CardChecker(card_path, "symot-med baseline train")
    checker.check_common(card)
    checker.expect("method", str, card, "method")
    if card["method"] not in METHODS:
        checker.invalid(f"invalid field 'method': it is {card['method']!r}, expected one of {list(METHODS)}")
    checker.expect("checkpoint", str, card, "checkpoint")
    for key in ("epochs", "parameters_translation", "parameters_total"):
        checker.expect_count(key, card, key)
    checker.expect_finite("train_seconds", card, "train_seconds", minimum=0.0)
