"""Checkpoint files: atomic writes, safe loads and the package versions they were made with.

A checkpoint is a ``torch.save`` file of a dict that holds only tensors, dicts, lists, tuples,
numbers, strings, booleans and None, so it loads with ``torch.load(weights_only=True)`` and
never executes pickled code. ``save_checkpoint`` adds the format tag and the versions of torch,
MONAI and FrEIA. FrEIA's invertible blocks changed their parameters after release 0.2, so a flow
checkpoint only loads with the FrEIA version that wrote it.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

FORMAT = "symot-med-checkpoint/1"
VERSIONED_PACKAGES = ("torch", "monai", "FrEIA")

_PLAIN_TYPES = (str, int, float, bool, type(None))

# torch.load on a file that is not a torch archive fails in several ways, depending on its first
# bytes (torch 2.13 raises KeyError for a text file, EOFError for an empty one and OSError for a
# truncated archive).
_LOAD_ERRORS = (
    OSError,
    pickle.UnpicklingError,
    RuntimeError,
    EOFError,
    KeyError,
    ValueError,
    IndexError,
    zipfile.BadZipFile,
    UnicodeDecodeError,
)


def package_versions() -> dict[str, str]:
    """Return the installed versions of torch, MONAI and FrEIA (``"not installed"`` if absent)."""
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically and return the path.

    The file is written under a temporary name in the same folder and then renamed with
    ``os.replace``, so a crash leaves either the old file or the new one, never a partial one.
    The keys ``format`` and ``versions`` are added.

    Raises:
        TypeError: when the payload contains a value that ``weights_only`` loading rejects,
            for example a NumPy array or a dataclass. The message names its key path.
    """
    if not isinstance(payload, dict):
        raise TypeError(f"checkpoint payload must be a dict, got {type(payload).__name__}")
    _check_plain(payload, "payload")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = dict(payload)
    record["format"] = FORMAT
    record["versions"] = package_versions()

    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(record, stream)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    logger.debug("wrote checkpoint %s", path)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint`` with ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file is not a torch file or not a symot-med checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")

    try:
        record = torch.load(path, map_location=map_location, weights_only=True)
    except _LOAD_ERRORS as err:
        # torch's own message can advise weights_only=False, which would run code from the file,
        # so only the error type is shown; --debug prints the whole chain.
        raise ValueError(
            f"{path} is not a readable symot-med checkpoint (torch.load raised {type(err).__name__}); "
            "the file may be truncated or of another kind. Restore the file that symot-med wrote, or "
            "retrain into a new folder."
        ) from err

    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(
            f"{path} is a torch file but not a symot-med checkpoint: expected a dict with "
            f"format {FORMAT!r}"
        )
    return record


def check_versions(record: dict[str, Any], path: str | os.PathLike, strict: tuple[str, ...] = ()) -> None:
    """Compare a checkpoint's recorded package versions with the installed ones.

    A difference in a package listed in ``strict`` raises ``ValueError``; any other difference
    is logged as a warning.
    """
    recorded = record.get("versions", {})
    installed = package_versions()
    for name in VERSIONED_PACKAGES:
        old, new = recorded.get(name, "unknown"), installed[name]
        if old == new:
            continue
        message = f"checkpoint {path} was written with {name} {old}, but {name} {new} is installed"
        if name in strict:
            raise ValueError(f"{message}: install {name}=={old} to load it, or retrain")
        logger.warning(message)


def write_history(path: str | os.PathLike, history: list[dict[str, Any]]) -> None:
    """Write per-epoch records to a JSON file atomically (temporary name, then ``os.replace``)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(history, indent=2) + "\n")
    os.replace(temporary, path)


def _check_plain(value: Any, where: str) -> None:
    if isinstance(value, (torch.Tensor, *_PLAIN_TYPES)):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"checkpoint key {where}[{key!r}] must be a str or int")
            _check_plain(item, f"{where}[{key!r}]")
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
        return
    raise TypeError(
        f"checkpoint value {where} has type {type(value).__name__}, which "
        "torch.load(weights_only=True) rejects: store tensors, dicts, lists, numbers or strings"
    )
