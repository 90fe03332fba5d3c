"""Choice of the torch device that training and translation run on."""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Resolve a device name to a ``torch.device`` that exists on this machine.

    Args:
        name: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``,
            ``"cuda:N"``, or a ``torch.device``.

    Returns:
        The device to place models and tensors on.

    Raises:
        ValueError: when the name is not a torch device name, or names a CUDA device
            that this machine does not have.
    """
    if isinstance(name, torch.device):
        device = name
    elif not isinstance(name, str):
        raise TypeError(f"device must be a string or torch.device, got {type(name).__name__}")
    elif name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        logger.debug("device 'auto' resolved to %s", device)
        return device
    else:
        try:
            device = torch.device(name)
        except RuntimeError as err:
            raise ValueError(
                f"invalid device {name!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'"
            ) from err

    if device.type == "cuda":
        _check_cuda(device)
    return device


def _check_cuda(device: torch.device) -> None:
    if not torch.cuda.is_available():
        raise ValueError(
            f"device {str(device)!r} requested but CUDA is not available on this machine "
            "(CPU-only torch build or no GPU): use device 'auto' or 'cpu'"
        )

    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ValueError(
            f"device {str(device)!r} requested but this machine has {count} CUDA device(s) "
            f"(indices 0 to {count - 1})"
        )
