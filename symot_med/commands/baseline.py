"""``symot-med baseline train | translate``: the comparison's baselines with our conventions.

``train`` fits CycleGAN, UNIT or histogram matching on a slice cache's training slices, the
slices SyMOT-Flow trains on. ``translate`` writes NIfTI volumes in the input's space, named and
checked exactly as ``symot-med translate`` does.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict
from pathlib import Path

from symot_med.cli import add_common_options, add_device_option, add_translate_arguments, override_fields

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    from symot_med.baselines.training import METHODS

    parser = subparsers.add_parser("baseline", help="train or run a baseline (CycleGAN, UNIT, histogram matching)")
    actions = parser.add_subparsers(dest="baseline_command", required=True, metavar="ACTION")

    p = actions.add_parser("train", help="train a baseline on the training slices of a slice cache")
    p.add_argument("--method", choices=METHODS, required=True, help="baseline to train")
    p.add_argument("--cache", type=Path, required=True, help="slice cache folder from `prepare`")
    p.add_argument("--out", type=Path, required=True, help="model folder (resumes from its last.pt)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: BaselineTrainConfig.epochs)")
    p.add_argument("--decay-epochs", type=int, default=None, help="final epochs with linearly decaying learning rate")
    p.add_argument("--batch-size", type=int, default=None, help="slices per modality and step")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: 2e-4)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: 0)")
    p.add_argument("--filters", type=int, default=None, help="generator filters (default: NetworkConfig.filters; 64 in the CycleGAN paper)")
    p.add_argument("--res-blocks", type=int, default=None, help="generator residual blocks (default: NetworkConfig.res_blocks; 9 in the CycleGAN paper)")
    p.add_argument("--disc-filters", type=int, default=None, help="discriminator filters (default: NetworkConfig.disc_filters)")
    add_device_option(p)
    add_common_options(p)
    p.set_defaults(handler=run_train, command="baseline train")

    p = actions.add_parser("translate", help="translate NIfTI volumes with a trained baseline, in their own space")
    add_translate_arguments(p, "model folder from `baseline train` (contains baseline.json)")
    p.set_defaults(handler=run_translate, command="baseline translate")


def run_train(args: argparse.Namespace) -> int:
    from symot_med.baselines.networks import NetworkConfig
    from symot_med.baselines.training import BaselineTrainConfig, train_baseline_stage

    config = override_fields(BaselineTrainConfig(), epochs=args.epochs, decay_epochs=args.decay_epochs,
                      batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    network = override_fields(NetworkConfig(), filters=args.filters, res_blocks=args.res_blocks, disc_filters=args.disc_filters)
    logger.info("baseline %s: train config %s, network %s", args.method, asdict(config), asdict(network))
    folder = train_baseline_stage(args.method, args.cache, args.out, config, network, args.device, progress=not args.quiet)
    logger.info("baseline model in %s", folder)
    return 0


def run_translate(args: argparse.Namespace) -> int:
    from symot_med.baselines.training import read_baseline_card
    from symot_med.baselines.translate import BaselineTranslator
    from symot_med.config import get_pair
    from symot_med.inference.jobs import translate_into, translate_jobs
    from symot_med.inference.translate import check_output_folder

    pair = get_pair(read_baseline_card(args.model)["pair"])
    jobs = translate_jobs(args.inputs, pair, args.direction, args.mask)
    check_output_folder(args.out, [image for image, _ in jobs], [path for path in args.inputs if path.is_dir()])
    translator = BaselineTranslator(args.model, device=args.device)
    translate_into(translator, jobs, args.out, args.direction)
    logger.info("translated %d volume(s) into %s", len(jobs), args.out)
    return 0
