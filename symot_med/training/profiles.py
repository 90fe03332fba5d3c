"""Training settings per profile and pair, optionally overridden by a JSON config file.

Profiles:
    ``demo``: the package defaults (``AETrainConfig``, ``VQVAE2Config``, ``FlowTrainConfig``),
        sized so that the demo trains both pairs on a 2-core CPU.
    ``paper``: the sizes and hyperparameters that Xiong, Ding and Zhang report for SyMOT-Flow on
        images. The latent maps have 128 channels at 1/8 and 1/4 of the slice size. The flow has
        4 coupling blocks, and each subnet is an 8-block residual network. Training uses batch 32
        and AdamW with learning rate 1e-3. BraTS T1/T2: 200 epochs, weight decay 1e-4, beta 1e-5.
        SynthRAD CT/MR: 1000 epochs, weight decay 1e-5, beta 1e-3. Xiong, Ding and Zhang give
        neither the autoencoder's schedule, the codebook size nor the subnet width. This profile
        trains the autoencoder for 100 epochs at batch 32 and learning rate 1e-3, with 512 codes,
        and uses subnets 128 channels wide.

A config file is a JSON object with up to three sections, each overriding fields of one
dataclass; a missing section keeps the profile's values::

    {
      "autoencoder": {"epochs": 40, "batch_size": 8},
      "vqvae2": {"n_embed": 512},
      "flow": {"epochs": 60, "beta": 1e-4}
    }
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from symot_med.config import Pair
from symot_med.models.vqvae2 import VQVAE2Config
from symot_med.training.autoencoder import AETrainConfig
from symot_med.training.flow import FlowTrainConfig

TRAINING_PROFILES = ("demo", "paper")
CONFIG_SECTIONS = {"autoencoder": AETrainConfig, "vqvae2": VQVAE2Config, "flow": FlowTrainConfig}


@dataclass(frozen=True)
class TrainingSettings:
    """Everything ``train-ae`` and ``train-flow`` need besides the data."""

    autoencoder: AETrainConfig
    vqvae2: VQVAE2Config
    flow: FlowTrainConfig

    def to_dict(self) -> dict[str, Any]:
        return {name: asdict(getattr(self, name)) for name in CONFIG_SECTIONS}


def profile_settings(profile: str, pair: Pair) -> TrainingSettings:
    """Return the training settings of ``profile`` for ``pair`` (beta is always the pair's)."""
    if profile == "demo":
        return TrainingSettings(AETrainConfig(), VQVAE2Config(), FlowTrainConfig(beta=pair.beta))
    if profile != "paper":
        raise ValueError(f"unknown training profile {profile!r}: expected one of {list(TRAINING_PROFILES)}")

    synthrad = pair.dataset == "synthrad"
    return TrainingSettings(
        autoencoder=AETrainConfig(epochs=100, batch_size=32, lr=1e-3),
        vqvae2=VQVAE2Config(channels=128, res_channels=64, n_res_blocks=2, embed_dim=128, n_embed=512),
        flow=FlowTrainConfig(
            epochs=1000 if synthrad else 200,
            batch_size=32,
            lr=1e-3,
            weight_decay=1e-5 if synthrad else 1e-4,
            beta=pair.beta,
            n_blocks=4,
            hidden=128,
            n_res_blocks=8,
        ),
    )


def read_config_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read and check a training config file; return its sections.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: naming the file, for invalid JSON, an unknown section or an unknown field.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"config file {path} is not valid JSON: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must hold a JSON object with sections {sorted(CONFIG_SECTIONS)}")

    unknown = sorted(set(values) - set(CONFIG_SECTIONS))
    if unknown:
        raise ValueError(f"config file {path}: unknown sections {unknown}; expected a subset of {sorted(CONFIG_SECTIONS)}")
    for section, overrides in values.items():
        if not isinstance(overrides, dict):
            raise ValueError(f"config file {path}: section {section!r} must be a JSON object of field values")
        known = {f.name for f in fields(CONFIG_SECTIONS[section])}
        bad = sorted(set(overrides) - known)
        if bad:
            raise ValueError(f"config file {path}: unknown {section} fields {bad}; expected a subset of {sorted(known)}")
    return values


def training_settings(profile: str, pair: Pair, config_file: str | Path | None = None) -> TrainingSettings:
    """Settings of ``profile`` for ``pair``, with the sections of ``config_file`` applied on top."""
    settings = profile_settings(profile, pair)
    if config_file is None:
        return settings

    sections = read_config_file(config_file)
    updated = {}
    for section, overrides in sections.items():
        try:
            updated[section] = replace(getattr(settings, section), **overrides)
        except (TypeError, ValueError) as error:
            raise ValueError(f"config file {config_file}: section {section!r}: {error}") from None
    return replace(settings, **updated)
