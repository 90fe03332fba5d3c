"""Tests of the toy training harness, the job runner, the acceptance checks and the command."""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from symot_med.cli import main
from symot_med.toy.datasets import draw
from symot_med.toy.evaluate import report_mmd2
from symot_med.toy.methods import METHODS
from symot_med.toy.report import check_criteria, render_page, write_outputs
from symot_med.toy import run as toy_run
from symot_med.toy.run import ToyRunResults, plan_jobs, run_toy
from symot_med.toy.train import ToyTrainConfig, apply_flow, learning_rate, train_toy_flow

TINY = ToyTrainConfig(steps=4, batch_size=16, warmup_steps=1, n_blocks=2, hidden=8, n_projections=4)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run on one torch thread: these tensors are tiny, and on a loaded machine two threads
    spend most of their time waiting for each other."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _points(n: int = 64):
    return draw("gauss-gauss", "source", n, seed=0), draw("gauss-gauss", "target", n, seed=0)


def test_learning_rate_schedule():
    config = ToyTrainConfig(steps=101, warmup_steps=10, lr=1e-3, final_lr=1e-5)

    assert learning_rate(0, config) == pytest.approx(1e-4)
    assert learning_rate(9, config) == pytest.approx(1e-3)
    assert learning_rate(10, config) == pytest.approx(1e-3)
    assert learning_rate(55, config) == pytest.approx((1e-3 + 1e-5) / 2)
    assert learning_rate(100, config) == pytest.approx(1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_train_runs_every_method(method):
    x, z = _points()

    result = train_toy_flow(x, z, method, 0.1, TINY, log_every=2)

    assert [entry["step"] for entry in result.history] == [0, 2, 3]
    assert all(math.isfinite(value) for entry in result.history for value in entry.values())
    assert not result.flow.training
    assert apply_flow(result.flow, x).shape == x.shape


def test_train_is_reproducible():
    x, z = _points()

    first = apply_flow(train_toy_flow(x, z, "swot", 0.1, TINY).flow, x)
    second = apply_flow(train_toy_flow(x, z, "swot", 0.1, TINY).flow, x)
    other_seed = apply_flow(train_toy_flow(x, z, "swot", 0.1, replace(TINY, seed=1)).flow, x)

    np.testing.assert_array_equal(first, second)
    assert not np.allclose(first, other_seed)


def test_apply_flow_inverse_round_trip():
    x, z = _points()
    flow = train_toy_flow(x, z, "symot", 0.1, TINY).flow

    restored = apply_flow(flow, apply_flow(flow, x), inverse=True)

    np.testing.assert_allclose(restored, x, atol=1e-4)


def test_training_moves_points_towards_target():
    x, z = _points(256)
    config = ToyTrainConfig(steps=100, batch_size=64, warmup_steps=10, lr=5e-3, n_blocks=4, hidden=32)

    flow = train_toy_flow(x, z, "symot", 1e-3, config).flow

    assert report_mmd2(apply_flow(flow, x), z) < 0.2 * report_mmd2(x, z)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"steps": 0}, "steps must be a positive int"),
        ({"batch_size": 1}, "batch_size must be an int >= 2"),
        ({"warmup_steps": 10, "steps": 10}, "warmup_steps"),
        ({"final_lr": 1.0, "lr": 1e-3}, "final_lr <= lr"),
        ({"mmd_bandwidth": "median"}, "mmd_bandwidth"),
    ],
    ids=["zero-steps", "batch-of-one", "warmup-too-long", "final-lr-above-lr", "unknown-bandwidth"],
)
def test_config_rejects_invalid_values(arguments, message):
    with pytest.raises(ValueError, match=message):
        ToyTrainConfig(**arguments)


def test_train_rejects_too_few_points():
    x, z = _points(8)

    with pytest.raises(ValueError, match="N >= batch_size"):
        train_toy_flow(x, z, "symot", 0.1, TINY)


def test_plan_jobs_betas_and_sweep():
    jobs = plan_jobs(
        ["moons-circles"], ["symot", "single-mmd", "swot"], TINY, sweep_pair="gauss-gauss",
        sweep_betas=(1e-3, 1.0), pair_betas={"moons-circles": 0.2}, swot_betas={"moons-circles": 0.05},
    )

    assert [(job.pair, job.method, job.beta, job.purpose, job.config.steps) for job in jobs] == [
        ("moons-circles", "symot", 0.2, "table", 4),
        ("moons-circles", "single-mmd", 0.0, "table", 4),
        ("moons-circles", "swot", 0.05, "table", 4),
        ("gauss-gauss", "symot", 1e-3, "sweep", 2),
        ("gauss-gauss", "symot", 1.0, "sweep", 2),
    ]


def test_plan_jobs_rejects_unknown_method():
    with pytest.raises(ValueError, match="Unknown method 'gan'"):
        plan_jobs(["moons-circles"], ["gan"], TINY)


def _fake_results(symot_cost: float, rival_cost: float, symot_mmd: float) -> ToyRunResults:
    """Return results for one pair with fixed metrics, exact OT 1.0 and noise floor 0.01."""
    results = ToyRunResults(config=TINY, n_points=64, data_seed=0)
    floor = {"mean": 0.01, "std": 0.0, "repeats": 1}
    results.references = {
        "8gauss-8gauss": {"exact_ot": 1.0, "floor_forward": floor, "floor_backward": floor}
    }
    for method, cost, mmd in (("symot", symot_cost, symot_mmd), ("single-mmd", rival_cost, 0.01), ("swot", rival_cost, 0.01)):
        metrics = {"cost_forward": cost, "cost_backward": cost, "mmd_forward": mmd, "mmd_backward": mmd}
        results.runs.append({"pair": "8gauss-8gauss", "method": method, "beta": 0.1, "metrics": metrics})
    return results


def test_check_criteria_all_pass():
    checks = check_criteria(_fake_results(symot_cost=1.05, rival_cost=1.5, symot_mmd=0.02))

    assert len(checks) == 2 * 4
    assert all(check.passed for check in checks)


def test_check_criteria_reports_misses():
    checks = check_criteria(_fake_results(symot_cost=1.2, rival_cost=1.1, symot_mmd=0.05))

    missed = {(check.criterion, check.direction) for check in checks if check.passed is False}
    assert ("cost below single MMD", "forward") in missed
    assert ("cost within 10 % of exact OT", "backward") in missed
    assert ("MMD within 3x noise floor", "forward") in missed


def test_page_names_command_and_misses(tmp_path):
    results = _fake_results(symot_cost=1.2, rival_cost=1.1, symot_mmd=0.05)
    checks = check_criteria(results)

    page = render_page(results, checks, "symot-med toy --steps 4", tmp_path / "toy", tmp_path / "toy.md")

    assert page.splitlines()[0].startswith("Generated by `symot-med toy --steps 4`")
    assert "**MISS**" in page
    assert "0 of 8 checks pass, 8 miss" in page


def test_page_explains_misses_against_maps_short_of_target(tmp_path):
    results = _fake_results(symot_cost=1.0, rival_cost=1.5, symot_mmd=0.02)
    swot = results.runs[2]["metrics"]
    swot.update(cost_forward=0.9, mmd_forward=0.08)  # cheaper, but 8x the floor of 0.01

    checks = check_criteria(results)
    page = render_page(results, checks, "symot-med toy", tmp_path / "toy", tmp_path / "toy.md")

    missed = [check for check in checks if check.passed is False]
    assert [(check.criterion, check.direction) for check in missed] == [("cost below SWOT-Flow", "forward")]
    assert missed[0].rival_mmd_ratio == pytest.approx(8.0)
    assert (
        "In 1 of the misses the rival's map has MMD^2 above 3x the noise floor and above SyMOT-Flow's "
        "(8.0x against 2.0x)"
    ) in page


def _results_with_cheaper_swot() -> ToyRunResults:
    """Return fake results where SWOT-Flow's forward map is cheaper than SyMOT-Flow's but 8x the floor."""
    results = _fake_results(symot_cost=1.0, rival_cost=1.5, symot_mmd=0.02)
    results.runs[2]["metrics"].update(cost_forward=0.9, mmd_forward=0.08)
    return results


def _sweep_run(beta: float, cost: float, mmd: float) -> dict:
    metrics = {"cost_forward": cost, "cost_backward": cost, "mmd_forward": mmd, "mmd_backward": mmd}
    return {"pair": "8gauss-8gauss", "method": "symot", "beta": beta, "metrics": metrics}


def test_page_notes_rival_below_w2_estimate(tmp_path):
    results = _results_with_cheaper_swot()
    results.references["8gauss-8gauss"]["w2_estimate"] = {"mean": 0.95, "std": 0.004, "repeats": 4, "points": 256}
    results.runs[2]["metrics"]["cost_forward_se"] = 0.01

    page = render_page(results, check_criteria(results), "symot-med toy", tmp_path / "toy", tmp_path / "toy.md")

    # 1 - 0.9 / 0.95 = 5.3 %. The estimate's standard error is 0.004 / sqrt(4) = 0.002, and the
    # gap's is hypot(0.01, 0.002) = 0.0102, so the gap of 0.05 is 4.9 standard errors.
    assert (
        "- 8 Gauss to 8 Gauss, forward, against SWOT-Flow: SWOT-Flow's cost 0.9 lies 5.3 % below the W2^2 "
        "estimate 0.95. The gap is 5 times its standard error, which combines 0.01 for the cost over the map's "
        "64 points and 2.00e-03 for the estimate. A map that carries the points onto the target costs W2^2(p, q) "
        "or more on average. The exact OT cost between the training sets is 1, 5.3 % above the estimate."
    ) in page
    assert "| 8 Gauss to 8 Gauss | SWOT-Flow | forward | 0.9 | 0.95 | 5.3 % | 4.9 | 8.0x |" in page
    assert "| 8 Gauss to 8 Gauss | 1 | 0.95 |" in page
    assert "over 4 pairs of independent draws of 256 points" in page


def test_page_skips_w2_note_within_noise(tmp_path):
    results = _results_with_cheaper_swot()
    results.references["8gauss-8gauss"]["w2_estimate"] = {"mean": 0.95, "std": 0.004, "repeats": 4, "points": 256}
    results.runs[2]["metrics"]["cost_forward_se"] = 0.03  # so the gap of 0.05 is 1.7 standard errors

    page = render_page(results, check_criteria(results), "symot-med toy", tmp_path / "toy", tmp_path / "toy.md")

    assert "below the W2^2 estimate 0.95" not in page
    assert "No map's cost lies that far below the estimate." in page


def test_page_notes_sweep_map_closer_and_cheaper(tmp_path):
    results = _results_with_cheaper_swot()
    results.sweep_config = replace(TINY, steps=2, batch_size=8)
    # Floor 0.01: beta 0.1 is at 9x the floor (further than SWOT-Flow's 8x), beta 0.05 at 6x and
    # cheaper, beta 0.01 at 3x but more expensive than SWOT-Flow's 0.9.
    results.sweep = [_sweep_run(0.01, 0.99, 0.03), _sweep_run(0.05, 0.85, 0.06), _sweep_run(0.1, 0.7, 0.09)]

    page = render_page(results, check_criteria(results), "symot-med toy", tmp_path / "toy", tmp_path / "toy.md")

    assert (
        "In the beta sweep, SyMOT-Flow with beta 0.05 ends closer to the target than SWOT-Flow "
        "(MMD^2 6.0x the floor against 8.0x) and costs less (0.85 against 0.9), with 2 steps."
    ) in page
    assert "below the W2^2 estimate" not in page  # no estimate in these references

    results.sweep = [_sweep_run(0.01, 0.99, 0.03), _sweep_run(0.1, 0.7, 0.09)]
    page = render_page(results, check_criteria(results), "symot-med toy", tmp_path / "toy", tmp_path / "toy.md")

    assert "No beta of the sweep gives a SyMOT-Flow map that is both closer to the target and cheaper, with 2 steps." in page
    assert "differ only in steps 2 and batch size 8." in page
    assert "| paper OT | paper MMD |" in page


def test_sweep_other_pair_no_paper_columns(tmp_path):
    results = _fake_results(symot_cost=1.0, rival_cost=1.5, symot_mmd=0.02)
    floor = {"mean": 0.01, "std": 0.0, "repeats": 1}
    results.references["gauss-gauss"] = {"exact_ot": 2.0, "floor_forward": floor, "floor_backward": floor}
    results.sweep = [dict(_sweep_run(0.01, 2.1, 0.03), pair="gauss-gauss")]

    page = render_page(results, check_criteria(results), "symot-med toy", tmp_path / "toy", tmp_path / "toy.md")

    assert "## Beta sweep (Table 2 and Fig. 4), SyMOT-Flow on Gauss to Gauss" in page
    assert "paper OT" not in page
    assert "| 0.01 | 2.1 / 2.1 | 0.03 / 0.03 | 0.102 |" in page


def test_page_leaves_out_runs_not_made(tmp_path):
    results = _fake_results(symot_cost=1.0, rival_cost=1.5, symot_mmd=0.02)
    results.runs = results.runs[:1]  # SyMOT-Flow only
    floor = {"mean": 0.01, "std": 0.0, "repeats": 1}
    results.references["gauss-gauss"] = {"exact_ot": 2.0, "floor_forward": floor, "floor_backward": floor}

    checks = check_criteria(results)
    page = render_page(results, checks, "symot-med toy", tmp_path / "toy", tmp_path / "toy.md")

    assert "## Table 4" not in page
    assert {check.pair for check in checks} == {"8gauss-8gauss"}
    not_run = [check.detail for check in checks if check.passed is None]
    assert set(not_run) == {"single MMD not run", "SWOT-Flow not run"}
    assert "nan" not in page
    assert "Gauss to Gauss |" not in page.replace("8 Gauss to 8 Gauss", "")


def test_page_lists_betas_per_method(tmp_path):
    results = _fake_results(symot_cost=1.0, rival_cost=1.1, symot_mmd=0.02)
    results.runs[2]["beta"] = 1e-3  # the SWOT-Flow run

    page = render_page(results, check_criteria(results), "symot-med toy", tmp_path / "toy", tmp_path / "toy.md")

    assert "| pair | SyMOT-Flow | SWOT-Flow |" in page
    assert "| 8 Gauss to 8 Gauss | 0.1 | 0.001 |" in page


def test_run_toy_trains_repeated_job_once():
    jobs = plan_jobs(
        ["gauss-gauss"], ["symot"], TINY, n_points=64, sweep_pair="gauss-gauss", sweep_betas=(0.5, 2.0),
        sweep_config=TINY, pair_betas={"gauss-gauss": 0.5},
    )

    results = run_toy(jobs, workers=1, floor_repeats=1, progress=False)

    assert [run["purpose"] for run in results.runs] == ["table"]
    assert [run["beta"] for run in results.sweep] == [0.5, 2.0]
    assert results.sweep[0]["purpose"] == "sweep"
    np.testing.assert_array_equal(results.sweep[0]["t_x"], results.runs[0]["t_x"])
    assert not np.array_equal(results.sweep[1]["t_x"], results.runs[0]["t_x"])


def test_run_toy_sweep_with_its_own_budget():
    jobs = plan_jobs(
        ["gauss-gauss"], ["symot"], TINY, n_points=64, sweep_pair="gauss-gauss", sweep_betas=(0.5,),
        pair_betas={"gauss-gauss": 0.5},
    )

    results = run_toy(jobs, workers=1, floor_repeats=1, progress=False)

    assert results.config.steps == 4
    assert results.sweep_config.steps == 2
    # History steps count from 0.
    assert [run["history"][-1]["step"] for run in results.runs + results.sweep] == [3, 1]
    assert not np.array_equal(results.sweep[0]["t_x"], results.runs[0]["t_x"])


def test_reference_w2_draws_capped(monkeypatch):
    monkeypatch.setattr(toy_run, "W2_DRAW_MAX_POINTS", 100)

    capped = toy_run.reference_values("gauss-gauss", 64, data_seed=0, floor_repeats=1)
    uncapped = toy_run.reference_values("gauss-gauss", 40, data_seed=0, floor_repeats=1)

    assert capped["w2_estimate"]["points"] == 100
    assert uncapped["w2_estimate"]["points"] == 80


def test_run_toy_rejects_two_table_budgets():
    jobs = plan_jobs(["gauss-gauss"], ["symot"], TINY, n_points=64)
    jobs += plan_jobs(["moons-circles"], ["symot"], replace(TINY, steps=5), n_points=64)

    with pytest.raises(ValueError, match="table jobs of one toy run must share one training config"):
        run_toy(jobs, workers=1, floor_repeats=1, progress=False)


@pytest.mark.slow
def test_run_toy_two_workers_matches_one():
    jobs = plan_jobs(["gauss-gauss"], ["symot", "one-direction"], TINY, n_points=64)

    inline = run_toy(jobs, workers=1, floor_repeats=1, progress=False)
    pooled = run_toy(jobs, workers=2, floor_repeats=1, progress=False)

    for first, second in zip(inline.runs, pooled.runs):
        assert first["method"] == second["method"]
        np.testing.assert_array_equal(first["t_x"], second["t_x"])
    assert inline.references == pooled.references


def test_toy_command_writes_page_and_files(tmp_path):
    out = tmp_path / "toy"
    arguments = [
        "toy", "--out", str(out), "--pairs", "gauss-gauss", "--methods", "symot", "single-mmd",
        "--steps", "3", "--n-points", "200", "--workers", "1", "--quiet",
    ]

    assert main(arguments) == 0

    page = (tmp_path / "toy.md").read_text()
    assert page.splitlines()[0].startswith(
        "Generated by `symot-med toy --out " + str(out) + " --pairs gauss-gauss --methods symot single-mmd "
        "--steps 3 --n-points 200 --workers 1`"
    )
    document = json.loads((out / "results.json").read_text())
    assert [run["method"] for run in document["runs"]] == ["symot", "single-mmd"]
    assert document["references"]["gauss-gauss"]["w2_estimate"]["points"] == 400
    assert "On Gauss to Gauss, where W2^2 has a closed form, the estimate is" in page
    assert "closed form 32.38." in page
    assert document["sweep"] == []
    for name in ("runs.csv", "gauss-gauss.png"):
        assert (out / name).stat().st_size > 0, name


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--sweep-pair", "gauss-gauss"], "--sweep-pair applies to the beta sweep only"),
        (["--pairs", "gauss-gauss", "gauss-gauss"], "--pairs repeats gauss-gauss; list each once."),
        (["--methods", "swot", "symot", "swot"], "--methods repeats swot; list each once."),
        (["--seed", "-1"], "--seed must be between 0 and 2^32 - 1, got -1."),
        (["--n-points", "20000"], "--n-points must be at most 10000, got 20000"),
    ],
)
def test_toy_command_rejects_bad_options(tmp_path, arguments, message):
    out = tmp_path / "toy"

    with pytest.raises(ValueError, match=re.escape(message)):
        main(["toy", "--out", str(out), "--steps", "2", *arguments, "--debug"])

    assert not out.exists()


def test_toy_command_rejects_empty_out(capsys):
    with pytest.raises(SystemExit):
        main(["toy", "--out", ""])

    assert "must not be empty" in capsys.readouterr().err


def test_toy_command_rejects_sweep_steps_alone(tmp_path):
    with pytest.raises(ValueError, match="--sweep-steps applies to the beta sweep only"):
        main(["toy", "--out", str(tmp_path / "toy"), "--sweep-steps", "10", "--debug"])


def test_toy_command_rejects_out_file(tmp_path):
    out = tmp_path / "toy"
    out.write_text("not a folder")

    with pytest.raises(ValueError, match=f"--out {out} is a file"):
        main(["toy", "--out", str(out), "--steps", "1", "--debug"])
    assert out.read_text() == "not a folder"


def test_toy_command_keeps_foreign_page(tmp_path):
    page = tmp_path / "notes.md"
    page.write_text("# My notes\n")

    with pytest.raises(ValueError, match=f"--page: {page} exists and was not generated by symot-med"):
        main(["toy", "--out", str(tmp_path / "toy"), "--page", str(page), "--steps", "1", "--debug"])
    assert page.read_text() == "# My notes\n"


def test_toy_command_rejects_page_under_file(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")

    with pytest.raises(ValueError, match=f"cannot create the folder {blocker} for --page"):
        main(["toy", "--out", str(tmp_path / "toy"), "--page", str(blocker / "p.md"), "--steps", "1", "--debug"])


def test_toy_command_page_warning(tmp_path, caplog):
    page = tmp_path / "toy.md"
    page.write_text("Generated by `symot-med toy --beta-sweep` (symot-med 0.1.0); rerun that command.\n")
    arguments = [
        "toy", "--out", str(tmp_path / "toy"), "--pairs", "gauss-gauss", "--methods", "symot",
        "--steps", "2", "--n-points", "200", "--workers", "1", "--quiet",
    ]

    with caplog.at_level(logging.WARNING, logger="symot_med"):
        assert main(arguments) == 0

    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any(f"{page} will be replaced: it was generated by another toy command (symot-med toy --beta-sweep)" in w for w in warnings)


def test_toy_command_keeps_other_commands_page(tmp_path):
    page = tmp_path / "study.md"
    text = "Generated by `symot-med latent-study --demo-dir demo_out`; rerun that command to update this page.\n"
    page.write_text(text)

    with pytest.raises(ValueError, match="generated by another symot-med command \\(symot-med latent-study"):
        main(["toy", "--out", str(tmp_path / "toy"), "--page", str(page), "--steps", "1", "--debug"])
    assert page.read_text() == text


def test_toy_command_keeps_foreign_data_files(tmp_path):
    out = tmp_path / "mydata"
    out.mkdir()
    (out / "results.json").write_text('{"accuracy": 0.9}\n')
    (out / "runs.csv").write_text("run,loss\n1,0.5\n")

    with pytest.raises(ValueError, match="contains results.json, runs.csv"):
        main(["toy", "--out", str(out), "--steps", "1", "--debug"])
    assert (out / "results.json").read_text() == '{"accuracy": 0.9}\n'
    assert (out / "runs.csv").read_text() == "run,loss\n1,0.5\n"


def test_toy_command_reruns_into_own_folder(tmp_path):
    arguments = [
        "toy", "--out", str(tmp_path / "toy"), "--pairs", "gauss-gauss", "--methods", "symot",
        "--steps", "2", "--n-points", "200", "--workers", "1", "--quiet",
    ]

    assert main(arguments) == 0
    assert main(arguments) == 0
    assert (tmp_path / "toy" / "runs.csv").is_file()


def test_page_image_ot_ratios(tmp_path):
    results = _fake_results(symot_cost=1.0, rival_cost=1.5, symot_mmd=0.02)
    for run, image_ot in zip(results.runs, (0.8, 1.5, 1.2)):
        run["metrics"].update(image_ot_forward=image_ot, image_ot_backward=image_ot)

    page = render_page(results, check_criteria(results), "symot-med toy", tmp_path / "toy", tmp_path / "toy.md")

    section = page.split("## Cost against the points each map reaches")[1].split("\n## ")[0]
    header, _, row = section.strip().split("\n")[-3:]
    assert header == "| pair | SWOT-Flow | single MMD | SyMOT-Flow |"
    # cost / image OT: SWOT-Flow 1.5 / 1.2, single MMD 1.5 / 1.5, SyMOT-Flow 1.0 / 0.8
    assert row == "| 8 Gauss to 8 Gauss | 1.2500 / 1.2500 | 1.0000 / 1.0000 | 1.2500 / 1.2500 |"


def test_write_outputs_with_sweep(tmp_path):
    results = _fake_results(symot_cost=1.05, rival_cost=1.5, symot_mmd=0.02)
    x = draw("8gauss-8gauss", "source", 64, seed=0)
    z = draw("8gauss-8gauss", "target", 64, seed=0)
    for run in results.runs:
        run.update(t_x=x + 1.0, t_inv_z=z - 1.0, history=[], seconds=0.0)
    metrics = {"cost_forward": 2.0, "cost_backward": 3.0, "mmd_forward": 0.1, "mmd_backward": 0.2}
    results.sweep = [
        {"pair": "8gauss-8gauss", "method": "symot", "beta": beta, "metrics": metrics, "t_x": x, "t_inv_z": z}
        for beta in (1e-3, 0.1)
    ]

    written = write_outputs(results, tmp_path / "toy", tmp_path / "toy.md", "symot-med toy --beta-sweep")

    sweep_rows = (tmp_path / "toy" / "beta_sweep.csv").read_text().splitlines()
    assert len(sweep_rows) == 3
    # total = 0.1 + 0.2 + beta (2 + 3)
    assert float(sweep_rows[2].split(",")[-1]) == pytest.approx(0.3 + 0.1 * 5.0)
    assert written["sweep_png"].stat().st_size > 0
    assert "## Beta sweep" in (tmp_path / "toy.md").read_text()
