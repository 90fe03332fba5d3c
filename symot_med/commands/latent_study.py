"""``symot-med latent-study``: shared or separate autoencoders, quantised or continuous flow
inputs, snapped or plain decoding, measured on slice caches (see ``symot_med.experiments``)."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from symot_med.cli import add_common_options, add_device_option

logger = logging.getLogger(__name__)

DEFAULT_PAGE = Path("docs/results/latent_study.md")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``latent-study`` parser."""
    parser = subparsers.add_parser(
        "latent-study",
        help="measure which latent space the flow should use (shared or separate autoencoders, ...)",
        description=(
            "Train shared and per-modality autoencoders and flows on quantised and continuous "
            "latents with the demo profile's budget, score translation of the held-out slices, "
            "and write a markdown page."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--demo-dir", type=Path, help="output folder of `symot-med demo`: its slice caches, and its "
                        "autoencoders and flows as the shared variants (their settings must be the study's)")
    source.add_argument("--cache", type=Path, nargs="+", help="slice cache folders from `prepare` (one per pair)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the trained models, reruns resume "
                        "(default: DEMO_DIR/latent_study; required with --cache)")
    parser.add_argument("--pairs", nargs="+", choices=["t1t2", "ctmr"], default=None,
                        help="with --demo-dir: pairs to study (default: both)")
    parser.add_argument("--page", type=Path, default=DEFAULT_PAGE, help=f"markdown page to write (default: {DEFAULT_PAGE})")
    parser.add_argument("--ae-epochs", type=int, default=None, help="autoencoder epochs (default: the demo profile's)")
    parser.add_argument("--flow-epochs", type=int, default=None, help="flow epochs (default: the demo profile's)")
    add_device_option(parser)
    add_common_options(parser)
    parser.set_defaults(handler=run_latent_study_command)


def run_latent_study_command(args: argparse.Namespace) -> int:
    from symot_med.data.slices import SliceCache
    from symot_med.device import resolve_device
    from symot_med.experiments.latent_study import run_latent_study, study_markdown
    from symot_med.io import atomic_path, check_replaceable_page
    from symot_med.models.vqvae2 import VQVAE2Config
    from symot_med.training.autoencoder import AETrainConfig
    from symot_med.training.flow import FlowTrainConfig

    check_replaceable_page(args.page, "--page", "latent-study")
    autoencoder = AETrainConfig() if args.ae_epochs is None else replace(AETrainConfig(), epochs=args.ae_epochs)
    flow = FlowTrainConfig() if args.flow_epochs is None else replace(FlowTrainConfig(), epochs=args.flow_epochs)
    device = str(resolve_device(args.device))
    if args.demo_dir is not None:
        pair_names = args.pairs or ["t1t2", "ctmr"]
        pair_dirs = [args.demo_dir / name for name in dict.fromkeys(pair_names) if (args.demo_dir / name / "cache").is_dir()]
        if not pair_dirs:
            raise FileNotFoundError(
                f"{args.demo_dir} has no slice cache (t1t2/cache or ctmr/cache); run `symot-med demo --out {args.demo_dir}` first"
            )
        jobs = [(pair_dir / "cache", pair_dir) for pair_dir in pair_dirs]
        work = args.work or args.demo_dir / "latent_study"
    else:
        if args.work is None:
            raise ValueError("--work is required with --cache")
        if args.pairs is not None:
            raise ValueError("--pairs applies to --demo-dir only; with --cache, list the cache of each pair to study")
        jobs = [(cache, None) for cache in args.cache]
        work = args.work

    # Open every cache before the page's folder is created, so a wrong path leaves nothing behind.
    pairs = [SliceCache.open(cache).manifest["pair"] for cache, _ in jobs]
    repeated = sorted({pair for pair in pairs if pairs.count(pair) > 1})
    if repeated:
        raise ValueError(f"--cache lists more than one cache of pair {', '.join(repeated)}; pass one cache per pair")
    for cache, _ in jobs:
        if work.resolve() == cache.resolve() or cache.resolve() in work.resolve().parents:
            raise ValueError(f"--work {work} lies inside the slice cache {cache}; choose a folder outside it")
    try:
        args.page.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"--page: cannot create the folder {args.page.parent} ({error.strerror}); choose another --page") from None

    results = []
    for (cache, reuse_dir), pair in zip(jobs, pairs):
        results.append(
            run_latent_study(cache, work / pair, autoencoder, VQVAE2Config(), flow, device=device,
                             progress=not args.quiet, reuse_dir=reuse_dir)
        )

    command = "symot-med " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    with atomic_path(args.page) as temporary:
        temporary.write_text(study_markdown(results, command))
    logger.info("wrote %s", args.page)
    return 0
