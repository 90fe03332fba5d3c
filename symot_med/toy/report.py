"""Tables, acceptance checks and the results page of a toy run.

Acceptance criteria checked on every page, per pair and per direction (forward T, backward
T^-1), for SyMOT-Flow:

1. its transport cost is lower than that of single MMD and of SWOT-Flow;
2. on Moons to Circles and 8 Gauss to 8 Gauss, |cost / exact OT - 1| <= 10 %;
3. its report MMD^2 is at most 3 times the noise floor of the distribution it maps onto.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from symot_med import __version__
from symot_med.toy.datasets import draw, gauss_pair_w2_squared, get_pair
from symot_med.toy.evaluate import REPORT_BANDWIDTH, REPORT_SCALES
from symot_med.toy.figures import plot_beta_sweep, plot_pair_maps
from symot_med.toy.methods import METHOD_TITLES
from symot_med.toy.paper import PAPER_SWEEP, PAPER_TABLES
from symot_med.toy.run import BETA_CHOICE, ToyRunResults

logger = logging.getLogger(__name__)

DIRECTIONS = ("forward", "backward")
OT_RATIO_PAIRS = ("moons-circles", "8gauss-8gauss")
OT_RATIO_TOLERANCE = 0.10
MMD_FLOOR_FACTOR = 3.0
# Standard errors by which a map's cost must lie below the W2^2 estimate before the page names it.
W2_SIGNIFICANCE = 3.0
TABLE1_METHODS = ("swot", "single-mmd", "symot")
# The pair whose rows the SyMOT-Flow paper's unnamed beta sweep (Table 2) matches.
PAPER_SWEEP_PAIR = "8gauss-8gauss"
# Cost criteria of the acceptance checks, and the rival each compares SyMOT-Flow with.
RIVAL_BY_CRITERION = {f"cost below {METHOD_TITLES[method]}": method for method in ("single-mmd", "swot")}
TABLE4_METHODS = ("one-direction", "symot")
EFFICIENCY_METHODS = ("swot", "single-mmd", "one-direction", "symot")


@dataclass(frozen=True)
class Check:
    """One acceptance check of one pair and direction."""

    criterion: str
    pair: str
    direction: str
    value: float
    threshold: float
    passed: bool | None  # None: not run, because a method or pair was left out
    detail: str
    rival_mmd_ratio: float = math.nan  # cost checks: the rival map's MMD^2 over the noise floor
    symot_mmd_ratio: float = math.nan  # cost checks: SyMOT-Flow's MMD^2 over the noise floor


def check_criteria(results: ToyRunResults) -> list[Check]:
    """Evaluate the three acceptance criteria of the module docstring on a toy run."""
    runs = _runs_by_key(results)
    checks = []
    for pair in table_pairs(results):
        reference = results.references[pair]
        symot = runs.get((pair, "symot"))
        for direction in DIRECTIONS:
            cost_key, mmd_key = f"cost_{direction}", f"mmd_{direction}"
            symot_cost = symot["metrics"][cost_key] if symot else math.nan

            floor = reference[f"floor_{direction}"]["mean"]
            symot_mmd_ratio = symot["metrics"][mmd_key] / floor if symot else math.nan
            for rival in ("single-mmd", "swot"):
                other = runs.get((pair, rival))
                other_cost = other["metrics"][cost_key] if other else math.nan
                other_mmd = other["metrics"][mmd_key] if other else math.nan
                passed = None if not (symot and other) else symot_cost < other_cost
                detail = (
                    f"SyMOT-Flow {_number(symot_cost)} vs {METHOD_TITLES[rival]} {_number(other_cost)} "
                    f"(its MMD^2 {other_mmd / floor:.1f}x floor)"
                    if passed is not None else _not_run(symot, other, rival)
                )
                checks.append(Check(
                    f"cost below {METHOD_TITLES[rival]}", pair, direction, symot_cost, other_cost, passed, detail,
                    rival_mmd_ratio=other_mmd / floor, symot_mmd_ratio=symot_mmd_ratio,
                ))

            if pair in OT_RATIO_PAIRS:
                ratio = symot_cost / reference["exact_ot"]
                passed = None if not symot else abs(ratio - 1.0) <= OT_RATIO_TOLERANCE
                checks.append(Check(
                    "cost within 10 % of exact OT", pair, direction, ratio, OT_RATIO_TOLERANCE, passed,
                    f"cost {_number(symot_cost)} / exact OT {_number(reference['exact_ot'])} = {ratio:.3f}"
                    if symot else _not_run(symot, True, "symot"),
                ))

            symot_mmd = symot["metrics"][mmd_key] if symot else math.nan
            passed = None if not symot else symot_mmd <= MMD_FLOOR_FACTOR * floor
            checks.append(Check(
                "MMD within 3x noise floor", pair, direction, symot_mmd / floor, MMD_FLOOR_FACTOR, passed,
                f"MMD^2 {_number(symot_mmd)} = {symot_mmd / floor:.2f} x floor {_number(floor)}"
                if symot else _not_run(symot, True, "symot"),
            ))
    return checks


def _not_run(symot: dict | None, other: object, rival: str) -> str:
    """Return the detail of a check that could not run because a method was left out."""
    missing = [METHOD_TITLES[method] for method, run in (("symot", symot), (rival, other)) if not run]
    return f"{' and '.join(dict.fromkeys(missing))} not run"


def write_outputs(
    results: ToyRunResults,
    out_dir: Path,
    page_path: Path,
    command: str,
    timing_note: str = "",
) -> dict[str, Path]:
    """Write the JSON, CSV files, figures and the markdown page of a toy run.

    Args:
        results: from :func:`symot_med.toy.run.run_toy`.
        out_dir: folder of the data files and figures; created if missing.
        page_path: markdown page; its first line names ``command``.
        command: the command line that produced the run.
        timing_note: sentence about the machine and run time, added to the page.

    Returns:
        Name -> path of each file written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    page_path.parent.mkdir(parents=True, exist_ok=True)
    checks = check_criteria(results)
    written = {
        "json": _write_json(results, checks, out_dir / "results.json", command),
        "runs_csv": _write_runs_csv(results, out_dir / "runs.csv"),
    }
    if results.sweep:
        written["sweep_csv"] = _write_sweep_csv(results, out_dir / "beta_sweep.csv")
        written["sweep_png"] = _plot_sweep(results, out_dir / "beta_sweep.png")
    for pair in results.references:
        maps = {
            run["method"]: (run["t_x"], run["t_inv_z"])
            for method in ("swot", "single-mmd", "one-direction", "symot")
            for run in results.runs
            if run["pair"] == pair and run["method"] == method
        }
        if maps:
            x = draw(pair, "source", results.n_points, results.data_seed)
            z = draw(pair, "target", results.n_points, results.data_seed)
            written[f"{pair}_png"] = plot_pair_maps(x, z, maps, out_dir / f"{pair}.png", get_pair(pair).title)

    page = render_page(results, checks, command, out_dir, page_path, timing_note)
    page_path.write_text(page, encoding="utf-8")
    written["page"] = page_path
    logger.info("wrote %s and %d files in %s", page_path, len(written) - 1, out_dir)
    return written


def render_page(
    results: ToyRunResults,
    checks: list[Check],
    command: str,
    out_dir: Path,
    page_path: Path,
    timing_note: str = "",
) -> str:
    """Return the markdown results page of a toy run."""
    link = Path(os.path.relpath(out_dir, page_path.parent)).as_posix()
    lines = [
        f"Generated by `{command}` (symot-med {__version__}); rerun that command to update this page, do not edit it.",
        "",
        "# SyMOT-Flow on the 2-D toy pairs, against exact optimal transport",
        "",
        "Our runs of the illustrative experiments of Z. Xiong, Q. Ding and X. Zhang, \"Arbitrary "
        "Distributions Mapping via SyMOT-Flow: A Flow-based Approach Integrating Maximum Mean "
        "Discrepancy and Optimal Transport\" (the SyMOT-Flow paper below), next to the numbers it publishes.",
        "",
        "## Setup",
        "",
    ]
    lines += _setup_section(results)
    if timing_note:
        lines.append(f"- Run time: {timing_note}")
    lines += ["", "## Acceptance criteria", ""]
    lines += _criteria_section(results, checks)
    lines += _table_section(results, "Table 1: SWOT-Flow, single MMD and SyMOT-Flow", TABLE1_METHODS, link)
    if any(run["method"] == "one-direction" for run in results.runs):  # otherwise it repeats Table 1's SyMOT-Flow column
        lines += _table_section(results, "Table 4: one direction and SyMOT-Flow", TABLE4_METHODS, link)
    lines += _efficiency_section(results)
    lines += _below_w2_section(results)
    if results.sweep:
        lines += _sweep_section(results, link)
    lines += ["", "## Learned maps", ""]
    lines.append(
        "Blue: the points being mapped; orange: their images; green: a segment from each point to "
        "its image. Row 1 maps x with T, row 2 maps z with T^-1 (compare SyMOT-Flow Figs. 2 and 3)."
    )
    for pair in results.references:
        if any(run["pair"] == pair for run in results.runs):
            lines += ["", f"![{get_pair(pair).title}]({link}/{pair}.png)"]
    lines.append("")
    return "\n".join(lines)


def _setup_section(results: ToyRunResults) -> list[str]:
    """Return the page's list of data, budget, kernels, references and betas."""
    config = results.config
    floor_repeats = next(iter(results.references.values()))["floor_forward"]["repeats"]
    return [
        f"- Data: {results.n_points} points per side, data seed {results.data_seed}; the pairs and how they "
        "are drawn are documented in `symot_med/toy/datasets.py`. The SyMOT-Flow paper gives no "
        "parameters for its toy distributions, so its numbers come from other data.",
        f"- Budget, the same for every method: a dense flow of {config.n_blocks} FrEIA `AllInOneBlock`s "
        f"(subnets with 2 hidden layers of {config.hidden}, soft clamp {config.clamp}). "
        f"It trains for {config.steps} AdamW steps with batch {config.batch_size} per side and learning "
        f"rate {config.lr:g} ({config.warmup_steps} warm-up steps, then a half cosine to {config.final_lr:g}). "
        f"Weight decay is {config.weight_decay:g}, the gradient norm is clipped at {config.grad_clip:g}, "
        f"and the training seed is {config.seed}.{_sweep_budget(results)}",
        f"- Training MMD: reduced estimator (SyMOT-Flow equation (7)), Gaussian kernels with bandwidths "
        f"{_scales(config.mmd_scales)} times {_base_bandwidth(config)}. "
        f"SWOT-Flow: squared sliced 2-Wasserstein distance with {config.n_projections} random directions per term, "
        f"on the same batches of {config.batch_size}. Its authors' code uses the full sample sets at every step "
        "instead. `benchmarks/README.md` (\"SWOT-Flow on the full training sets\") trains it that way, outside "
        "the shared budget.",
        "- Transport cost: mean of |a - b|^2 summed over the 2 coordinates (the convention of POT's "
        "`ot.dist`), forward over (x, T(x)) and backward over (T^-1(z), z).",
        f"- Reported MMD^2: full biased estimator (SyMOT-Flow equation (3)) with one fixed kernel for every "
        f"pair, method and direction: the sum of Gaussians with bandwidths {_scales(REPORT_SCALES, REPORT_BANDWIDTH)} "
        "length units. Forward: MMD^2(T(x), z); backward: MMD^2(T^-1(z), x).",
        "- Exact OT: `ot.emd2` on the two training sets with uniform weights and `M = ot.dist(x, z)`; "
        "the run fails if POT reports that it stopped before the optimum.",
        *_w2_setup(results),
        "- Noise floor: the same MMD^2 between two independent draws of the target distribution "
        f"(q forward, p backward) of {results.n_points} points, mean of "
        f"{floor_repeats} draw pairs.",
        "- Betas: the weight of the transport cost of each method, per pair, is in the table below. "
        "Single MMD always uses 0. " + BETA_CHOICE,
        "",
        *_betas_table(results),
    ]


def _w2_setup(results: ToyRunResults) -> list[str]:
    """Return the setup line on the W2^2(p, q) estimate, or nothing for references without one."""
    estimates = [reference["w2_estimate"] for reference in results.references.values() if "w2_estimate" in reference]
    if not estimates:
        return []
    return [
        f"- W2^2 estimate: mean `ot.emd2` cost over {estimates[0]['repeats']} pairs of independent draws of "
        f"{estimates[0]['points']} points of p and q (not the training sets). W2^2(p, q) is the least mean cost "
        "E|x - T(x)|^2 of any map T that carries p onto q. The OT cost between finite draws lies above it on "
        "average and approaches it as the draws grow." + _gauss_closed_form(results)
    ]


def _gauss_closed_form(results: ToyRunResults) -> str:
    """Return a sentence comparing the Gauss to Gauss estimate with the closed form, or "" without that pair."""
    estimate = results.references.get("gauss-gauss", {}).get("w2_estimate")
    if not estimate:
        return ""
    return (
        f" On Gauss to Gauss, where W2^2 has a closed form, the estimate is {_number(estimate['mean'])} (standard "
        f"error {_number(_estimate_standard_error(estimate))}) and the closed form {_number(gauss_pair_w2_squared())}."
    )


# Words for the training settings named on the page.
CONFIG_WORDS = {"steps": "steps", "warmup_steps": "warm-up steps", "batch_size": "batch size", "lr": "learning rate"}


def _sweep_budget(results: ToyRunResults) -> str:
    """Return the sentence on the beta sweep's budget where it differs from the table runs'."""
    sweep = results.sweep_config
    if sweep is None or sweep == results.config:
        return ""
    changed = []
    for name in sweep.to_dict():
        if getattr(sweep, name) != getattr(results.config, name):
            changed.append(f"{CONFIG_WORDS.get(name, name.replace('_', ' '))} {getattr(sweep, name)}")
    return f" The beta sweep's runs differ only in {' and '.join(changed)}."


def _base_bandwidth(config) -> str:
    if config.mmd_bandwidth == "data":
        return "the median pairwise distance of the pooled training sets"
    return "the median pairwise distance of each term's pooled batch"


def _criteria_section(results: ToyRunResults, checks: list[Check]) -> list[str]:
    lines = [
        "| criterion | pair | direction | result | numbers |",
        "|---|---|---|---|---|",
    ]
    for check in checks:
        result = {True: "pass", False: "**MISS**", None: "not run"}[check.passed]
        lines.append(
            f"| {check.criterion} | {get_pair(check.pair).title} | {check.direction} | {result} | {check.detail} |"
        )
    passes = sum(check.passed is True for check in checks)
    misses = sum(check.passed is False for check in checks)
    not_run = sum(check.passed is None for check in checks)
    summary = f"{passes} of {len(checks)} checks pass, {misses} miss"
    summary += f", {not_run} not run" if not_run else ""
    summary += " (marked **MISS** above)." if misses else "."
    lines += ["", summary]
    short = [
        check for check in checks
        if check.passed is False and check.rival_mmd_ratio > max(MMD_FLOOR_FACTOR, check.symot_mmd_ratio)
    ]
    if short:
        lines += [
            "",
            f"In {len(short)} of the misses the rival's map has MMD^2 above {MMD_FLOOR_FACTOR:g}x the noise floor "
            f"and above SyMOT-Flow's ({', '.join(f'{c.rival_mmd_ratio:.1f}x against {c.symot_mmd_ratio:.1f}x' for c in short)}): "
            "it did not carry the points onto the "
            "other distribution. A map that stops short of the target can cost less than one that reaches it, "
            "even less than the exact OT cost, so these misses compare maps that do not solve the same problem. "
            "How efficiently each map reaches its own images is in the section \"Cost against the points each "
            "map reaches\" below.",
        ]
        if any(RIVAL_BY_CRITERION.get(check.criterion) == "swot" for check in short):
            lines[-1] += (
                " SWOT-Flow trained on the full sets at every step, as in its authors' code, is compared in "
                "`benchmarks/README.md` (\"SWOT-Flow on the full training sets\")."
            )
    notes = [_miss_note(results, check) for check in checks if check.passed is False]
    notes = [note for note in notes if note]
    if notes:
        lines += ["", "What else the run says about each miss against a rival:", ""] + notes
    return lines


def _miss_note(results: ToyRunResults, check: Check) -> str:
    """Return a bullet on one missed cost check against a rival: the W2^2 estimate and the sweep at equal MMD.

    Returns "" for other checks and where neither applies.
    """
    rival = RIVAL_BY_CRITERION.get(check.criterion)
    if rival is None:
        return ""
    reference = results.references[check.pair]
    name, rival_cost, direction = METHOD_TITLES[rival], check.threshold, check.direction
    rival_metrics = _runs_by_key(results)[(check.pair, rival)]["metrics"]
    sentences = []

    estimate = reference.get("w2_estimate")
    below = _below_w2_estimate(rival_metrics, direction, estimate)
    if below > W2_SIGNIFICANCE:
        sentences.append(
            f"{name}'s cost {_number(rival_cost)} lies {100 * (1 - rival_cost / estimate['mean']):.1f} % below "
            f"the W2^2 estimate {_number(estimate['mean'])}. The gap is {below:.0f} times its standard error, which "
            f"combines {_number(rival_metrics[f'cost_{direction}_se'])} for the cost over the map's "
            f"{results.n_points} points and {_number(_estimate_standard_error(estimate))} for the estimate. A map "
            "that carries the points onto the target costs W2^2(p, q) or more on average. The exact OT cost between "
            f"the training sets is {_number(reference['exact_ot'])}, "
            f"{_signed_percent(reference['exact_ot'] / estimate['mean'] - 1)} the estimate."
        )

    floor = reference[f"floor_{direction}"]["mean"]
    sweep = [run for run in results.sweep if run["pair"] == check.pair and run["method"] == "symot"]
    closer_and_cheaper = [
        run for run in sweep
        if run["metrics"][f"mmd_{direction}"] / floor <= check.rival_mmd_ratio
        and run["metrics"][f"cost_{direction}"] < rival_cost
    ]
    if closer_and_cheaper:
        best = min(closer_and_cheaper, key=lambda run: run["metrics"][f"mmd_{direction}"])
        sentences.append(
            f"In the beta sweep, SyMOT-Flow with beta {best['beta']:g} ends closer to the target than {name} "
            f"(MMD^2 {best['metrics'][f'mmd_{direction}'] / floor:.1f}x the floor against "
            f"{check.rival_mmd_ratio:.1f}x) and costs less ({_number(best['metrics'][f'cost_{direction}'])} "
            f"against {_number(rival_cost)}), with {_sweep_steps(results)} steps."
        )
    elif sweep:
        sentences.append(
            "No beta of the sweep gives a SyMOT-Flow map that is both closer to the target and cheaper, "
            f"with {_sweep_steps(results)} steps."
        )

    if not sentences:
        return ""
    return f"- {get_pair(check.pair).title}, {direction}, against {name}: " + " ".join(sentences)


def _signed_percent(relative: float) -> str:
    """Return "1.2 % above" or "1.2 % below" for a relative difference of +0.012 or -0.012."""
    return f"{100 * abs(relative):.1f} % {'above' if relative >= 0 else 'below'}"


def _estimate_standard_error(estimate: dict) -> float:
    """Return the standard error of a :func:`w2_estimate` mean: its standard deviation over sqrt(repeats)."""
    return estimate["std"] / math.sqrt(estimate["repeats"])


def _below_w2_estimate(metrics: dict, direction: str, estimate: dict | None) -> float:
    """Return how many standard errors a map's cost lies below the W2^2 estimate, or nan where unknown.

    The standard error of the difference combines the cost's over the map's points and the
    estimate's over its draw pairs. Negative where the cost lies above the estimate.
    """
    standard_error = metrics.get(f"cost_{direction}_se")
    if not estimate or standard_error is None:
        return math.nan
    combined = math.hypot(standard_error, _estimate_standard_error(estimate))
    gap = estimate["mean"] - metrics[f"cost_{direction}"]
    if combined > 0:
        return gap / combined
    if gap == 0:
        return 0.0
    return math.copysign(math.inf, gap)


def _sweep_steps(results: ToyRunResults) -> int:
    """Return the optimiser steps of the beta sweep's runs."""
    config = results.sweep_config or results.config
    return config.steps


def w2_estimate_mean(reference: dict) -> float:
    """Return a pair's W2^2(p, q) estimate from :func:`reference_values`, or nan where it was not computed."""
    return reference.get("w2_estimate", {}).get("mean", math.nan)


def image_ot_ratio(run: dict, direction: str) -> float:
    """Return a run's transport cost over the exact OT cost to its own images, or nan if not measured."""
    metrics = run["metrics"]
    image_ot = metrics.get(f"image_ot_{direction}", math.nan)
    return metrics[f"cost_{direction}"] / image_ot if image_ot > 0 else math.nan


def _efficiency_section(results: ToyRunResults) -> list[str]:
    """Return the table of each map's cost over the exact OT cost to the points it reaches."""
    runs = _runs_by_key(results)
    methods = [method for method in EFFICIENCY_METHODS if any(run["method"] == method for run in results.runs)]
    if not any("image_ot_forward" in run["metrics"] for run in results.runs):
        return []
    lines = [
        "", "## Cost against the points each map reaches", "",
        "Transport cost of each map over the exact OT cost between its inputs and its own images "
        "(`ot.emd2` of x and T(x) forward, of T^-1(z) and z backward), forward / backward. The ratio is "
        "never below 1. A ratio of 1 means that no other one-to-one assignment of the same points onto the "
        "same images costs less: the map is optimal for the distribution it produces, whether or not that "
        "is the target. The tables above say how close that distribution is to the target.",
        "",
        "| pair | " + " | ".join(METHOD_TITLES[method] for method in methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for pair in table_pairs(results):
        cells = _method_cells(runs, pair, methods, _image_ot_cell)
        lines.append(f"| {get_pair(pair).title} | " + " | ".join(cells) + " |")
    return lines


def _below_w2_section(results: ToyRunResults) -> list[str]:
    """Return the table of maps whose cost lies clearly below the W2^2 estimate, of every method."""
    if not any("w2_estimate" in reference for reference in results.references.values()):
        return []
    rows = []
    for run in results.runs:
        reference = results.references[run["pair"]]
        estimate = reference.get("w2_estimate")
        for direction in DIRECTIONS:
            below = _below_w2_estimate(run["metrics"], direction, estimate)
            if below > W2_SIGNIFICANCE:
                cost = run["metrics"][f"cost_{direction}"]
                mmd_ratio = run["metrics"][f"mmd_{direction}"] / reference[f"floor_{direction}"]["mean"]
                rows.append(
                    f"| {get_pair(run['pair']).title} | {METHOD_TITLES[run['method']]} | {direction} | {_number(cost)} | "
                    f"{_number(estimate['mean'])} | {100 * (1 - cost / estimate['mean']):.1f} % | {below:.1f} | "
                    f"{mmd_ratio:.1f}x |"
                )
    lines = [
        "", "## Maps cheaper than the W2^2 estimate", "",
        "A map that carries p onto q costs W2^2(p, q) or more on average. A cost clearly below the W2^2 estimate "
        "therefore points to images distributed differently from the target. The exception is training sets that "
        "are themselves cheaper than the estimate: compare its column with the exact OT cost in the tables above. "
        "An MMD^2 near the noise floor does not rule such differences out. The table lists every map whose cost lies more "
        f"than {W2_SIGNIFICANCE:g} standard errors below the estimate. The standard error combines the cost's over "
        "the map's points and the estimate's over its draw pairs.",
        "",
    ]
    if not rows:
        return lines + ["No map's cost lies that far below the estimate."]
    return lines + [
        "| pair | method | direction | cost | W2^2 estimate | below by | standard errors | MMD^2 / noise floor |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ]


def _image_ot_cell(run: dict) -> str:
    forward, backward = image_ot_ratio(run, "forward"), image_ot_ratio(run, "backward")
    return " / ".join(f"{value:.4f}" if math.isfinite(value) else "-" for value in (forward, backward))


def _method_cells(runs: dict[tuple[str, str], dict], pair: str, methods, cell) -> list[str]:
    """Return one table cell per method for ``pair``: ``cell(run)``, or "not run" where the method was left out."""
    return ["not run" if (pair, method) not in runs else cell(runs[(pair, method)]) for method in methods]


def _table_section(results: ToyRunResults, title: str, methods: tuple[str, ...], link: str) -> list[str]:
    runs = _runs_by_key(results)
    present = [method for method in methods if any(run["method"] == method for run in results.runs)]
    if not present:
        return []
    names = [METHOD_TITLES[method] for method in present]
    lines = ["", f"## {title}", "", "Ours. Transport cost as forward / backward, with the ratio to the exact OT cost in brackets:", ""]
    lines += ["| pair | exact OT | W2^2 estimate | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(present)]
    for pair in table_pairs(results):
        reference = results.references[pair]
        cells = [_number(w2_estimate_mean(reference))]
        for method in present:
            run = runs.get((pair, method))
            if run is None:
                cells.append("not run")
                continue
            forward, backward = run["metrics"]["cost_forward"], run["metrics"]["cost_backward"]
            exact = reference["exact_ot"]
            cells.append(f"{_number(forward)} / {_number(backward)} ({forward / exact:.3f} / {backward / exact:.3f})")
        lines.append(f"| {get_pair(pair).title} | {_number(reference['exact_ot'])} | " + " | ".join(cells) + " |")

    lines += ["", "Ours. Report MMD^2 as forward / backward, with the noise floor of the distribution mapped onto:", ""]
    lines += ["| pair | noise floor | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(present)]
    for pair in table_pairs(results):
        reference = results.references[pair]
        floors = f"{_number(reference['floor_forward']['mean'])} / {_number(reference['floor_backward']['mean'])}"
        cells = _method_cells(
            runs, pair, present,
            lambda run: f"{_number(run['metrics']['mmd_forward'])} / {_number(run['metrics']['mmd_backward'])}",
        )
        lines.append(f"| {get_pair(pair).title} | {floors} | " + " | ".join(cells) + " |")

    lines += ["", "The SyMOT-Flow paper's published values (other data and an unstated kernel, so compare orderings, not values):", ""]
    lines += ["| metric | pair | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(present)]
    for metric, label in (("cost", "OT cost"), ("mmd", "MMD")):
        for pair in table_pairs(results):
            cells = [
                f"{_number(PAPER_TABLES[metric][pair][method][0])} / {_number(PAPER_TABLES[metric][pair][method][1])}"
                for method in present
            ]
            lines.append(f"| {label} | {get_pair(pair).title} | " + " | ".join(cells) + " |")
    return lines


def _sweep_section(results: ToyRunResults, link: str) -> list[str]:
    pair = results.sweep[0]["pair"]
    reference = results.references[pair]
    with_paper = pair == PAPER_SWEEP_PAIR
    estimate = w2_estimate_mean(reference)
    lines = [
        "", f"## Beta sweep (Table 2 and Fig. 4), SyMOT-Flow on {get_pair(pair).title}", "",
        f"Exact OT cost {_number(reference['exact_ot'])}"
        + (f"; W2^2 estimate {_number(estimate)}" if math.isfinite(estimate) else "")
        + f"; noise floor {_number(reference['floor_forward']['mean'])} / {_number(reference['floor_backward']['mean'])}. "
        "Total = MMD^2 forward + MMD^2 backward + beta (cost forward + cost backward), with the report MMD^2. "
        + (
            "The last two columns are Table 2 of the SyMOT-Flow paper, which does not name the pair; "
            "its values match its 8 Gauss to 8 Gauss rows."
            if with_paper else
            "The SyMOT-Flow paper's Table 2 matches its 8 Gauss to 8 Gauss rows, so it is not shown for this pair."
        ),
        "",
        "| beta | cost forward / backward | MMD^2 forward / backward | total |" + (" paper OT | paper MMD |" if with_paper else ""),
        "|---|---|---|---|" + ("---|---|" if with_paper else ""),
    ]
    for run in results.sweep:
        metrics = run["metrics"]
        row = (
            f"| {run['beta']:g} | {_number(metrics['cost_forward'])} / {_number(metrics['cost_backward'])} | "
            f"{_number(metrics['mmd_forward'])} / {_number(metrics['mmd_backward'])} | {_number(_sweep_total(run))} |"
        )
        if with_paper:
            paper = PAPER_SWEEP.get(run["beta"])
            row += f" {_number(paper[0]) if paper else '-'} | {_number(paper[1]) if paper else '-'} |"
        lines.append(row)
    lines += ["", f"![beta sweep]({link}/beta_sweep.png)"]
    return lines


def _sweep_total(run: dict) -> float:
    metrics = run["metrics"]
    return (
        metrics["mmd_forward"] + metrics["mmd_backward"]
        + run["beta"] * (metrics["cost_forward"] + metrics["cost_backward"])
    )


def _plot_sweep(results: ToyRunResults, path: Path) -> Path:
    sweep = results.sweep
    return plot_beta_sweep(
        [run["beta"] for run in sweep],
        [(run["metrics"]["cost_forward"] + run["metrics"]["cost_backward"]) / 2 for run in sweep],
        [(run["metrics"]["mmd_forward"] + run["metrics"]["mmd_backward"]) / 2 for run in sweep],
        [_sweep_total(run) for run in sweep],
        path,
        f"SyMOT-Flow beta sweep, {get_pair(sweep[0]['pair']).title}",
    )


def _write_json(results: ToyRunResults, checks: list[Check], path: Path, command: str) -> Path:
    def strip(run: dict) -> dict:
        return {key: value for key, value in run.items() if key not in ("t_x", "t_inv_z")}

    document = {
        "command": command,
        "version": __version__,
        "n_points": results.n_points,
        "data_seed": results.data_seed,
        "config": results.config.to_dict(),
        "sweep_config": None if results.sweep_config is None else results.sweep_config.to_dict(),
        "report_kernel": {"bandwidth": REPORT_BANDWIDTH, "scales": list(REPORT_SCALES)},
        "references": results.references,
        "runs": [strip(run) for run in results.runs],
        "sweep": [strip(run) for run in results.sweep],
        "checks": [check.__dict__ for check in checks],
        "seconds": results.seconds,
    }
    path.write_text(json.dumps(document, indent=1, default=_json_default) + "\n", encoding="utf-8")
    return path


def _write_runs_csv(results: ToyRunResults, path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([
            "pair", "method", "beta", "cost_forward", "cost_backward", "exact_ot", "ratio_forward",
            "ratio_backward", "mmd_forward", "mmd_backward", "floor_forward", "floor_backward",
            "image_ot_forward", "image_ot_backward", "w2_estimate", "train_seconds",
        ])
        for run in results.runs:
            reference = results.references[run["pair"]]
            metrics = run["metrics"]
            writer.writerow([
                run["pair"], run["method"], run["beta"], metrics["cost_forward"], metrics["cost_backward"],
                reference["exact_ot"], metrics["cost_forward"] / reference["exact_ot"],
                metrics["cost_backward"] / reference["exact_ot"], metrics["mmd_forward"], metrics["mmd_backward"],
                reference["floor_forward"]["mean"], reference["floor_backward"]["mean"],
                metrics.get("image_ot_forward", math.nan), metrics.get("image_ot_backward", math.nan),
                w2_estimate_mean(reference), round(run["seconds"], 1),
            ])
    return path


def _write_sweep_csv(results: ToyRunResults, path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["pair", "beta", "cost_forward", "cost_backward", "mmd_forward", "mmd_backward", "total"])
        for run in results.sweep:
            metrics = run["metrics"]
            writer.writerow([
                run["pair"], run["beta"], metrics["cost_forward"], metrics["cost_backward"],
                metrics["mmd_forward"], metrics["mmd_backward"], _sweep_total(run),
            ])
    return path


def table_pairs(results: ToyRunResults) -> list[str]:
    """Return the pairs with at least one table run, in the order of ``results.references``.

    A pair trained only in the beta sweep has references but no table runs, so it gets no
    table rows and no acceptance checks.
    """
    return [pair for pair in results.references if any(run["pair"] == pair for run in results.runs)]


def _runs_by_key(results: ToyRunResults) -> dict[tuple[str, str], dict]:
    return {(run["pair"], run["method"]): run for run in results.runs}


def _betas_table(results: ToyRunResults) -> list[str]:
    """Return a markdown table of the beta of each method with a transport cost, per pair."""
    methods = [
        method for method in ("symot", "one-direction", "swot")
        if any(run["method"] == method for run in results.runs)
    ]
    if not methods:
        return ["No method with a transport cost was run."]
    runs = _runs_by_key(results)
    lines = [
        "| pair | " + " | ".join(METHOD_TITLES[method] for method in methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for pair in table_pairs(results):
        cells = [f"{runs[(pair, method)]['beta']:g}" if (pair, method) in runs else "not run" for method in methods]
        lines.append(f"| {get_pair(pair).title} | " + " | ".join(cells) + " |")
    return lines + [""]


def _scales(scales, unit: float | None = None) -> str:
    values = [scale * (unit or 1.0) for scale in scales]
    return ", ".join(f"{value:g}" for value in values)


def _number(value: float) -> str:
    """Format a value with 4 significant digits, in scientific notation when small or large."""
    if value is None or not math.isfinite(value):
        return "-"
    if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e5):
        return f"{value:.2e}"
    return f"{value:.4g}"


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"Cannot serialise {type(value).__name__} to JSON.")
