"""Published toy-experiment numbers of SyMOT-Flow, kept as constants to compare with.

Source: Z. Xiong, Q. Ding and X. Zhang, "Arbitrary Distributions Mapping via SyMOT-Flow: A
Flow-based Approach Integrating Maximum Mean Discrepancy and Optimal Transport", Table 1
(SWOT-Flow, single MMD, SyMOT-Flow), Table 4 (one direction) and Table 2 (beta sweep).
Each entry is (forward, backward). The SyMOT-Flow paper does not state which kernel its MMD
uses or the parameters of its toy distributions, so these values are not on the same scale as
ours.
"""

from __future__ import annotations

# PAPER_TABLES[metric][pair][method] = (forward, backward)
PAPER_TABLES: dict[str, dict[str, dict[str, tuple[float, float]]]] = {
    "cost": {
        "moons-circles": {
            "swot": (0.684, 0.723), "single-mmd": (0.924, 0.889),
            "one-direction": (0.465, 0.715), "symot": (0.295, 0.288),
        },
        "gauss-gauss": {
            "swot": (32.924, 32.940), "single-mmd": (35.310, 33.956),
            "one-direction": (33.301, 1.9e7), "symot": (32.459, 32.475),
        },
        "8gauss-8gauss": {
            "swot": (7.903, 7.924), "single-mmd": (17.427, 17.799),
            "one-direction": (40.333, 41.441), "symot": (7.539, 7.483),
        },
        "linear-gauss": {
            "swot": (138.580, 5834.745), "single-mmd": (156.393, 153.093),
            "one-direction": (138.939, 4.6e4), "symot": (139.780, 134.318),
        },
    },
    "mmd": {
        "moons-circles": {
            "swot": (1.7e-2, 4.3e-2), "single-mmd": (6.3e-3, 5.7e-3),
            "one-direction": (1.3e-2, 4.5e-2), "symot": (2.9e-3, 2.7e-3),
        },
        "gauss-gauss": {
            "swot": (6.6e-2, 6.6e-2), "single-mmd": (2.3e-2, 1.8e-2),
            "one-direction": (1.4e-2, 2.0e-1), "symot": (6.6e-2, 6.3e-2),
        },
        "8gauss-8gauss": {
            "swot": (1.4e-2, 1.4e-2), "single-mmd": (7.9e-3, 3.9e-3),
            "one-direction": (1.2e-2, 2.9e-2), "symot": (4.2e-3, 2.5e-3),
        },
        "linear-gauss": {
            "swot": (5.6e-3, 3.5), "single-mmd": (3.3e-3, 7.0e-3),
            "one-direction": (2.5e-3, 6.6e-2), "symot": (1.1e-3, 1.3e-3),
        },
    },
}

# Table 2: beta -> (OT cost, MMD). The SyMOT-Flow paper does not name the pair. Its values at
# small beta (about 40) and at beta = 0.03 (about 7.4) match its 8 Gauss to 8 Gauss rows of
# Tables 4 and 1. Beta 0.1 appears in both rows of Table 2, as (6.134, 0.096) and
# (6.163, 0.095). The first is kept.
PAPER_SWEEP: dict[float, tuple[float, float]] = {
    1e-5: (40.321, 0.124), 1e-4: (40.390, 0.142), 1e-3: (40.228, 0.097), 1e-2: (38.501, 0.256),
    3e-2: (7.371, 0.016), 5e-2: (7.000, 0.031), 7e-2: (6.694, 0.050), 1e-1: (6.134, 0.096),
    3e-1: (3.392, 0.603), 5e-1: (1.940, 1.158), 7e-1: (1.142, 1.622), 1.0: (0.577, 2.071),
    10.0: (0.006, 3.099),
}
