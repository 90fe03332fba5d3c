"""Comparison tables: markdown like the SyMOT-Flow paper's Table 3, a long CSV and JSON.

Input is the ``results`` dict of ``symot_med.evaluation.run`` (JSON-ready): per direction name
(``t1_to_t2``) the pair, modalities and per-method scores, and per pair and method the budget.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from symot_med.io import atomic_path

DIRECTION_LABELS = {"t1": "T1", "t2": "T2", "ct": "CT", "mr": "MR"}
METHOD_LABELS = {
    "identity": "identity (input as output)",
    "histogram": "histogram matching",
    "cyclegan": "CycleGAN",
    "unit": "UNIT",
    "symot": "SyMOT-Flow (ours)",
}


def direction_label(result: dict) -> str:
    return f"{DIRECTION_LABELS.get(result['input'], result['input'])} -> {DIRECTION_LABELS.get(result['output'], result['output'])}"


def _number(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def _mean_std(summary: dict, name: str, digits: int) -> str:
    if name not in summary:
        return "n/a"
    entry = summary[name]
    text = f"{_number(entry['mean'], digits)} ± {_number(entry['std'], digits)}"
    if entry.get("n_infinite"):
        text += f" ({entry['n_infinite']} inf)"
    return text


def _budget_cells(budget: dict) -> list[str]:
    if not budget:
        return ["-", "-", "-"]
    minutes = budget.get("train_seconds", 0.0) / 60.0
    epochs = budget.get("epochs", "-")
    parameters = budget.get("parameters")
    if not parameters:
        size = "-"
    elif parameters >= 100_000:
        size = f"{parameters / 1e6:.2f} M"
    else:
        size = str(parameters)
    return [f"{epochs}", f"{minutes:.1f}", size]


def pair_table(directions: dict[str, dict], budgets: dict[str, dict], pair: str) -> str:
    """Render the markdown table of one pair, with one row per method.

    The columns are, per direction, SSIM (3D), PSNR, MAE (CT outputs only), FID and KID, then
    training epochs and minutes, inference seconds per volume and parameter count.
    """
    names = [name for name, result in directions.items() if result["pair"] == pair]
    if not names:
        return ""
    methods = list(directions[names[0]]["methods"])

    header = ["method"]
    for name in names:
        label = direction_label(directions[name])
        header += [f"{label} SSIM", f"{label} PSNR (dB)"]
        if directions[name]["output"] == "ct":
            header.append(f"{label} MAE (HU)")
        header += [f"{label} FID", f"{label} KID ×100"]
    header += ["training epochs", "training (min)", "inference (s/volume)", "parameters"]

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in methods:
        row = [METHOD_LABELS.get(method, method)]
        inference = []
        for name in names:
            entry = directions[name]["methods"][method]
            summary = entry["summary"]
            row += [_mean_std(summary, "ssim_3d", 3), _mean_std(summary, "psnr", 2)]
            if directions[name]["output"] == "ct":
                row.append(_mean_std(summary, "mae_hu", 1))
            distribution = entry.get("distribution")
            if distribution:
                row += [_number(distribution["fid"], 1), f"{distribution['kid'] * 100:.2f} ± {distribution['kid_std'] * 100:.2f}"]
            else:
                row += ["skipped", "skipped"]
            if "inference_seconds_per_volume" in entry:
                inference.append(entry["inference_seconds_per_volume"])
        epochs, minutes, parameters = _budget_cells(budgets.get(method, {}))
        row += [epochs, minutes, _number(sum(inference) / len(inference), 1) if inference else "-", parameters]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def slice_ssim_table(directions: dict[str, dict]) -> str:
    """Markdown table of the 2D per-slice SSIM (normalised volumes): rows methods, columns directions."""
    names = list(directions)
    methods = list(directions[names[0]]["methods"])
    header = ["method"] + [direction_label(directions[name]) for name in names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in methods:
        row = [METHOD_LABELS.get(method, method)]
        row += [_mean_std(directions[name]["methods"][method]["summary"], "ssim_2d", 3) for name in names]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def comparison_csv(directions: dict[str, dict], budgets: dict[str, dict[str, dict]]) -> str:
    """Long CSV: one row per direction, method and metric, with mean, standard deviation and n."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["direction", "method", "metric", "mean", "std", "n"])
    for name, result in directions.items():
        for method, entry in result["methods"].items():
            for metric, summary in entry["summary"].items():
                writer.writerow([name, method, metric, repr(summary["mean"]), repr(summary["std"]), summary["n"]])
            distribution = entry.get("distribution")
            if distribution:
                writer.writerow([name, method, "fid", repr(distribution["fid"]), "", distribution["n_generated"]])
                writer.writerow([name, method, "kid", repr(distribution["kid"]), repr(distribution["kid_std"]), distribution["n_generated"]])
            if "inference_seconds_per_volume" in entry:
                writer.writerow([name, method, "inference_seconds_per_volume", repr(entry["inference_seconds_per_volume"]), "", len(entry["cases"])])
            budget = budgets.get(result["pair"], {}).get(method, {})
            for key in ("train_seconds", "parameters"):
                if key in budget:
                    writer.writerow([name, method, key, repr(budget[key]), "", ""])
    return buffer.getvalue()


def write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_text(text)
    return path
