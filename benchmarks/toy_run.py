"""Time a full ``symot-med toy`` run: wall clock, CPU time of all its processes, machine load.

The command runs in a child process, so ``resource.getrusage(RUSAGE_CHILDREN)`` afterwards
covers it and its worker processes. On a machine shared with other jobs the wall time is an
upper bound. The CPU time divided by the number of workers estimates the wall time on
dedicated cores, and is itself inflated by cache and hyper-thread sharing.

Usage::

    python benchmarks/toy_run.py                                  # symot-med toy --out /tmp/toy_benchmark
    python benchmarks/toy_run.py -- --beta-sweep --out docs/results/toy   # extra arguments after --
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import resource
import subprocess
import sys
import time

logger = logging.getLogger("toy_run")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "toy_arguments", nargs=argparse.REMAINDER,
        help="arguments passed to `symot-med toy` after --, default: --out /tmp/toy_benchmark",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    toy_arguments = [argument for argument in args.toy_arguments if argument != "--"]
    if "--out" not in toy_arguments:
        toy_arguments += ["--out", "/tmp/toy_benchmark"]
    command = [sys.executable, "-m", "symot_med.cli", "toy", "--quiet", *toy_arguments]
    logger.info(
        "command: %s\ncpu: %s, %d logical CPUs, load average before: %s",
        " ".join(command), _cpu_name(), os.cpu_count(), " ".join(f"{value:.1f}" for value in os.getloadavg()),
    )

    start = time.perf_counter()
    completed = subprocess.run(command, check=False)
    wall_seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_seconds = usage.ru_utime + usage.ru_stime

    logger.info(
        "exit code %d\nwall time: %.0f s (%.1f min)\nCPU time, all processes: %.0f s (%.0f s per core on 2 cores)\n"
        "load average after: %s",
        completed.returncode, wall_seconds, wall_seconds / 60, cpu_seconds, cpu_seconds / 2,
        " ".join(f"{value:.1f}" for value in os.getloadavg()),
    )
    return completed.returncode


if __name__ == "__main__":
    sys.exit(main())
