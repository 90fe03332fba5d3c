"""Train one toy job with changed training settings and compare it with exact OT and the MMD floor.

Prints one JSON line with the transport cost of the map as a ratio to the exact OT cost and
the report MMD^2 as a ratio to the noise floor, both forward / backward. The line also gives
the wall and CPU time of the training job. The job runs in this process with one torch
thread, like a worker of `symot-med toy`.

Usage::

    python benchmarks/toy_budget.py 8gauss-8gauss symot 0.01 '{"steps": 3000}'
    python benchmarks/toy_budget.py moons-circles symot 0.1 '{"lr": 6e-3}'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace

import torch

from symot_med.toy.datasets import PAIR_NAMES
from symot_med.toy.methods import METHODS
from symot_med.toy.run import DEFAULT_N_POINTS, ToyJob, reference_values, run_job
from symot_med.toy.train import ToyTrainConfig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pair", choices=PAIR_NAMES)
    parser.add_argument("method", choices=METHODS)
    parser.add_argument("beta", type=float, help="weight of the transport cost")
    parser.add_argument(
        "settings", nargs="?", default="{}",
        help='JSON object of ToyTrainConfig fields to change, for example \'{"steps": 3000}\'',
    )
    parser.add_argument("--seed", type=int, default=0, help="data seed (default: 0)")
    args = parser.parse_args()

    settings = json.loads(args.settings)
    if "mmd_scales" in settings:
        settings["mmd_scales"] = tuple(settings["mmd_scales"])
    config = replace(ToyTrainConfig(), **settings)
    torch.set_num_threads(1)

    reference = reference_values(args.pair, DEFAULT_N_POINTS, args.seed)
    start, cpu_start = time.perf_counter(), time.process_time()
    result = run_job(ToyJob(args.pair, args.method, args.beta, config, DEFAULT_N_POINTS, args.seed, "table"))
    metrics = result["metrics"]
    exact = reference["exact_ot"]
    line = {
        "pair": args.pair,
        "method": args.method,
        "beta": args.beta,
        "settings": settings,
        "cost_ratio": [round(metrics["cost_forward"] / exact, 4), round(metrics["cost_backward"] / exact, 4)],
        "mmd_floor_ratio": [
            round(metrics["mmd_forward"] / reference["floor_forward"]["mean"], 2),
            round(metrics["mmd_backward"] / reference["floor_backward"]["mean"], 2),
        ],
        "wall_seconds": round(time.perf_counter() - start, 1),
        "cpu_seconds": round(time.process_time() - cpu_start, 1),
    }
    print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
