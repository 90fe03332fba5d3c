"""Command line: ``symot-med demo-data | prepare | train-ae | train-flow | translate | demo``."""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

from symot_med import __version__
from symot_med.config import AUTOENCODER_LAYOUTS, DIRECTIONS, PAIRS, PROFILES, get_pair, get_profile

logger = logging.getLogger("symot_med")

PROFILE_NAMES = sorted({name for name, _ in PROFILES})


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, warnings and errors only")


def add_translate_arguments(parser: argparse.ArgumentParser, model_help: str) -> None:
    """Add the inputs, model, direction, output, mask, device and common options of a translate command."""
    parser.add_argument("inputs", type=Path, nargs="+", help="NIfTI files of the input modality, or case / data set folders")
    parser.add_argument("--model", type=Path, required=True, help=model_help)
    parser.add_argument("--direction", choices=DIRECTIONS, required=True, help="forward: source to target (T1->T2, CT->MR); inverse: back")
    parser.add_argument("--out", type=Path, required=True, help="output folder, outside the input folders")
    parser.add_argument("--mask", type=Path, default=None, help="mask NIfTI for a single input file (default: mask file of the case, else a threshold)")
    add_device_option(parser)
    add_common_options(parser)


def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="torch device: auto (CUDA when present), cpu or cuda (default: auto)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="symot-med",
        description="Unpaired modality translation of 3D medical images with SyMOT-Flow.",
    )
    parser.add_argument("--version", action="version", version=f"symot-med {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("demo-data", help="generate the demo cohort from the MNI ICBM152 template")
    p.add_argument("out_dir", type=Path, help="empty or new folder for the cohort")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--subjects", type=int, default=12, help="subjects per data set (default: 12)")
    add_common_options(p)

    p = commands.add_parser("prepare", help="preprocess a data set into a slice cache")
    p.add_argument("--data", type=Path, required=True, help="data set folder (BraTS or SynthRAD2023 layout)")
    p.add_argument("--pair", choices=sorted(PAIRS), required=True, help="modality pair: t1t2 (BraTS) or ctmr (SynthRAD2023)")
    p.add_argument("--profile", choices=PROFILE_NAMES, default="demo", help="preprocessing profile (default: demo)")
    p.add_argument("--out", type=Path, required=True, help="slice cache folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the subject-level train/test split (default: 0)")
    p.add_argument("--test-fraction", type=float, default=0.25, help="fraction of subjects held out (default: 0.25)")
    add_common_options(p)

    p = commands.add_parser("train-ae", help="train the VQ-VAE-2 on both modalities of a slice cache, or on one")
    p.add_argument("--cache", type=Path, required=True, help="slice cache folder from `prepare`")
    p.add_argument("--out", type=Path, required=True, help="output folder (resumes from its last.pt)")
    p.add_argument("--modality", default=None,
                   help="train on this modality's slices only, for one autoencoder per modality (default: both)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: AETrainConfig.epochs)")
    p.add_argument("--batch-size", type=int, default=None, help="slices per batch")
    p.add_argument("--lr", type=float, default=None, help="learning rate")
    p.add_argument("--seed", type=int, default=None, help="random seed")
    p.add_argument("--profile", choices=["demo", "paper"], default=None,
                   help="training profile (default: the slice cache's profile); see symot_med/training/profiles.py")
    p.add_argument("--config", type=Path, default=None,
                   help="JSON file overriding the profile's settings (sections autoencoder, vqvae2, flow)")
    add_device_option(p)
    add_common_options(p)

    p = commands.add_parser("train-flow", help="train the SyMOT flow between the two modalities' latents")
    p.add_argument("--cache", type=Path, required=True, help="slice cache folder from `prepare`")
    p.add_argument("--autoencoder", type=Path, required=True,
                   help="autoencoder.pt, or the folder from `train-ae`: shared by both modalities, or the source's")
    p.add_argument("--target-autoencoder", type=Path, default=None,
                   help="the target modality's own autoencoder (default: --autoencoder serves both modalities)")
    p.add_argument("--out", type=Path, required=True, help="model folder (resumes from its last.pt)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: FlowTrainConfig.epochs)")
    p.add_argument("--batch-size", type=int, default=None, help="latents per batch and side")
    p.add_argument("--lr", type=float, default=None, help="AdamW learning rate")
    p.add_argument("--beta", type=float, default=None, help="weight of the transport cost (default: the pair's)")
    p.add_argument("--seed", type=int, default=None, help="random seed")
    p.add_argument("--profile", choices=["demo", "paper"], default=None,
                   help="training profile (default: the slice cache's profile); see symot_med/training/profiles.py")
    p.add_argument("--config", type=Path, default=None,
                   help="JSON file overriding the profile's settings (sections autoencoder, vqvae2, flow)")
    add_device_option(p)
    add_common_options(p)

    p = commands.add_parser("translate", help="translate NIfTI volumes into the other modality, in their own space")
    add_translate_arguments(p, "model folder written by `train-flow` (contains model.json)")

    p = commands.add_parser("demo", help="run the whole chain on the demo cohort: both pairs, all four directions")
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default: demo_out; reruns resume)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--subjects", type=int, default=12, help="subjects per data set (default: 12)")
    p.add_argument("--ae-epochs", type=int, default=None, help="epochs of a shared autoencoder; each per-modality autoencoder trains twice as many (default: AETrainConfig.epochs)")
    p.add_argument("--flow-epochs", type=int, default=None, help="flow epochs (default: FlowTrainConfig.epochs)")
    p.add_argument("--autoencoders", choices=AUTOENCODER_LAYOUTS, default=None,
                   help="one autoencoder per pair (shared) or per modality (separate) (default: separate, from DemoSettings.autoencoders)")
    p.add_argument("--config", type=Path, default=None,
                   help="JSON file overriding the demo profile's training settings (sections autoencoder, vqvae2, flow)")
    add_device_option(p)
    add_common_options(p)

    _register_command_modules(commands)
    return parser


def _register_command_modules(commands: argparse._SubParsersAction) -> None:
    """Add the parsers of every module in ``symot_med.commands`` (see its docstring)."""
    import symot_med.commands as package

    for module_info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{package.__name__}.{module_info.name}")
        module.register(commands)


def override_fields(config, **values):
    """Return a copy of dataclass ``config`` with the non-None ``values`` replaced."""
    return type(config)(**{**asdict(config), **{k: v for k, v in values.items() if v is not None}})


def _training_settings(args: argparse.Namespace):
    """Training settings of ``--profile`` (default: the cache's profile) and ``--config``."""
    from symot_med.data.slices import SliceCache
    from symot_med.training.profiles import training_settings

    manifest = SliceCache.open(args.cache).manifest
    profile = args.profile or manifest["profile"]["name"]
    return training_settings(profile, get_pair(manifest["pair"]), args.config)


def _autoencoder_file(path: Path) -> Path:
    return path / "autoencoder.pt" if path.is_dir() else path


def run(args: argparse.Namespace) -> int:
    progress = not args.quiet
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "handler"}
    logger.info("symot-med %s %s", args.command, settings)

    if getattr(args, "handler", None) is not None:
        return args.handler(args)

    if args.command == "demo-data":
        from symot_med.data.demo_cohort import generate_demo_cohort

        roots = generate_demo_cohort(args.out_dir, seed=args.seed, n_subjects=args.subjects, progress=progress)
        for name, root in roots.items():
            logger.info("%s cohort: %s", name, root)

    elif args.command == "prepare":
        from symot_med.pipeline.stages import prepare

        pair = get_pair(args.pair)
        profile = get_profile(args.profile, pair.dataset)
        prepare(args.data, pair, profile, args.out, args.seed, args.test_fraction, progress)

    elif args.command == "train-ae":
        from symot_med.pipeline.stages import train_ae_stage

        settings = _training_settings(args)
        config = override_fields(settings.autoencoder, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
        logger.info("autoencoder settings: %s, model %s", asdict(config), asdict(settings.vqvae2))
        modalities = None if args.modality is None else [args.modality]
        train_ae_stage(args.cache, args.out, config, settings.vqvae2, args.device, progress, modalities=modalities)

    elif args.command == "train-flow":
        from symot_med.data.slices import SliceCache
        from symot_med.pipeline.stages import train_flow_stage

        pair = get_pair(SliceCache.open(args.cache).manifest["pair"])
        settings = _training_settings(args)
        config = override_fields(settings.flow, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, beta=args.beta, seed=args.seed)
        logger.info("flow settings: %s", asdict(config))
        autoencoders = _autoencoder_file(args.autoencoder)
        if args.target_autoencoder is not None:
            autoencoders = {pair.source: autoencoders, pair.target: _autoencoder_file(args.target_autoencoder)}
        train_flow_stage(args.cache, autoencoders, args.out, pair, config, args.device, progress)

    elif args.command == "translate":
        from symot_med.inference.jobs import translate_into, translate_jobs
        from symot_med.inference.translate import Translator, check_output_folder, read_model_card

        pair = get_pair(read_model_card(args.model)["pair"])
        jobs = translate_jobs(args.inputs, pair, args.direction, args.mask)
        check_output_folder(args.out, [image for image, _ in jobs], [path for path in args.inputs if path.is_dir()])
        translator = Translator(args.model, device=args.device)
        translate_into(translator, jobs, args.out, args.direction)
        logger.info("translated %d volume(s) into %s", len(jobs), args.out)

    elif args.command == "demo":
        from symot_med.pipeline.demo import DemoSettings, run_demo

        settings = DemoSettings(seed=args.seed, subjects=args.subjects, device=args.device)
        if args.autoencoders is not None:
            settings.autoencoders = args.autoencoders
        if args.config is not None:
            from symot_med.training.profiles import read_config_file

            sections = read_config_file(args.config)
            if "beta" in sections.get("flow", {}):
                raise ValueError(
                    f"config file {args.config}: the demo trains each pair with its own beta "
                    "(1e-5 for t1t2, 1e-3 for ctmr); remove flow.beta, or set beta with `symot-med train-flow`"
                )
            settings.autoencoder = override_fields(settings.autoencoder, **sections.get("autoencoder", {}))
            settings.model = override_fields(settings.model, **sections.get("vqvae2", {}))
            settings.flow = override_fields(settings.flow, **sections.get("flow", {}))
        settings.autoencoder = override_fields(settings.autoencoder, epochs=args.ae_epochs, seed=args.seed)
        settings.flow = override_fields(settings.flow, epochs=args.flow_epochs, seed=args.seed)
        command = "symot-med " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["demo"] else "symot-med demo"
        metrics = run_demo(args.out, settings, progress=progress, command=command)
        _log_demo_summary(metrics, args.out)

    else:
        raise ValueError(f"unknown command {args.command!r}")
    return 0


def _log_demo_summary(metrics: dict, out_dir: Path) -> None:
    for name, result in metrics["directions"].items():
        mean = result["mean"]
        logger.info(
            "%-10s SSIM %.3f (histogram matching %.3f, identity %.3f)  PSNR %.2f dB (%.2f, %.2f dB)",
            name,
            mean["translated"]["ssim"],
            mean["histogram_matching"]["ssim"],
            mean["identity"]["ssim"],
            mean["translated"]["psnr"],
            mean["histogram_matching"]["psnr"],
            mean["identity"]["psnr"],
        )
    for pair_name, per_modality in metrics["autoencoder"].items():
        for modality, scores in per_modality.items():
            logger.info("autoencoder %s %s: held-out SSIM %.3f, PSNR %.2f dB", pair_name, modality, scores["ssim"], scores["psnr"])
    logger.info("demo outputs in %s (metrics.json, translations.png, translated/)", out_dir)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        return run(args)
    except KeyboardInterrupt:
        print(
            "symot-med: interrupted; rerun the same command to continue (training resumes from its last checkpoint)",
            file=sys.stderr,
        )
        return 130
    except Exception as error:  # one line for the user; --debug shows the traceback
        if args.debug:
            raise
        print(f"symot-med: error: {error_message(error)}", file=sys.stderr)
        return 1


def error_message(error: Exception) -> str:
    """Return the one-line message for ``error``; system errors about a path name the path first.

    Python formats an operating-system error as ``[Errno 17] File exists: 'out'``. The message
    returned here names the path first, for example ``cannot use out (File exists); check the
    path and its permissions, or choose another one``.
    """
    if isinstance(error, OSError) and error.errno is not None and error.filename is not None:
        return f"cannot use {error.filename} ({error.strerror}); check the path and its permissions, or choose another one"
    return str(error)


if __name__ == "__main__":
    sys.exit(main())
