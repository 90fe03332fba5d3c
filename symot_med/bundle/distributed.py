"""Gathering samples across DistributedDataParallel ranks with gradients.

The MMD couples every pair of samples in a batch, so with several ranks each rank gathers all
ranks' samples and computes the loss of the global batch. ``all_gather_with_grad`` lets the
gradient flow back to the samples of the calling rank.

Gradient scaling: every rank computes the same global loss L. The backward pass of the gather
sums the incoming gradients over ranks (all_reduce), so rank r receives W * dL/dx_r for its own
samples x_r, with W ranks. DistributedDataParallel then averages the parameter gradients over
the W ranks, which leaves exactly dL/dtheta, the gradient of the global-batch loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """Return True when a torch.distributed process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    """Return True on rank 0, and always without a process group."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class _AllGatherWithGrad(torch.autograd.Function):
    """Concatenate every rank's (B_r, ...) tensor along dim 0; see the module docstring."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # noqa: D102 (autograd API)
        world_size = dist.get_world_size()
        local_size = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
        sizes = [torch.zeros_like(local_size) for _ in range(world_size)]
        dist.all_gather(sizes, local_size)
        sizes = [int(size) for size in sizes]

        # all_gather needs equal shapes, so smaller batches are padded to the largest.
        largest = max(sizes)
        padded = tensor.new_zeros((largest, *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        gathered = [torch.empty_like(padded) for _ in range(world_size)]
        dist.all_gather(gathered, padded.contiguous())

        rank = dist.get_rank()
        ctx.offset = sum(sizes[:rank])
        ctx.size = sizes[rank]
        return torch.cat([chunk[:size] for chunk, size in zip(gathered, sizes)], dim=0)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> Tensor:  # noqa: D102 (autograd API)
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.offset : ctx.offset + ctx.size]


def all_gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate the (B_r, ...) tensors of all ranks along dim 0, in rank order.

    Batch sizes may differ between ranks; the other dimensions must agree. Without a process
    group of more than one rank the tensor is returned as it is.

    Returns:
        (sum_r B_r, ...) tensor; gradients reach the calling rank's rows (see the module
        docstring for their scale under DistributedDataParallel).
    """
    if not isinstance(tensor, Tensor):
        raise TypeError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() == 0:
        raise ValueError("tensor must have a batch dimension (B, ...), got a 0-dim tensor")
    if not is_distributed():
        return tensor
    return _AllGatherWithGrad.apply(tensor)


def gather_levels(levels: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """Apply ``all_gather_with_grad`` to each latent level (B, C_l, H_l, W_l)."""
    return tuple(all_gather_with_grad(level) for level in levels)
