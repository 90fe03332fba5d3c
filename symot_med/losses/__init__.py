"""Losses of SyMOT-Flow: squared MMD, transport cost and their combination."""

from symot_med.losses.mmd import (
    DEFAULT_SCALES,
    ESTIMATORS,
    MMDLoss,
    median_bandwidth,
    mmd2,
    pairwise_sq_dists,
)
from symot_med.losses.symot import VARIANTS, SyMOTLoss, symot_loss
from symot_med.losses.transport import COST_REDUCTIONS, transport_cost

__all__ = [
    "COST_REDUCTIONS",
    "DEFAULT_SCALES",
    "ESTIMATORS",
    "MMDLoss",
    "SyMOTLoss",
    "VARIANTS",
    "median_bandwidth",
    "mmd2",
    "pairwise_sq_dists",
    "symot_loss",
    "transport_cost",
]
