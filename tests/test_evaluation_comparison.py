"""The comparison harness on a tiny synthetic BraTS cohort: baseline CLI, scoring and reports."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import symot_med.evaluation.run as run_module
from symot_med.baselines.networks import NetworkConfig
from symot_med.baselines.training import BaselineTrainConfig, train_baseline_stage
from symot_med.cli import main
from symot_med.config import Profile, get_pair
from symot_med.data.slices import SliceCache
from symot_med.evaluation.comparison import IDENTITY, FeatureCache, Method
from symot_med.evaluation.run import EvaluationSettings, baseline_method, run_comparison
from symot_med.pipeline.stages import prepare

PROFILE = Profile("test", "brats", (1.0, 1.0, 1.0), (32, 32))
SHAPE = (30, 34, 20)


def _write_case(root: Path, index: int) -> None:
    """A BraTS-2021 case: an ellipsoidal head with a bright core in T1 and a dark core in T2."""
    rng = np.random.default_rng(index)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    radius = np.sqrt(sum(g**2 for g in grid))
    head, core = radius < 0.8, radius < 0.4 + 0.05 * index
    t1 = np.where(head, 300.0, 0.0) + np.where(core, 400.0, 0.0) + rng.normal(0, 10, SHAPE) * head
    t2 = np.where(head, 700.0, 0.0) - np.where(core, 500.0, 0.0) + rng.normal(0, 10, SHAPE) * head
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    case = root / f"BraTS2021_{index:05d}"
    case.mkdir(parents=True)
    for name, values in (("t1", t1), ("t2", t2), ("seg", core.astype(np.float32))):
        nib.save(nib.Nifti1Image(values.astype(np.float32), affine), str(case / f"{case.name}_{name}.nii.gz"))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("comparison")
    for index in range(4):
        _write_case(root / "data", index)
    return prepare(root / "data", get_pair("t1t2"), PROFILE, root / "cache", seed=0, test_fraction=0.5, progress=False)


@pytest.fixture(scope="module")
def histogram_dir(cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("histogram")
    return train_baseline_stage("histogram", cache_dir, out, BaselineTrainConfig(), NetworkConfig(), "cpu", progress=False)


def stand_in_features(images: np.ndarray) -> np.ndarray:
    """Eight intensity statistics per image, enough to tell contrasts apart."""
    flat = images.reshape(images.shape[0], -1).astype(np.float64)
    quantiles = np.quantile(flat, [0.1, 0.3, 0.5, 0.7, 0.9, 0.97], axis=1).T
    return np.concatenate([quantiles, flat.mean(axis=1, keepdims=True), flat.std(axis=1, keepdims=True)], axis=1)


def test_baseline_cli_trains_and_translates_into_input_space(cache_dir, tmp_path):
    model = tmp_path / "cyclegan"
    code = main(["baseline", "train", "--method", "cyclegan", "--cache", str(cache_dir), "--out", str(model),
                 "--epochs", "1", "--decay-epochs", "0", "--filters", "4", "--res-blocks", "1", "--disc-filters", "4",
                 "--device", "cpu", "--quiet"])
    assert code == 0
    card = json.loads((model / "baseline.json").read_text())
    assert card["method"] == "cyclegan"
    assert card["epochs"] == 1
    assert card["pair"] == "t1t2"

    cache = SliceCache.open(cache_dir)
    source = cache.source_file(cache.case_ids("test")[0], "t2")
    code = main(["baseline", "translate", str(source), "--model", str(model), "--direction", "inverse",
                 "--out", str(tmp_path / "out"), "--device", "cpu", "--quiet"])

    assert code == 0
    written = sorted((tmp_path / "out").iterdir())
    assert [p.name for p in written] == [f"{source.parent.name}_t2_to_t1.nii.gz"]
    reference, output = nib.load(str(source)), nib.load(str(written[0]))
    assert output.shape == reference.shape
    np.testing.assert_allclose(output.affine, reference.affine)


def test_histogram_baseline_beats_identity(cache_dir, histogram_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(
        run_module, "feature_cache", lambda settings, work_dir: FeatureCache(stand_in_features, work_dir / "features", "stand-in")
    )
    methods = [Method(IDENTITY, None), baseline_method(histogram_dir, "cpu")]

    payload = run_comparison(
        {"t1t2": (cache_dir, methods)}, tmp_path / "work", tmp_path / "report", EvaluationSettings(fid_images=16),
        command="symot-med evaluate (test)", progress=False,
    )

    assert set(payload["directions"]) == {"t1_to_t2", "t2_to_t1"}
    for direction in payload["directions"].values():
        scores = direction["methods"]
        assert len(scores["histogram"]["cases"]) == 2
        # The cores have opposite contrast in T1 and T2; matching the histogram cannot fix that
        # structure, but the intensity distribution of the head must come closer.
        assert scores["histogram"]["distribution"]["fid"] < scores[IDENTITY]["distribution"]["fid"]
        assert scores["histogram"]["inference_seconds_per_volume"] > 0
    for name in ("comparison.md", "comparison.csv", "comparison.json", "comparison.png"):
        assert (tmp_path / "report" / name).is_file()
    markdown = (tmp_path / "report" / "comparison.md").read_text()
    assert "| histogram matching |" in markdown
    assert "T1 -> T2 FID" in markdown
    rows = list(csv.DictReader((tmp_path / "report" / "comparison.csv").open()))
    assert {"ssim_3d", "ssim_2d", "psnr", "fid", "kid"} <= {row["metric"] for row in rows}


def test_evaluate_cli_without_weights_skips_fid(cache_dir, histogram_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(run_module, "resolve_inception_weights", lambda path: None)

    code = main(["evaluate", "--cache", str(cache_dir), "--model", str(histogram_dir), "--out", str(tmp_path / "report"),
                 "--device", "cpu", "--quiet"])

    assert code == 0
    assert "FID and KID skipped" in caplog.text
    result = json.loads((tmp_path / "report" / "comparison.json").read_text())
    scores = result["directions"]["t1_to_t2"]["methods"]["histogram"]
    assert "distribution" not in scores
    assert 0.0 < scores["summary"]["ssim_3d"]["mean"] <= 1.0
    assert "skipped" in (tmp_path / "report" / "comparison.md").read_text()


def test_evaluate_cli_rejects_cache_without_model(cache_dir, tmp_path, capsys):
    code = main(["evaluate", "--cache", str(cache_dir), "--out", str(tmp_path / "report"), "--quiet"])

    assert code == 1
    assert "--cache needs at least one --model" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda card: card.pop("method"), "missing field 'method'"),
        (lambda card: card.update(method="pix2pix"), "invalid field 'method': it is 'pix2pix'"),
        (lambda card: card.pop("checkpoint"), "missing field 'checkpoint'"),
        (lambda card: card.update(train_seconds="fast"), "invalid field 'train_seconds'"),
        (lambda card: card.update(epochs=1.5), "invalid field 'epochs': it must be a JSON integer"),
        (lambda card: card.update(pair="t1flair"), "invalid field 'pair': it is 't1flair'"),
        (lambda card: card["intensity"].pop("t2"), "'intensity': it has modalities ['t1']"),
        (lambda card: card["profile"].update(slice_size=[64, 64]), "was trained on slices of [32, 32], but profile.slice_size"),
    ],
)
def test_edited_baseline_card_rejected(cache_dir, histogram_dir, tmp_path, capsys, change, field):
    model = tmp_path / "histogram"
    shutil.copytree(histogram_dir, model)
    card_path = model / "baseline.json"
    card = json.loads(card_path.read_text())
    change(card)
    card_path.write_text(json.dumps(card))

    code = main(["evaluate", "--cache", str(cache_dir), "--model", str(model), "--out", str(tmp_path / "report"),
                 "--quiet"])

    assert code == 1
    message = capsys.readouterr().err
    assert str(card_path) in message
    assert field in message
    assert "symot-med baseline train" in message
    assert not (tmp_path / "report").exists()


def test_folder_of_other_method_rejected(cache_dir, histogram_dir, tmp_path):
    model = tmp_path / "histogram"
    shutil.copytree(histogram_dir, model)
    checkpoint = (model / "baseline.pt").read_bytes()

    with pytest.raises(ValueError, match="contains a 'histogram' baseline, not 'unit'"):
        train_baseline_stage("unit", cache_dir, model, BaselineTrainConfig(), NetworkConfig(), "cpu", progress=False)

    assert (model / "baseline.pt").read_bytes() == checkpoint


def test_folder_of_other_pair_rejected(cache_dir, histogram_dir, tmp_path):
    model = tmp_path / "histogram"
    shutil.copytree(histogram_dir, model)
    card_path = model / "baseline.json"
    card = json.loads(card_path.read_text())
    card["pair"] = "ctmr"
    card_path.write_text(json.dumps(card))

    with pytest.raises(ValueError, match="trained on a slice cache with another pair than"):
        train_baseline_stage("histogram", cache_dir, model, BaselineTrainConfig(), NetworkConfig(), "cpu", progress=False)


def test_folder_of_other_split_rejected(cache_dir, histogram_dir, tmp_path, capsys):
    source_root = SliceCache.open(cache_dir).manifest["source_root"]
    other = prepare(Path(source_root), get_pair("t1t2"), PROFILE, tmp_path / "other", seed=3, test_fraction=0.5, progress=False)
    split, other_split = SliceCache.open(cache_dir).manifest["split"], SliceCache.open(other).manifest["split"]
    assert split["test"] != other_split["test"]
    model = tmp_path / "histogram"
    shutil.copytree(histogram_dir, model)

    with pytest.raises(ValueError, match=r"another training data \(intensity scales\) than .* or train into another folder"):
        train_baseline_stage("histogram", other, model, BaselineTrainConfig(), NetworkConfig(), "cpu", progress=False)

    code = main(["evaluate", "--cache", str(other), "--model", str(model), "--out", str(tmp_path / "report"), "--quiet"])

    assert code == 1
    assert "was trained on another slice cache" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


def test_baseline_translate_accepts_card_file(cache_dir, histogram_dir, tmp_path):
    cache = SliceCache.open(cache_dir)
    source = cache.source_file(cache.case_ids("test")[0], "t1")

    code = main(["baseline", "translate", str(source), "--model", str(histogram_dir / "baseline.json"), "--direction", "forward",
                 "--out", str(tmp_path / "out"), "--device", "cpu", "--quiet"])

    assert code == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == [f"{source.parent.name}_t1_to_t2.nii.gz"]


def test_evaluate_rejects_work_dir_in_cache(cache_dir, histogram_dir, tmp_path, capsys):
    work = Path(cache_dir) / "work"

    code = main(["evaluate", "--cache", str(cache_dir), "--model", str(histogram_dir), "--out", str(tmp_path / "report"),
                 "--work-dir", str(work), "--quiet"])

    assert code == 1
    assert f"--work-dir {work} lies inside the slice cache" in capsys.readouterr().err
    assert not work.exists()
