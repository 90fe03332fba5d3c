"""Measure wall time and peak memory of chunked ``mmd2`` on N = M points in D dimensions.

Peak memory is the process's maximum resident set size from
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (KiB on Linux). It includes the Python
interpreter, the torch import and the input tensors, so the script logs it once before and
once after the MMD computation. tracemalloc would miss torch's tensor allocations.

Usage::

    python benchmarks/mmd_memory.py                      # N = M = 20,000, D = 2, forward only
    python benchmarks/mmd_memory.py --backward           # forward and backward
    python benchmarks/mmd_memory.py --chunk-size 0 --n 5000   # unchunked, for comparison
"""

from __future__ import annotations

import argparse
import logging
import platform
import resource
import time

import torch

from symot_med.losses import ESTIMATORS, mmd2

logger = logging.getLogger("mmd_memory")


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="points per set (N = M)")
    parser.add_argument("--dim", type=int, default=2, help="features per point (D)")
    parser.add_argument(
        "--chunk-size", type=int, default=1024, help="rows per block, or 0 for the unchunked computation"
    )
    parser.add_argument("--estimator", choices=ESTIMATORS, default="biased")
    parser.add_argument(
        "--backward", action="store_true", help="also run the backward pass to x and z"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    torch.set_num_threads(args.threads)
    chunk_size = args.chunk_size or None
    logger.info(
        "config: n=%d dim=%d chunk_size=%s estimator=%s backward=%s threads=%d cpu=%s torch=%s",
        args.n, args.dim, chunk_size, args.estimator, args.backward, args.threads,
        _cpu_name(), torch.__version__,
    )

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.n, args.dim, generator=generator)
    z = torch.randn(args.n, args.dim, generator=generator) + 0.5
    x.requires_grad_(args.backward)
    z.requires_grad_(args.backward)
    peak_before = _peak_rss_mib()

    cpu_start = time.process_time()
    start = time.perf_counter()
    value = mmd2(x, z, estimator=args.estimator, chunk_size=chunk_size)
    forward_seconds = time.perf_counter() - start
    backward_seconds = float("nan")
    if args.backward:
        start = time.perf_counter()
        value.backward()
        backward_seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    peak_after = _peak_rss_mib()

    logger.info("mmd2 = %.6g", value.item())
    logger.info(
        "wall time: forward %.2f s, backward %.2f s. Process CPU time (all threads): %.2f s",
        forward_seconds, backward_seconds, cpu_seconds,
    )
    logger.info(
        "peak RSS (ru_maxrss): %.0f MiB before mmd2, %.0f MiB after (increase %.0f MiB)",
        peak_before, peak_after, peak_after - peak_before,
    )


if __name__ == "__main__":
    main()
