"""Exponential moving average of a network's weights, kept for inference.

After step t (0-based) every floating-point parameter and buffer w of the network updates its
average a as a <- d a + (1 - d) w with d = min(decay, (1 + t) / (10 + t)). The warm-up on d
keeps short runs from being dominated by the initial weights. Other buffers (integer counters,
fixed permutations) are copied.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """Moving average of the weights of ``network``; ``averaged`` is a frozen copy in eval mode.

    Args:
        network: the trained network; it is not modified.
        decay: long-run decay d in [0, 1); 0 makes ``averaged`` a plain copy of the last weights.
    """

    def __init__(self, network: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.steps = 0
        self.averaged = copy.deepcopy(network).eval()
        for parameter in self.averaged.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, network: nn.Module) -> None:
        """Fold the current weights of ``network`` into the average (call after each step)."""
        d = min(self.decay, (1.0 + self.steps) / (10.0 + self.steps))
        current = network.state_dict()
        for name, average in self.averaged.state_dict().items():
            value = current[name]
            if average.is_floating_point():
                average.mul_(d).add_(value.detach(), alpha=1.0 - d)
            else:
                average.copy_(value)
        self.steps += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "steps": self.steps, "averaged": self.averaged.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state["decay"] != self.decay:
            raise ValueError(f"saved average has decay {state['decay']}, this one {self.decay}")
        self.steps = int(state["steps"])
        self.averaged.load_state_dict(state["averaged"])
