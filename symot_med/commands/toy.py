"""``symot-med toy``: SyMOT-Flow and its rivals on the 2-D toy pairs, against exact OT.

Writes ``<out>/results.json``, ``<out>/runs.csv``, a map figure per pair, with
``--beta-sweep`` also ``<out>/beta_sweep.csv`` and ``.png``, and the markdown page
(default ``<out>.md``) whose first line names the command.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import time
from pathlib import Path

from symot_med.cli import add_common_options

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path("docs/results/toy")

# Largest --n-points. POT's exact OT of 8000 points per side peaked at 3 GB and 15 s here, and
# a run solves several such problems at once, one per worker.
MAX_N_POINTS = 10_000


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``toy`` parser."""
    from symot_med.toy.datasets import PAIR_NAMES
    from symot_med.toy.methods import METHODS
    from symot_med.toy.run import DEFAULT_N_POINTS, DEFAULT_SWEEP_PAIR
    from symot_med.toy.train import ToyTrainConfig

    parser = subparsers.add_parser(
        "toy",
        help="compare SyMOT-Flow, single MMD, one direction and SWOT-Flow on the 2-D toy pairs",
        description=(
            "Train every chosen method on every chosen toy pair with the same budget, evaluate "
            "transport cost and MMD against exact OT (POT) and the MMD noise floor, and write "
            "tables, figures and a markdown page."
        ),
    )
    parser.add_argument("--out", type=_path_option, default=DEFAULT_OUT, help=f"folder of the CSV, JSON and PNG files (default: {DEFAULT_OUT})")
    parser.add_argument("--page", type=_path_option, default=None, help="markdown page to write (default: the --out folder name plus .md)")
    parser.add_argument("--pairs", nargs="+", choices=PAIR_NAMES, default=list(PAIR_NAMES), help="toy pairs to run (default: all four)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="methods to train (default: all four)")
    parser.add_argument("--beta-sweep", action="store_true", help="also train SyMOT-Flow for each beta from 1e-5 to 10 on --sweep-pair")
    parser.add_argument("--sweep-pair", choices=PAIR_NAMES, default=None, help=f"pair of the beta sweep (default: {DEFAULT_SWEEP_PAIR})")
    parser.add_argument("--steps", type=int, default=None, help=f"optimiser steps per run (default: {ToyTrainConfig.steps})")
    parser.add_argument("--sweep-steps", type=int, default=None, help="optimiser steps per beta sweep run (default: half of --steps)")
    parser.add_argument("--n-points", type=int, default=DEFAULT_N_POINTS, help=f"points per side, at most {MAX_N_POINTS} (default: {DEFAULT_N_POINTS})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and of the training (default: 0)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes, one torch thread each (default: 2)")
    add_common_options(parser)
    parser.set_defaults(handler=run_toy_command)


def _path_option(text: str) -> Path:
    """Return ``text`` as a path; an empty string, which pathlib reads as the current folder, is rejected."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty; give a path, or '.' for the current folder")
    return Path(text)


def run_toy_command(args: argparse.Namespace) -> int:
    """Run the toy comparison described by the parsed ``args`` and write its outputs."""
    from dataclasses import replace

    from symot_med.toy.report import write_outputs
    from symot_med.toy.run import DEFAULT_SWEEP_PAIR, job_key, plan_jobs, run_toy, sweep_budget, with_steps
    from symot_med.toy.train import ToyTrainConfig

    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}.")
    for option, value in (("--steps", args.steps), ("--sweep-steps", args.sweep_steps)):
        if value is not None and value < 1:
            raise ValueError(f"{option} must be at least 1, got {value}.")
    for option, value in (("--sweep-steps", args.sweep_steps), ("--sweep-pair", args.sweep_pair)):
        if value is not None and not args.beta_sweep:
            raise ValueError(f"{option} applies to the beta sweep only; add --beta-sweep or leave it out.")
    for option, values in (("--pairs", args.pairs), ("--methods", args.methods)):
        repeated = sorted({value for value in values if values.count(value) > 1})
        if repeated:
            raise ValueError(f"{option} repeats {', '.join(repeated)}; list each once.")
    if not 0 <= args.seed < 2**32:
        raise ValueError(f"--seed must be between 0 and 2^32 - 1, got {args.seed}.")
    config = with_steps(replace(ToyTrainConfig(), seed=args.seed), args.steps)
    if args.n_points < config.batch_size:
        raise ValueError(f"--n-points must be at least the batch size {config.batch_size}, got {args.n_points}.")
    if args.n_points > MAX_N_POINTS:
        raise ValueError(
            f"--n-points must be at most {MAX_N_POINTS}, got {args.n_points}: the exact OT of the training sets and "
            f"of each map's images needs memory that grows as n^2 (about 3 GB at 8000 points); use fewer points."
        )
    sweep_config = sweep_budget(config) if args.sweep_steps is None else with_steps(config, args.sweep_steps)
    out_dir = args.out if args.out.name else args.out.resolve()  # "." has no name to derive the page from
    page = args.page if args.page is not None else out_dir.with_name(out_dir.name + ".md")
    command = command_line(args)
    check_output_paths(out_dir, page, command)

    jobs = plan_jobs(
        args.pairs, args.methods, config, n_points=args.n_points, data_seed=args.seed,
        sweep_pair=(args.sweep_pair or DEFAULT_SWEEP_PAIR) if args.beta_sweep else None, sweep_config=sweep_config,
    )
    start = time.perf_counter()
    cpu_start = _children_cpu_seconds() + time.process_time()
    results = run_toy(jobs, workers=args.workers, progress=not args.quiet)
    cpu_seconds = _children_cpu_seconds() + time.process_time() - cpu_start
    distinct_runs = len({job_key(job) for job in jobs})
    timing = (
        f"{time.perf_counter() - start:.0f} s wall clock and {cpu_seconds:.0f} s CPU time (all processes) for "
        f"{distinct_runs} training run{'' if distinct_runs == 1 else 's'} with {args.workers} worker(s) on {os.cpu_count()} logical CPU(s) "
        f"({platform.machine()}), 1-minute load average {os.getloadavg()[0]:.1f} at the end. "
        "On a shared machine the wall time is an upper bound; benchmarks/README.md has the timing record."
    )
    written = write_outputs(results, out_dir, page, command, timing_note=timing)
    logger.info("wrote %s and the files in %s", written["page"], out_dir)
    return 0


def check_output_paths(out_dir: Path, page: Path, command: str) -> None:
    """Check and create the output folders before training, and protect an existing page.

    A page generated by another command gets a warning; a file that symot-med did not
    generate is never replaced.

    Raises:
        ValueError: when ``out_dir`` is a file, ``page`` is a folder, a folder cannot be
            created, or ``page`` exists and was not generated by symot-med.
    """
    from symot_med.io import check_replaceable_page

    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file; choose a folder for the CSV, JSON and PNG files.")
    check_replaceable_page(page, "--page", "toy")
    for folder, option in ((out_dir, "--out"), (page.parent, "--page")):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(f"cannot create the folder {folder} for {option} ({error.strerror}); choose another path.") from None

    if page.is_file():
        first_line = page.read_text(encoding="utf-8", errors="replace").split("\n", 1)[0]
        other_command = first_line.split("`")[1]
        if f"`{command}`" not in first_line:
            logger.warning(
                "%s will be replaced: it was generated by another toy command (%s). Stop now (Ctrl-C) to keep it, or "
                "pass --out and --page elsewhere.", page, other_command,
            )
    check_replaceable_data(out_dir)


def check_replaceable_data(out_dir: Path) -> None:
    """Raise ValueError when ``out_dir`` contains files with the toy run's names that an earlier toy
    run did not write, so a user's own results.json or runs.csv is never replaced.

    The files count as the toy's when ``results.json`` in the same folder is a toy run's record.
    """
    from symot_med.toy.datasets import PAIR_NAMES

    names = ["results.json", "runs.csv", "beta_sweep.csv", "beta_sweep.png"] + [f"{pair}.png" for pair in PAIR_NAMES]
    present = [name for name in names if (out_dir / name).exists() or (out_dir / name).is_symlink()]
    if not present or _is_toy_record(out_dir / "results.json"):
        return
    raise ValueError(
        f"--out {out_dir} contains {', '.join(present)}, which no earlier `symot-med toy` run wrote there (the "
        "folder has no results.json of one); choose another --out folder, or move those files."
    )


def _is_toy_record(path: Path) -> bool:
    """Return whether ``path`` is a regular file with the JSON record that `symot-med toy` writes."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(record, dict) and str(record.get("command", "")).startswith("symot-med toy")


def command_line(args: argparse.Namespace) -> str:
    """Return the ``symot-med toy`` command line that reproduces ``args``, defaults left out."""
    from symot_med.toy.datasets import PAIR_NAMES
    from symot_med.toy.methods import METHODS
    from symot_med.toy.run import DEFAULT_N_POINTS, DEFAULT_SWEEP_PAIR

    parts = ["symot-med", "toy"]
    if args.out != DEFAULT_OUT:
        parts += ["--out", str(args.out)]
    if args.page is not None:
        parts += ["--page", str(args.page)]
    if list(args.pairs) != list(PAIR_NAMES):
        parts += ["--pairs", *args.pairs]
    if list(args.methods) != list(METHODS):
        parts += ["--methods", *args.methods]
    if args.beta_sweep:
        parts.append("--beta-sweep")
        if args.sweep_pair not in (None, DEFAULT_SWEEP_PAIR):
            parts += ["--sweep-pair", args.sweep_pair]
    if args.steps is not None:
        parts += ["--steps", str(args.steps)]
    if args.sweep_steps is not None:
        parts += ["--sweep-steps", str(args.sweep_steps)]
    if args.n_points != DEFAULT_N_POINTS:
        parts += ["--n-points", str(args.n_points)]
    if args.seed != 0:
        parts += ["--seed", str(args.seed)]
    if args.workers != 2:
        parts += ["--workers", str(args.workers)]
    return shlex.join(parts)


def _children_cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
