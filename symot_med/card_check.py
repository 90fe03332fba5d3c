"""Field checks of the JSON model cards that `symot-med train-flow` and `symot-med baseline train` write.

A card is checked when it is read, so a hand-edited or damaged file fails with its path, the
first missing or invalid field and the fix, instead of a bare KeyError or TypeError later.
"""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path
from typing import NoReturn

from symot_med.config import PAIRS, Profile, get_pair
from symot_med.io import read_json

# Data sets that a profile can name.
DATASETS = ("brats", "synthrad")

# Names of the JSON types that the checks expect, for their messages.
JSON_TYPE_NAMES = {str: "string", dict: "object", list: "array", (int, float): "number", int: "integer"}


class CardChecker:
    """Check the fields of one card and raise ValueError naming the file, the field and the fix.

    Args:
        card_path: the card file, named in every message.
        command: the command that writes this kind of card, such as ``symot-med train-flow``.
    """

    def __init__(self, card_path: Path, command: str) -> None:
        self.card_path = card_path
        self.command = command

    def fix(self) -> str:
        """Return the sentence of every card error that explains how to repair the card."""
        return f"Restore the file written by `{self.command}`, or rerun that command into a new folder."

    def read(self) -> object:
        """Return the card's JSON content, raising ValueError with the fix when it is not JSON."""
        try:
            return read_json(self.card_path)
        except ValueError as error:
            raise ValueError(f"{error}. {self.fix()}") from None

    def invalid(self, problem: str) -> NoReturn:
        """Raise ValueError with ``problem`` and the fix."""
        raise ValueError(f"{self.card_path}: {problem}. {self.fix()}")

    def expect(self, key: str, kind: type | tuple[type, ...], where: dict, label: str) -> None:
        """Raise unless ``where[key]`` exists and has the JSON type ``kind``; ``label`` names it."""
        if key not in where:
            self.invalid(f"missing field {label!r}")
        if not isinstance(where[key], kind) or isinstance(where[key], bool):
            self.invalid(f"invalid field {label!r}: it must be a JSON {JSON_TYPE_NAMES[kind]}, got {where[key]!r}")

    def expect_count(self, key: str, where: dict, label: str) -> None:
        """Raise unless ``where[key]`` is a non-negative JSON integer."""
        self.expect(key, int, where, label)
        if where[key] < 0:
            self.invalid(f"invalid field {label!r}: it must be 0 or more, got {where[key]!r}")

    def expect_finite(self, key: str, where: dict, label: str, minimum: float | None = None) -> None:
        """Raise unless ``where[key]`` is a finite JSON number, and at least ``minimum`` when given."""
        self.expect(key, (int, float), where, label)
        if not math.isfinite(where[key]):
            self.invalid(f"invalid field {label!r}: it must be a finite number, got {where[key]!r}")
        if minimum is not None and where[key] < minimum:
            self.invalid(f"invalid field {label!r}: it must be {minimum} or more, got {where[key]!r}")

    def check_common(self, card: object) -> list[str]:
        """Check the fields every card has: pair, profile and intensity; return the pair's modalities, sorted."""
        if not isinstance(card, dict):
            self.invalid(f"invalid content: it must contain a JSON object, got {type(card).__name__}")

        self.expect("pair", str, card, "pair")
        if card["pair"] not in PAIRS:
            self.invalid(f"invalid field 'pair': it is {card['pair']!r}, expected one of {sorted(PAIRS)}")
        modalities = sorted(get_pair(card["pair"]).modalities())

        self.expect("profile", dict, card, "profile")
        unknown = sorted(set(card["profile"]) - {field.name for field in fields(Profile)})
        if unknown:
            self.invalid(f"invalid field 'profile': it has unknown keys {unknown}")
        for key, kind, length in (("spacing", (int, float), 3), ("slice_size", int, 2)):
            value = card["profile"].get(key)
            is_list = isinstance(value, list) and len(value) == length
            if not is_list or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
                self.invalid(
                    f"invalid field 'profile.{key}': it must be a list of {length} {JSON_TYPE_NAMES[kind]}s, "
                    f"got {value!r}"
                )
        profile = card["profile"]
        if not all(math.isfinite(v) and v > 0 for v in profile["spacing"]):
            self.invalid(
                f"invalid field 'profile.spacing': voxel sizes must be finite and positive, got {profile['spacing']!r}"
            )
        if not all(v > 0 for v in profile["slice_size"]):
            self.invalid(
                f"invalid field 'profile.slice_size': both sizes must be positive, got {profile['slice_size']!r}"
            )
        for key in ("name", "dataset"):
            self.expect(key, str, profile, f"profile.{key}")
        if profile["dataset"] not in DATASETS:
            self.invalid(
                f"invalid field 'profile.dataset': it is {profile['dataset']!r}, expected one of {list(DATASETS)}"
            )
        if "min_foreground" in profile:
            self.expect_finite("min_foreground", profile, "profile.min_foreground", minimum=0.0)

        self.expect("intensity", dict, card, "intensity")
        self.expect_modalities("intensity", card, modalities)
        for modality, scale in card["intensity"].items():
            self.expect(modality, dict, card["intensity"], f"intensity.{modality}")
            for bound in ("low", "high"):
                self.expect_finite(bound, scale, f"intensity.{modality}.{bound}")
            if scale["low"] >= scale["high"]:
                self.invalid(
                    f"invalid field 'intensity.{modality}': low ({scale['low']!r}) must be below high "
                    f"({scale['high']!r})"
                )
        return modalities

    def expect_modalities(self, key: str, card: dict, modalities: list[str]) -> None:
        """Raise unless the keys of the object ``card[key]`` are the pair's ``modalities``."""
        if sorted(card[key]) != modalities:
            self.invalid(
                f"invalid field {key!r}: it has modalities {sorted(card[key])}, expected {modalities} "
                f"for pair {card['pair']!r}"
            )
