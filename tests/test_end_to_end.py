"""A tiny demo cohort through prepare, a few training steps and translate, with real components."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from symot_med.cli import main
from symot_med.config import Profile, get_pair
from symot_med.data.demo_cohort import generate_demo_cohort
from symot_med.data.slices import SliceCache
from symot_med.inference.translate import card_autoencoders, read_model_card
from symot_med.models.flow import LatentFlow
from symot_med.models.vqvae2 import VQVAE2Config
from symot_med.pipeline.stages import prepare, train_ae_stage, train_flow_stage
from symot_med.training.autoencoder import AETrainConfig
from symot_med.training.flow import FlowTrainConfig

TINY_MODEL = VQVAE2Config(channels=16, res_channels=8, n_res_blocks=1, embed_dim=8, n_embed=32)
TINY_AE = AETrainConfig(epochs=1, batch_size=8)
TINY_FLOW = FlowTrainConfig(epochs=1, batch_size=8, n_blocks=2, hidden=8, n_res_blocks=1)
PROFILES = {
    "t1t2": Profile("test", "brats", (4.0, 4.0, 4.0), (40, 48)),
    "ctmr": Profile("test", "synthrad", (4.0, 4.0, 4.0), (48, 56)),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Cohort of 3 subjects per data set and a model folder per pair, trained for one epoch."""
    root = tmp_path_factory.mktemp("e2e")
    cohort = generate_demo_cohort(root / "cohort", seed=1, n_subjects=3, progress=False)

    models = {}
    for name in ("t1t2", "ctmr"):
        pair = get_pair(name)
        run = root / name
        cache = prepare(cohort[pair.dataset], pair, PROFILES[name], run / "cache", seed=0, test_fraction=0.34, progress=False)
        autoencoder = train_ae_stage(cache, run / "autoencoder", TINY_AE, TINY_MODEL, "cpu", progress=False)
        models[name] = train_flow_stage(cache, autoencoder, run / "flow", pair, TINY_FLOW, "cpu", progress=False)
    return {"root": root, "cohort": cohort, "models": models}


def _test_case_file(trained, pair_name: str, modality: str) -> Path:
    cache = SliceCache.open(trained["root"] / pair_name / "cache")
    return cache.source_file(cache.case_ids("test")[0], modality)


def test_slice_cache_split_by_subject(trained):
    cache = SliceCache.open(trained["root"] / "t1t2" / "cache")

    train, test = cache.case_ids("train"), cache.case_ids("test")

    assert len(train) == 2
    assert len(test) == 1
    assert not set(train) & set(test)
    slices = cache.slices("t1", "train")
    assert slices.shape[1:] == (1, 40, 48)
    assert slices.min() >= 0.0
    assert slices.max() <= 1.0


@pytest.mark.parametrize(
    "pair_name, modality, direction, output_modality",
    [("t1t2", "t1", "forward", "t2"), ("t1t2", "t2", "inverse", "t1"), ("ctmr", "mr", "inverse", "ct"), ("ctmr", "ct", "forward", "mr")],
)
def test_translate_keeps_input_space(trained, tmp_path, pair_name, modality, direction, output_modality):
    source = _test_case_file(trained, pair_name, modality)
    before = source.read_bytes()

    code = main(["translate", str(source), "--model", str(trained["models"][pair_name]), "--direction", direction,
                 "--out", str(tmp_path / "out"), "--device", "cpu", "--quiet"])

    assert code == 0
    written = sorted((tmp_path / "out").iterdir())
    assert [p.name for p in written] == [f"{source.parent.name}_{modality}_to_{output_modality}.nii.gz"]
    reference, output = nib.load(str(source)), nib.load(str(written[0]))
    assert output.shape == reference.shape
    np.testing.assert_allclose(output.affine, reference.affine, atol=1e-6)
    assert nib.aff2axcodes(output.affine) == nib.aff2axcodes(reference.affine)
    assert source.read_bytes() == before

    itk = sitk.ReadImage(str(written[0]))
    np.testing.assert_allclose(itk.GetSpacing(), sitk.ReadImage(str(source)).GetSpacing())
    np.testing.assert_allclose(itk.GetOrigin(), sitk.ReadImage(str(source)).GetOrigin(), atol=1e-4)
    assert float(output.header["cal_max"]) == 0.0
    assert output.header["descrip"].tobytes().decode().startswith(f"symot-med 0.1.0 {modality} to {output_modality}")


def test_ct_output_is_int16_hu(trained, tmp_path):
    source = _test_case_file(trained, "ctmr", "mr")

    main(["translate", str(source), "--model", str(trained["models"]["ctmr"]), "--direction", "inverse",
          "--out", str(tmp_path), "--device", "cpu", "--quiet"])

    output = nib.load(str(next(tmp_path.glob("*.nii.gz"))))
    values = np.asarray(output.dataobj)
    assert values.dtype == np.int16
    assert values.min() >= -1024
    assert values.max() <= 3000


def test_translate_rejects_mask_of_other_grid(trained, tmp_path, capsys):
    image = _test_case_file(trained, "t1t2", "t1")
    mask = tmp_path / "small_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((10, 10, 10), dtype=np.uint8), np.eye(4)), str(mask))

    code = main(["translate", str(image), "--model", str(trained["models"]["t1t2"]), "--direction", "forward",
                 "--mask", str(mask), "--out", str(tmp_path / "out"), "--device", "cpu", "--quiet"])

    assert code == 1
    assert "small_mask.nii.gz (shape (10, 10, 10)) is not on the voxel grid" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_translate_case_folder_keeps_case_names(trained, tmp_path):
    data = trained["cohort"]["synthrad"]

    code = main(["translate", str(data), "--model", str(trained["models"]["ctmr"]), "--direction", "forward",
                 "--out", str(tmp_path), "--device", "cpu", "--quiet"])

    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1BA001_ct_to_mr.nii.gz", "1BA002_ct_to_mr.nii.gz", "1BA003_ct_to_mr.nii.gz"]


def test_flow_round_trip_on_real_latents(trained):
    from symot_med.training.autoencoder import load_autoencoder
    from symot_med.training.flow import load_flow

    run = trained["root"] / "t1t2"
    autoencoder = load_autoencoder(run / "autoencoder" / "autoencoder.pt").eval()
    flow = load_flow(run / "flow" / "flow.pt").eval()
    slices = torch.from_numpy(SliceCache.open(run / "cache").slices("t1", "test")[:8])

    with torch.no_grad():
        latents = autoencoder.latents(slices, quantized=True)
        restored = flow(flow(latents), rev=True)

    for level, back in zip(latents, restored):
        assert torch.max(torch.abs(level - back)).item() < 1e-4


def test_demo_round_trip_both_precisions(trained):
    from symot_med.inference.translate import Translator
    from symot_med.pipeline.demo import flow_round_trip

    cache = SliceCache.open(trained["root"] / "ctmr" / "cache")
    translator = Translator(trained["models"]["ctmr"], device="cpu")

    errors = flow_round_trip(translator, cache)

    # Reference: the flow's weights in float32, on the latents of the same slices.
    flow = LatentFlow.from_config(translator.flow.config())
    flow.load_state_dict(translator.flow.state_dict())
    with torch.no_grad():
        z = translator.autoencoder.latents(torch.from_numpy(cache.slices("mr", "train")[:64]), quantized=True)
        z_back = flow(flow(z, rev=True))
    expected = max(float((a - b).abs().max()) for a, b in zip(z_back, z))
    assert errors["round_trip_float32"]["inverse_then_forward"] == pytest.approx(expected)
    assert max(errors["round_trip"].values()) < 1e-10


def test_demo_training_time_from_histories(trained):
    from symot_med.pipeline.demo import training_seconds

    run = trained["root"] / "ctmr"
    autoencoder = run / "autoencoder" / "autoencoder.pt"

    seconds = training_seconds({"ct": autoencoder, "mr": autoencoder}, trained["models"]["ctmr"])

    # The shared autoencoder counts once.
    autoencoder_history = json.loads((run / "autoencoder" / "history.json").read_text())
    flow_history = json.loads((trained["models"]["ctmr"] / "history.json").read_text())
    assert seconds["autoencoder"] == pytest.approx(sum(epoch["seconds"] for epoch in autoencoder_history), abs=0.1)
    assert seconds["flow"] == pytest.approx(sum(epoch["seconds"] for epoch in flow_history), abs=0.1)


def test_demo_reconstruction_figure(trained, tmp_path):
    from matplotlib.image import imread

    from symot_med.evaluation.figures import reconstruction_figure
    from symot_med.pipeline.demo import middle_reconstructions
    from symot_med.training.autoencoder import load_autoencoder

    run = trained["root"] / "ctmr"
    path = run / "autoencoder" / "autoencoder.pt"
    cache = SliceCache.open(run / "cache")

    rows = middle_reconstructions({"ct": path, "mr": path}, cache, "cpu")
    written = reconstruction_figure(rows, tmp_path / "reconstructions.png")

    # Reference: the autoencoder's own forward pass in eval mode, on the same middle slice.
    autoencoder = load_autoencoder(path).eval()
    slices = cache.slices("mr", "test")
    with torch.no_grad():
        expected = autoencoder(torch.from_numpy(slices[len(slices) // 2 :][:1]))[0][0, 0].numpy()
    assert [row[0].split(",")[0] for row in rows] == ["ct", "mr"]
    np.testing.assert_array_equal(rows[1][1], slices[len(slices) // 2, 0])
    np.testing.assert_allclose(rows[1][2], expected, atol=1e-6)
    assert imread(written).shape[0] == 2 * 225


# Bad input: one line on stderr naming the file and the expected layout, non-zero exit code, no
# traceback, nothing written next to the input.


def _run_cli(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def _assert_one_line_error(code, err, *fragments):
    assert code != 0
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


def test_missing_modality_file(trained, tmp_path, capsys):
    data = tmp_path / "brats"
    shutil.copytree(trained["cohort"]["brats"] / "BraTS2021_00000", data / "BraTS2021_00000")
    (data / "BraTS2021_00000" / "BraTS2021_00000_t2.nii.gz").unlink()
    before = sorted(p.name for p in (data / "BraTS2021_00000").iterdir())

    code, err = _run_cli(capsys, ["prepare", "--data", str(data), "--pair", "t1t2", "--out", str(tmp_path / "cache"), "--quiet"])

    _assert_one_line_error(code, err, "BraTS2021_00000_t2.nii.gz", "brats2021 layout")
    assert sorted(p.name for p in (data / "BraTS2021_00000").iterdir()) == before
    assert not (tmp_path / "cache").exists()


def test_file_that_is_not_nifti(trained, tmp_path, capsys):
    bad = tmp_path / "inputs" / "scan.nii.gz"
    bad.parent.mkdir()
    bad.write_text("this is not an image")

    code, err = _run_cli(capsys, ["translate", str(bad), "--model", str(trained["models"]["t1t2"]),
                                  "--direction", "forward", "--out", str(tmp_path / "out"), "--quiet"])

    _assert_one_line_error(code, err, "scan.nii.gz", "pass a 3D NIfTI volume (.nii or .nii.gz)")
    assert "BraTS 2020" not in err
    assert sorted(p.name for p in bad.parent.iterdir()) == ["scan.nii.gz"]
    assert not (tmp_path / "out").exists()


def test_loose_files_folder_hint(trained, tmp_path, capsys):
    folder = tmp_path / "loose"
    _copy_with_new_name(_test_case_file(trained, "t1t2", "t1"), folder / "scan_t1.nii.gz")

    code, err = _run_cli(capsys, ["translate", str(folder), "--model", str(trained["models"]["t1t2"]),
                                  "--direction", "forward", "--out", str(tmp_path / "out"), "--quiet"])

    _assert_one_line_error(code, err, f"no case folders found in {folder}", "`translate` takes files directly")


def test_folder_in_no_known_layout(trained, tmp_path, capsys):
    folder = tmp_path / "patients"
    (folder / "patient_a").mkdir(parents=True)

    code, err = _run_cli(capsys, ["translate", str(folder), "--model", str(trained["models"]["t1t2"]),
                                  "--direction", "forward", "--out", str(tmp_path / "out"), "--quiet"])

    _assert_one_line_error(code, err, str(folder), "expected one of: BraTS 2020")
    assert sorted(p.name for p in folder.iterdir()) == ["patient_a"]


def test_output_inside_input_folder_rejected(trained, tmp_path, capsys):
    case = tmp_path / "BraTS2021_00000"
    shutil.copytree(trained["cohort"]["brats"] / "BraTS2021_00000", case)
    before = sorted(p.name for p in case.iterdir())

    code, err = _run_cli(capsys, ["translate", str(case / "BraTS2021_00000_t1.nii.gz"), "--model",
                                  str(trained["models"]["t1t2"]), "--direction", "forward", "--out", str(case), "--quiet"])

    _assert_one_line_error(code, err, "is the input folder")
    assert sorted(p.name for p in case.iterdir()) == before


@pytest.mark.parametrize("inside", ["translated", "."])
def test_output_inside_dataset_folder_rejected(trained, tmp_path, capsys, inside):
    data = tmp_path / "brats"
    shutil.copytree(trained["cohort"]["brats"], data)
    before = sorted(p.relative_to(data) for p in data.rglob("*"))

    code, err = _run_cli(capsys, ["translate", str(data), "--model", str(trained["models"]["t1t2"]),
                                  "--direction", "forward", "--out", str(data / inside), "--quiet"])

    _assert_one_line_error(code, err, f"input folder {data.resolve()}", f"choose an output folder outside {data.resolve()}")
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before


def test_truncated_volume_rejected_before_writing(trained, tmp_path, capsys):
    data = tmp_path / "brats"
    shutil.copytree(trained["cohort"]["brats"], data)
    bad = data / "BraTS2021_00002" / "BraTS2021_00002_t1.nii.gz"
    bad.write_bytes(bad.read_bytes()[:-500])

    code, err = _run_cli(capsys, ["translate", str(data), "--model", str(trained["models"]["t1t2"]),
                                  "--direction", "forward", "--out", str(tmp_path / "out"), "--quiet"])

    _assert_one_line_error(code, err, f"{bad} is truncated", "replace or remove the file")
    assert not (tmp_path / "out").exists()


def test_debug_shows_traceback(tmp_path):
    with pytest.raises(Exception, match="no case folders found"):
        main(["prepare", "--data", str(tmp_path), "--pair", "t1t2", "--out", str(tmp_path / "c"), "--debug"])


def test_prepare_reruns_in_same_folder(trained):
    """A second prepare with the same settings resumes instead of rejecting its own cache."""
    pair = get_pair("t1t2")
    cache_dir = trained["root"] / "t1t2" / "cache"
    before = SliceCache.open(cache_dir).case_ids("train")

    prepare(trained["cohort"]["brats"], pair, PROFILES["t1t2"], cache_dir, seed=0, test_fraction=0.34, progress=False)

    assert SliceCache.open(cache_dir).case_ids("train") == before


def test_prepare_rejects_other_settings(trained):
    pair = get_pair("t1t2")
    cache_dir = trained["root"] / "t1t2" / "cache"

    with pytest.raises(ValueError, match="already contains a slice cache made with other settings"):
        prepare(trained["cohort"]["brats"], pair, PROFILES["t1t2"], cache_dir, seed=5, test_fraction=0.34, progress=False)


def test_latent_study_scores_every_variant(trained, tmp_path):
    from symot_med.experiments.latent_study import VARIANTS, run_latent_study, study_markdown

    cache = trained["root"] / "t1t2" / "cache"
    results = run_latent_study(cache, tmp_path / "study", TINY_AE, TINY_MODEL, TINY_FLOW, device="cpu", progress=False)

    assert set(results["translation"]) == {"t1_to_t2", "t2_to_t1"}
    for scores in results["translation"].values():
        assert set(scores) == {"identity", "histogram matching", *VARIANTS}
        for method, values in scores.items():
            assert -1.0 <= values["ssim"] <= 1.0, method
    assert set(results["pairing_ratio"]) == {"shared", "separate"}
    assert (tmp_path / "study" / "ae_t1" / "autoencoder.pt").is_file()
    assert (tmp_path / "study" / "flow_separate_quantized_per_level" / "flow.pt").is_file()
    assert (tmp_path / "study" / "flow_shared_quantized_joint" / "flow.pt").is_file()
    page = study_markdown([results], "symot-med latent-study --cache X --work Y")
    assert page.startswith("Generated by `symot-med latent-study --cache X --work Y`")
    assert "separate, quantized" in page

    # A rerun with another budget must not score the first run's models under the new budget.
    other = FlowTrainConfig(**{**TINY_FLOW.__dict__, "epochs": TINY_FLOW.epochs + 1})
    with pytest.raises(ValueError, match=r"flow.pt was trained with train_config.epochs 1, where this study needs 2; .* another --work folder"):
        run_latent_study(cache, tmp_path / "study", TINY_AE, TINY_MODEL, other, device="cpu", progress=False)


def test_pairing_ratio_by_hand():
    from symot_med.experiments.latent_study import pairing_ratio

    x = (torch.tensor([[0.0], [1.0], [3.0]]),)
    z = (torch.tensor([[0.5], [1.0], [2.0]]),)
    ratio = pairing_ratio(x, z, seed=0)

    shift = int(np.random.default_rng(0).integers(1, 3))
    paired = np.mean([0.25, 0.0, 1.0])
    unpaired = np.mean([(x[0][i, 0].item() - z[0][(i + shift) % 3, 0].item()) ** 2 for i in range(3)])
    assert ratio == pytest.approx(paired / unpaired)


def test_score_identical_slices():
    from symot_med.experiments.latent_study import score_slices

    truth = np.zeros((3, 1, 16, 16), dtype=np.float32)
    truth[:, :, 4:12, 4:12] = np.random.default_rng(0).uniform(0.2, 1.0, (3, 1, 8, 8))
    scores = score_slices(truth, truth.copy())
    assert scores["ssim"] == pytest.approx(1.0)
    assert scores["psnr"] == float("inf")


def test_latent_study_reuses_demo_models(trained, tmp_path):
    from symot_med.experiments.latent_study import run_latent_study

    pair_dir = trained["root"] / "t1t2"
    results = run_latent_study(
        pair_dir / "cache", tmp_path / "study", TINY_AE, TINY_MODEL, TINY_FLOW, device="cpu", progress=False, reuse_dir=pair_dir
    )
    assert not (tmp_path / "study" / "ae_shared").exists()
    assert not (tmp_path / "study" / "flow_shared_quantized_per_level").exists()
    assert "ae_shared" in results["seconds"]

    other = FlowTrainConfig(**{**TINY_FLOW.__dict__, "hidden": 4})
    with pytest.raises(ValueError, match=r"flow.pt was trained with train_config.hidden 8, where this study needs 4"):
        run_latent_study(pair_dir / "cache", tmp_path / "other", TINY_AE, TINY_MODEL, other, device="cpu", progress=False, reuse_dir=pair_dir)


def _copy_with_new_name(source: Path, target: Path) -> Path:
    """Save the voxels and affine of ``source`` under ``target`` (a new NIfTI, not a file copy)."""
    image = nib.load(str(source))
    return _save_like(source, target, np.asarray(image.dataobj, dtype=np.float32))


def _save_like(source: Path, target: Path, values: np.ndarray) -> Path:
    """Save ``values`` under ``target`` with the affine of ``source``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(values, nib.load(str(source)).affine), str(target))
    return target


def _translate_argv(model: Path, inputs: list[Path], out: Path, direction: str = "forward", *options: str) -> list[str]:
    """Return the argument list of ``symot-med translate`` on the CPU, without progress bars."""
    return ["translate", *map(str, inputs), "--model", str(model), "--direction", direction,
            "--out", str(out), "--device", "cpu", "--quiet", *options]


def _warnings(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]


def test_nan_voxels_rejected_before_writing(trained, tmp_path, capsys):
    source = _test_case_file(trained, "t1t2", "t1")
    values = np.asarray(nib.load(str(source)).dataobj, dtype=np.float32)
    values[10, 10, 10] = np.nan
    values[11, 10, 10] = np.inf
    values[12, 10, 10] = np.nan
    bad = _save_like(source, tmp_path / "inputs" / "scan_t1.nii.gz", values)

    code, err = _run_cli(capsys, _translate_argv(trained["models"]["t1t2"], [bad], tmp_path / "out"))

    _assert_one_line_error(code, err, f"{bad} has 3 of {values.size} voxels that are NaN or infinite")
    assert sorted(p.name for p in bad.parent.iterdir()) == ["scan_t1.nii.gz"]
    assert not (tmp_path / "out").exists()


def test_same_input_twice_rejected(trained, tmp_path, capsys):
    image = _copy_with_new_name(_test_case_file(trained, "t1t2", "t1"), tmp_path / "inputs" / "scan_t1.nii.gz")
    again = tmp_path / "inputs" / "." / "scan_t1.nii.gz"

    code, err = _run_cli(capsys, _translate_argv(trained["models"]["t1t2"], [image, again], tmp_path / "out"))

    _assert_one_line_error(code, err, f"input {again} is given twice (also as {image})")
    assert not (tmp_path / "out").exists()


def test_inputs_with_one_output_name_rejected(trained, tmp_path, capsys):
    source = _test_case_file(trained, "t1t2", "t1")
    first = _copy_with_new_name(source, tmp_path / "site_a" / "scan_t1.nii.gz")
    second = _copy_with_new_name(source, tmp_path / "site_b" / "scan_t1.nii.gz")

    code, err = _run_cli(capsys, _translate_argv(trained["models"]["t1t2"], [first, second], tmp_path / "out"))

    _assert_one_line_error(code, err, f"inputs {first} and {second} would both be written to scan_t1_to_t2.nii.gz")
    assert not (tmp_path / "out").exists()


def test_other_modality_name_warns(trained, tmp_path, caplog):
    image = _copy_with_new_name(_test_case_file(trained, "t1t2", "t2"), tmp_path / "inputs" / "scan_t2.nii.gz")

    with caplog.at_level(logging.WARNING, logger="symot_med"):
        code = main(_translate_argv(trained["models"]["t1t2"], [image], tmp_path / "out"))

    assert code == 0
    expected = f"{image} is named like a t2 image, but --direction forward translates t1 into t2"
    assert any(expected in message for message in _warnings(caplog)), _warnings(caplog)


def test_missing_mask_error(trained, tmp_path, capsys):
    image = _test_case_file(trained, "t1t2", "t1")
    mask = tmp_path / "no_such_mask.nii.gz"

    argv = _translate_argv(trained["models"]["t1t2"], [image], tmp_path / "out", "forward", "--mask", str(mask))
    code, err = _run_cli(capsys, argv)

    _assert_one_line_error(code, err, f"{mask} not found", "pass a NIfTI mask on the input image's voxel grid")
    assert "BraTS 2020" not in err


def test_mask_with_folder_rejected(trained, tmp_path, capsys):
    data = trained["cohort"]["synthrad"]
    mask = next(data.rglob("mask.nii.gz"))

    argv = _translate_argv(trained["models"]["ctmr"], [data], tmp_path / "out", "forward", "--mask", str(mask))
    code, err = _run_cli(capsys, argv)

    _assert_one_line_error(code, err, "--mask applies to a single input file")
    assert not (tmp_path / "out").exists()


def test_case_file_uses_case_mask(trained, tmp_path):
    # The folder run uses the case's mask.nii.gz, so the file run must give the same voxels.
    case = sorted((trained["cohort"]["synthrad"]).rglob("1BA003"))[0]
    model = trained["models"]["ctmr"]

    assert main(_translate_argv(model, [case / "mr.nii.gz"], tmp_path / "file", "inverse")) == 0
    assert main(_translate_argv(model, [case], tmp_path / "folder", "inverse")) == 0

    from_file = np.asarray(nib.load(str(tmp_path / "file" / "1BA003_mr_to_ct.nii.gz")).dataobj)
    from_folder = np.asarray(nib.load(str(tmp_path / "folder" / "1BA003_mr_to_ct.nii.gz")).dataobj)
    np.testing.assert_array_equal(from_file, from_folder)


def test_late_bad_file_stops_batch(trained, tmp_path, capsys):
    good = _test_case_file(trained, "t1t2", "t1")
    values = np.asarray(nib.load(str(good)).dataobj, dtype=np.float32)
    values[0, 0, 0] = np.nan
    bad = _save_like(good, tmp_path / "inputs" / "late_t1.nii.gz", values)

    code, err = _run_cli(capsys, _translate_argv(trained["models"]["t1t2"], [good, bad], tmp_path / "out"))

    _assert_one_line_error(code, err, f"{bad} has 1 of")
    assert not (tmp_path / "out").exists()


def test_output_folder_that_is_a_file(trained, tmp_path, capsys):
    image = _test_case_file(trained, "t1t2", "t1")
    out = tmp_path / "taken"
    out.write_text("keep me")

    code, err = _run_cli(capsys, _translate_argv(trained["models"]["t1t2"], [image], out))

    _assert_one_line_error(code, err, f"output folder {out} is a file")
    assert out.read_text() == "keep me"


def test_moved_run_folder_loads(trained, tmp_path):
    moved = tmp_path / "moved_run"
    shutil.copytree(trained["root"] / "t1t2", moved)

    card = read_model_card(moved / "flow")

    for path in [card["flow"], *card_autoencoders(card).values()]:
        assert Path(path).is_relative_to(moved.resolve()), path
    image = _test_case_file(trained, "t1t2", "t1")
    assert main(_translate_argv(moved / "flow", [image], tmp_path / "out")) == 0


def test_card_slice_size_against_flow(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained["root"] / "t1t2", run, ignore=shutil.ignore_patterns("cache"))
    card_path = run / "flow" / "model.json"
    card = json.loads(card_path.read_text())
    card["profile"]["slice_size"] = [4000, 4800]
    card_path.write_text(json.dumps(card))

    code, err = _run_cli(capsys, _translate_argv(run / "flow", [_test_case_file(trained, "t1t2", "t1")], tmp_path / "out"))

    _assert_one_line_error(code, err, f"{card_path}: profile.slice_size [4000, 4800] gives latent maps", "was trained on")
    assert not (tmp_path / "out").exists()


def test_evaluate_rejects_other_pair_model(trained, tmp_path, capsys):
    code, err = _run_cli(capsys, ["evaluate", "--cache", str(trained["root"] / "t1t2" / "cache"), "--model",
                                  str(trained["models"]["ctmr"]), "--out", str(tmp_path / "eval"), "--quiet"])

    _assert_one_line_error(code, err, "translates the ctmr pair", "contains the t1t2 pair")
    assert not (tmp_path / "eval").exists()


def test_flow_rejects_wrong_modality_autoencoder(trained, tmp_path):
    cache = trained["root"] / "t1t2" / "cache"
    t2_only = train_ae_stage(cache, tmp_path / "ae_t2", TINY_AE, TINY_MODEL, "cpu", progress=False, modalities=["t2"])

    with pytest.raises(ValueError, match="trained on t2 slices, but it is given for t1"):
        train_flow_stage(
            cache, {"t1": t2_only, "t2": t2_only}, tmp_path / "flow", get_pair("t1t2"), TINY_FLOW, "cpu", progress=False
        )


def test_flow_rejects_wrong_slice_size(trained, tmp_path):
    cache = trained["root"] / "t1t2" / "cache"
    ctmr_autoencoder = trained["root"] / "ctmr" / "autoencoder" / "autoencoder.pt"

    with pytest.raises(ValueError, match="trained on 48x56 slices, but the slice cache .* has 40x48 slices"):
        train_flow_stage(
            cache, ctmr_autoencoder, tmp_path / "flow", get_pair("t1t2"), TINY_FLOW, "cpu", progress=False
        )


def test_late_corrupt_file_stops_batch(trained, tmp_path, capsys):
    good = _test_case_file(trained, "t1t2", "t1")
    bad = _copy_with_new_name(good, tmp_path / "inputs" / "late_t1.nii.gz")
    data = bytearray(bad.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)  # same length, so only reading the data finds it
    bad.write_bytes(bytes(data))

    code, err = _run_cli(capsys, _translate_argv(trained["models"]["t1t2"], [good, bad], tmp_path / "out"))

    _assert_one_line_error(code, err, f"cannot read {bad}", "replace or remove the file")
    assert not (tmp_path / "out").exists()


def test_late_empty_volume_stops_batch(trained, tmp_path, capsys):
    good = _test_case_file(trained, "t1t2", "t1")
    zeros = np.zeros(nib.load(str(good)).shape, dtype=np.float32)
    empty = _save_like(good, tmp_path / "inputs" / "zeros_t1.nii.gz", zeros)

    code, err = _run_cli(capsys, _translate_argv(trained["models"]["t1t2"], [good, empty], tmp_path / "out"))

    _assert_one_line_error(code, err, f"{empty} has no foreground under the automatic t1 threshold")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_load_failure_leaves_no_folder(trained, tmp_path, capsys):
    image = _test_case_file(trained, "t1t2", "t1")

    argv = _translate_argv(trained["models"]["t1t2"], [image], tmp_path / "out", "forward", "--device", "cuda")
    code, err = _run_cli(capsys, argv)

    assert code == 1
    assert "cuda" in err
    assert not (tmp_path / "out").exists()


def test_mr_sequence_name_fits_ctmr_model(trained, tmp_path, caplog):
    image = _copy_with_new_name(_test_case_file(trained, "ctmr", "mr"), tmp_path / "inputs" / "subj_t1.nii.gz")
    ct_named = _copy_with_new_name(_test_case_file(trained, "t1t2", "t1"), tmp_path / "other" / "ct.nii.gz")

    with caplog.at_level(logging.WARNING, logger="symot_med"):
        assert main(_translate_argv(trained["models"]["ctmr"], [image], tmp_path / "out", "inverse")) == 0
        assert main(_translate_argv(trained["models"]["t1t2"], [ct_named], tmp_path / "out2")) == 0

    warnings = _warnings(caplog)
    assert not any(str(image) in message for message in warnings), warnings
    expected = f"{ct_named} is named like a ct image, but this model translates between t1 and t2"
    assert any(expected in message for message in warnings), warnings


def test_flow_only_copy_names_card(trained, tmp_path, capsys):
    copy = tmp_path / "flow_only"
    shutil.copytree(trained["models"]["t1t2"], copy)

    code, err = _run_cli(capsys, _translate_argv(copy, [_test_case_file(trained, "t1t2", "t1")], tmp_path / "out"))

    _assert_one_line_error(code, err, f"named in {copy / 'model.json'}, not found", "copy or move the whole run folder")
    assert not (tmp_path / "out").exists()


def test_prepare_out_file_error(trained, tmp_path, capsys):
    out = tmp_path / "afile.txt"
    out.write_text("keep me")

    code, err = _run_cli(capsys, ["prepare", "--data", str(trained["cohort"]["brats"]), "--pair", "t1t2",
                                  "--out", str(out), "--quiet"])

    _assert_one_line_error(code, err, f"cannot use {out}", "check the path and its permissions")
    assert "[Errno" not in err
    assert out.read_text() == "keep me"


def test_rerun_warns_before_replacing_output(trained, tmp_path, caplog):
    arguments = _translate_argv(trained["models"]["t1t2"], [_test_case_file(trained, "t1t2", "t1")], tmp_path / "out")
    assert main(arguments) == 0
    written = next((tmp_path / "out").iterdir())

    with caplog.at_level(logging.WARNING, logger="symot_med"):
        assert main(arguments) == 0

    assert f"replacing {written}, an output of an earlier run" in _warnings(caplog)
