"""Write the synthetic demo cohort (BraTS- and SynthRAD2023-style) to a folder.

    python data_prep/make_demo_cohort.py OUT_DIR [--seed 0] [--subjects 12]

This is a thin command-line wrapper over ``symot_med.data.demo_cohort.generate_demo_cohort``;
``symot-med demo-data`` calls the same function.
"""

from __future__ import annotations

import argparse
import logging
import sys

from symot_med.data.demo_cohort import DATASETS, generate_demo_cohort


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="new or empty folder to write the cohort to")
    parser.add_argument("--seed", type=int, default=0, help="random seed, a non-negative integer (default 0)")
    parser.add_argument(
        "--subjects", type=int, default=12, help="subjects per data set (default 12, at most 999)"
    )
    parser.add_argument(
        "--datasets",
        nargs="+",
        choices=DATASETS,
        default=list(DATASETS),
        help="data sets to write (default: both)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        roots = generate_demo_cohort(
            arguments.out_dir,
            seed=arguments.seed,
            n_subjects=arguments.subjects,
            datasets=arguments.datasets,
            progress=not arguments.no_progress,
        )
    except ValueError as error:
        logging.getLogger("make_demo_cohort").error("%s", error)
        return 2
    for dataset, root in roots.items():
        logging.getLogger("make_demo_cohort").info("%s root: %s", dataset, root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
