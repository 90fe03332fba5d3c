"""The MONAI bundles under bundles/: verifiers, a short train run, inference, evaluation, export.

Each bundle is trained for one epoch per stage through its own train configs, on three tiny cases
written with a non-RAS, oblique, anisotropic affine, with a tiny architecture set by overrides.
Inference must then write volumes with the input's shape, affine and header.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export, run, verify_metadata, verify_net_in_out
from scipy import ndimage
from scipy.spatial.transform import Rotation

from symot_med.bundle.network import build_translation_network, load_translation_network
from symot_med.config import Profile, get_pair
from symot_med.data.layouts import discover_cases
from symot_med.data.slices import SliceCache, split_cases
from symot_med.data.transforms import WarnCroppedForegroundd
from symot_med.evaluation.metrics import score_volume
from symot_med.inference.translate import Translator, write_model_card
from symot_med.training.checkpoints import load_checkpoint, save_checkpoint
from symot_med.training.flow import FlowTrainConfig, learning_rate

REPO = Path(__file__).resolve().parents[1]
BUNDLES = {"t1t2": REPO / "bundles" / "symot_brats_t1t2", "ctmr": REPO / "bundles" / "symot_synthrad_ctmr"}
SCHEMA = REPO.parent / "shared" / "monai" / "meta_schema_20240725.json"
CONFIG_FILES = ("inference", "train_autoencoder", "train_flow", "evaluate", "multi_gpu_train_flow")

TINY_AUTOENCODER = {
    "in_channels": 1, "channels": 16, "res_channels": 8, "n_res_blocks": 1, "embed_dim": 8, "n_embed": 32,
    "commitment": 0.25, "decay": 0.99, "restart_threshold": 1.0,
}
TINY_FLOW = {"n_blocks": 2, "hidden": 8, "n_res_blocks": 1, "clamp": 2.0, "seed": 0}
TINY_GEOMETRY = {"spacing": [4.0, 4.0, 4.0], "slice_size": [16, 24]}
# Three cases with test_fraction 0.34 give two training cases and one held-out case.
SPLIT = {"split_seed": 0, "test_fraction": 0.34}
DIRECTIONS = [("t1t2", "forward"), ("t1t2", "inverse"), ("ctmr", "forward"), ("ctmr", "inverse")]


def oblique_affine(spacing=(2.4, 1.6, 3.2), angles_deg=(12.0, -9.0, 21.0), offset=(31.0, -42.0, 17.0)) -> np.ndarray:
    """Voxel-to-world matrix that is rotated, flips two axes (LAI-like, not RAS) and is anisotropic."""
    rotation = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-1.0, 1.0, -1.0]) @ np.diag(spacing)
    affine[:3, 3] = offset
    return affine


def write_nifti(path: Path, values: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(values, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=2)
    nib.save(image, str(path))
    return path


def head_phantom(shape: tuple[int, int, int], seed: int) -> dict[str, np.ndarray]:
    """Label maps of a head: 0 air, 1 scalp, 2 bone, 3 brain, 4 ventricle; shifted per seed."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    shift = rng.uniform(-0.05, 0.05, size=3)
    radius = np.sqrt(sum((g - s) ** 2 for g, s in zip(grid, shift)))
    labels = np.zeros(shape, dtype=np.uint8)
    labels[radius < 0.85] = 1
    labels[radius < 0.75] = 2
    labels[radius < 0.65] = 3
    labels[(radius < 0.25) & (grid[0] > shift[0])] = 4
    return {"labels": labels, "noise": rng.normal(0.0, 1.0, size=shape)}


def write_tiny_cohort(root: Path, n_cases: int = 3, shape=(26, 30, 18)) -> dict[str, Path]:
    """Write BraTS-2021-like (t1, t2) and SynthRAD2023-like (ct, mr, mask) cases."""
    affine = oblique_affine()
    for index in range(n_cases):
        phantom = head_phantom(shape, seed=index)
        labels, noise = phantom["labels"], phantom["noise"]

        brain = np.isin(labels, (3, 4))
        t1 = np.where(labels == 3, 600.0, 0.0) + np.where(labels == 4, 250.0, 0.0) + 10.0 * noise * brain
        t2 = np.where(labels == 3, 350.0, 0.0) + np.where(labels == 4, 900.0, 0.0) + 10.0 * noise * brain
        case = f"BraTS2021_{index:05d}"
        write_nifti(root / "brats" / case / f"{case}_t1.nii.gz", t1.astype(np.int16), affine)
        write_nifti(root / "brats" / case / f"{case}_t2.nii.gz", t2.astype(np.int16), affine)

        ct_by_label = np.array([-1000.0, 30.0, 1200.0, 35.0, 5.0])
        mr_by_label = np.array([0.0, 400.0, 60.0, 550.0, 150.0])
        body = labels > 0
        ct = ct_by_label[labels] + 15.0 * noise * body
        mr = mr_by_label[labels] + 10.0 * noise * body
        folder = root / "synthrad" / "Task1" / "brain" / f"1BA{index + 1:03d}"
        write_nifti(folder / "ct.nii.gz", np.rint(ct).astype(np.int16), affine)
        write_nifti(folder / "mr.nii.gz", mr.astype(np.int16), affine)
        write_nifti(folder / "mask.nii.gz", body.astype(np.uint8), affine)
    return {"t1t2": root / "brats", "ctmr": root / "synthrad"}


def cache_profile(cache: SliceCache) -> Profile:
    values = cache.manifest["profile"]
    return Profile(**{**values, "spacing": tuple(values["spacing"]), "slice_size": tuple(values["slice_size"])})


def held_out_case(dataset_dir: Path, pair_name: str) -> str:
    cases = discover_cases(dataset_dir, get_pair(pair_name).modalities())
    _, test = split_cases([case.case_id for case in cases], SPLIT["test_fraction"], SPLIT["split_seed"])
    assert len(test) == 1
    return test[0]


def config(pair_name: str, name: str) -> str:
    return str(BUNDLES[pair_name] / "configs" / f"{name}.json")


def tiny_overrides(pair_name: str, model_dir: Path) -> dict:
    """Overrides that shrink a bundle to the tiny test geometry and keep its files out of the repository."""
    return {
        "bundle_root": str(BUNDLES[pair_name]),
        "model_dir": str(model_dir),
        "logging_file": False,
        "autoencoder_config": TINY_AUTOENCODER,
        "flow_config": TINY_FLOW,
        **TINY_GEOMETRY,
    }


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return write_tiny_cohort(tmp_path_factory.mktemp("bundle_cohort"))


@pytest.fixture(scope="module")
def trained(cohort, tmp_path_factory):
    """Train each bundle's autoencoder and flow for one epoch through its train configs."""
    models = {}
    for pair_name in BUNDLES:
        root = tmp_path_factory.mktemp(f"bundle_{pair_name}")
        # Logging every iteration runs the StatsHandler path that real runs take every 25 iterations.
        overrides = {**tiny_overrides(pair_name, root / "models"), "work_dir": str(root / "work"), "log_every_iterations": 1}
        run(
            config_file=config(pair_name, "train_autoencoder"),
            dataset_dir=str(cohort[pair_name]),
            **overrides,
            **SPLIT,
            **{"train_config#epochs": 1, "train_config#batch_size": 8},
        )
        overrides.pop("spacing")
        run(
            config_file=config(pair_name, "train_flow"),
            **overrides,
            **{"train_config#epochs": 1, "train_config#batch_size": 4},
        )
        models[pair_name] = {"model_dir": root / "models", "work_dir": root / "work"}
    return models


def run_inference(pair_name: str, direction: str, dataset_dir: Path, model_dir: Path, output_dir: Path) -> None:
    run(
        config_file=config(pair_name, "inference"),
        dataset_dir=str(dataset_dir),
        output_dir=str(output_dir),
        direction=direction,
        **tiny_overrides(pair_name, model_dir),
    )


def input_files(dataset_dir: Path, modality: str) -> list[Path]:
    brats = sorted(dataset_dir.glob(f"*/*_{modality}.nii.gz"))
    return brats or sorted(dataset_dir.glob(f"Task1/brain/*/{modality}.nii.gz"))


# Verifiers and config consistency


@pytest.mark.parametrize("pair_name", sorted(BUNDLES))
def test_metadata_valid_against_schema(pair_name):
    if not SCHEMA.is_file():
        pytest.skip(f"MONAI metadata schema not found at {SCHEMA}; verify_metadata would download it")

    verify_metadata(meta_file=config(pair_name, "metadata"), filepath=str(SCHEMA))


@pytest.mark.parametrize("pair_name", sorted(BUNDLES))
def test_network_in_out_matches_metadata(pair_name):
    verify_net_in_out(
        net_id="network_def",
        meta_file=config(pair_name, "metadata"),
        config_file=config(pair_name, "inference"),
        device="cpu",
    )


@pytest.mark.parametrize("pair_name", sorted(BUNDLES))
def test_configs_agree_on_shared_settings(pair_name):
    configs = {name: json.loads(Path(config(pair_name, name)).read_text()) for name in CONFIG_FILES}
    parsed = {name: configs[name] for name in ("inference", "train_autoencoder", "train_flow")}
    evaluate = configs["evaluate"]
    metadata = json.loads(Path(config(pair_name, "metadata")).read_text())
    inference = parsed["inference"]

    for name, values in parsed.items():
        assert values["pair"] == f"$symot_med.config.get_pair('{pair_name}')", name
        assert values["slice_size"] == inference["slice_size"], name
        assert values["bundle_root"] == inference["bundle_root"], name
    assert parsed["train_autoencoder"]["spacing"] == inference["spacing"]
    assert parsed["train_autoencoder"]["autoencoder_config"] == inference["autoencoder_config"]
    assert parsed["train_flow"]["flow_config"] == inference["flow_config"]
    assert evaluate["split_seed"] == parsed["train_autoencoder"]["split_seed"]
    assert evaluate["test_fraction"] == parsed["train_autoencoder"]["test_fraction"]

    height, width = inference["slice_size"]
    embed_dim = inference["autoencoder_config"]["embed_dim"]
    image = metadata["network_data_format"]["inputs"]["image"]
    assert image["spatial_shape"] == [height, width]
    assert metadata["network_data_format"]["outputs"]["pred"]["spatial_shape"] == [height, width]
    for key in ("autoencoder_data_format", "flow_data_format"):
        top = metadata[key]["outputs"]["top"]
        bottom = metadata[key]["outputs"]["bottom"]
        assert top["spatial_shape"] == [height // 8, width // 8], key
        assert bottom["spatial_shape"] == [height // 4, width // 4], key
        assert top["num_channels"] == bottom["num_channels"] == embed_dim, key


# Training through the configs, then inference


@pytest.mark.parametrize("pair_name", sorted(BUNDLES))
def test_train_configs_write_loadable_checkpoints(trained, cohort, pair_name):
    model_dir = trained[pair_name]["model_dir"]
    record = load_checkpoint(model_dir / "model.pt")
    cache = SliceCache.open(trained[pair_name]["work_dir"] / "cache")
    pair = get_pair(pair_name)

    network = build_translation_network(TINY_AUTOENCODER, TINY_GEOMETRY["slice_size"], TINY_FLOW, "inverse")
    network = load_translation_network(network, model_dir / "model.pt")

    assert record["kind"] == "translation"
    assert record["pair"] == pair_name
    assert (model_dir / "autoencoder.pt").is_file()
    assert network.output_intensity().low == pytest.approx(cache.intensity(pair.source).low)
    assert network.output_intensity().high == pytest.approx(cache.intensity(pair.source).high)
    assert cache.manifest["split"]["test"] == [held_out_case(cohort[pair_name], pair_name)]


@pytest.mark.parametrize("pair_name", sorted(BUNDLES))
def test_train_flow_saves_moving_average(trained, pair_name):
    """Check that model.pt contains the work checkpoint's moving average after a cosine schedule."""
    record = load_checkpoint(trained[pair_name]["model_dir"] / "model.pt")
    (checkpoint_file,) = (trained[pair_name]["work_dir"] / "flow").glob("*.pt")
    checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=True)
    average, scheduler = checkpoint["average"], checkpoint["lr_scheduler"]
    steps = scheduler["last_epoch"]
    # The trained fixture's train_flow run sets these two fields and keeps the other defaults.
    train_config = FlowTrainConfig(epochs=1, batch_size=4)

    assert record["weights"] == "moving average"
    assert average["decay"] == train_config.ema_decay
    assert average["steps"] == steps
    assert steps > 1
    assert scheduler["_last_lr"][0] == pytest.approx(learning_rate(train_config, steps, steps), rel=1e-9)
    for name, value in average["averaged"].items():
        torch.testing.assert_close(record["state_dict"][f"flow.{name}"], value, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("pair_name, direction", DIRECTIONS)
def test_inference_keeps_input_space(trained, cohort, tmp_path, pair_name, direction):
    pair = get_pair(pair_name)
    input_modality, output_modality = pair.input_modality(direction), pair.output_modality(direction)
    inputs = input_files(cohort[pair_name], input_modality)
    before = {path: path.read_bytes() for path in inputs}

    run_inference(pair_name, direction, cohort[pair_name], trained[pair_name]["model_dir"], tmp_path / "out")

    written = sorted((tmp_path / "out").iterdir())
    cases = [path.parent.name for path in inputs]
    assert [path.name for path in written] == [f"{case}_{input_modality}_to_{output_modality}.nii.gz" for case in cases]
    for source, output_path in zip(inputs, written):
        reference, output = nib.load(str(source)), nib.load(str(output_path))
        assert output.shape == reference.shape
        np.testing.assert_array_equal(output.affine, reference.affine)
        assert int(output.header["qform_code"]) == int(reference.header["qform_code"])
        assert int(output.header["sform_code"]) == int(reference.header["sform_code"])
        assert nib.aff2axcodes(output.affine) == nib.aff2axcodes(reference.affine) != ("R", "A", "S")
        assert np.isfinite(np.asarray(output.dataobj)).all()
        if output_modality == "ct":
            assert_ct_in_hounsfield_units(output, source.parent / "mask.nii.gz")
    assert {path: path.read_bytes() for path in inputs} == before


def assert_ct_in_hounsfield_units(output: nib.Nifti1Image, mask_file: Path) -> None:
    values = np.asarray(output.dataobj)
    mask = np.asarray(nib.load(str(mask_file)).dataobj) > 0
    # The mask goes to the 4 mm grid and back (nearest neighbour), so its edge may move by a voxel.
    near_mask = ndimage.binary_dilation(mask, iterations=2)
    assert output.get_data_dtype() == np.int16
    assert values.min() >= -1024
    assert values.max() <= 3000
    assert (values[~near_mask] == -1000).all()
    assert (values[mask] != -1000).mean() > 0.9


@pytest.mark.parametrize("pair_name, direction", [("t1t2", "forward"), ("ctmr", "inverse")])
def test_inference_matches_package_translator(trained, cohort, tmp_path, pair_name, direction):
    """Inside the mask, away from its edge, the bundle writes what ``symot-med translate`` writes.

    At the mask's edge the two differ by design: the package masks the translated slices before
    resampling them onto the input's grid, the bundle resamples first (Invertd) and masks after.
    """
    pair = get_pair(pair_name)
    model_dir = trained[pair_name]["model_dir"]
    translator_dir = tmp_path / "translator_model"
    record = load_checkpoint(model_dir / "model.pt")
    flow_state = {key.removeprefix("flow."): value for key, value in record["state_dict"].items() if key.startswith("flow.")}
    save_checkpoint(translator_dir / "flow.pt", {"kind": "flow", "flow_config": record["flow_config"], "state_dict": flow_state})
    cache = SliceCache.open(trained[pair_name]["work_dir"] / "cache")
    write_model_card(
        translator_dir, pair, cache_profile(cache), cache.manifest["intensity"], model_dir / "autoencoder.pt",
        translator_dir / "flow.pt",
    )
    source = input_files(cohort[pair_name], pair.input_modality(direction))[0]
    mask_file = source.parent / "mask.nii.gz"

    run_inference(pair_name, direction, source.parent, model_dir, tmp_path / "bundle")
    expected_path = Translator(translator_dir, device="cpu").translate_file(
        source, direction, tmp_path / "package", mask_path=mask_file if mask_file.is_file() else None
    )

    bundle_output = np.asarray(nib.load(str(tmp_path / "bundle" / expected_path.name)).dataobj, dtype=np.float32)
    package_output = np.asarray(nib.load(str(expected_path)).dataobj, dtype=np.float32)
    background = -1000.0 if pair.output_modality(direction) == "ct" else 0.0
    foreground = package_output != background
    interior = ndimage.binary_erosion(foreground, iterations=4)
    assert interior.sum() > 20
    np.testing.assert_allclose(bundle_output[interior], package_output[interior], rtol=1e-4, atol=1.0)


def test_inference_rejects_output_inside_input_folder(trained, cohort):
    output_dir = cohort["t1t2"] / "BraTS2021_00000" / "translated"

    with pytest.raises(RuntimeError) as error:
        run_inference("t1t2", "forward", cohort["t1t2"], trained["t1t2"]["model_dir"], output_dir)

    assert "inside the input folder" in str(error.value.__cause__ or error.value)
    assert not output_dir.exists()


def error_chain(error: BaseException) -> str:
    """Messages of ``error`` and the exceptions that caused it, one per line, outermost first."""
    messages = []
    while error is not None:
        messages.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
    return "\n".join(messages)


def copy_cohort(source: Path, destination: Path) -> Path:
    """Copy a tiny cohort, so that a test can damage files or write into it without touching the shared one."""
    shutil.copytree(source, destination)
    return destination


@pytest.mark.parametrize("inside", ["translated", "."])
def test_inference_rejects_output_in_dataset_folder(cohort, tmp_path, inside):
    dataset_dir = copy_cohort(cohort["t1t2"], tmp_path / "brats")
    output_dir = dataset_dir / inside
    before = sorted(p.relative_to(dataset_dir) for p in dataset_dir.rglob("*"))

    # The output check runs in `initialize`, before the network and its weights are loaded.
    with pytest.raises(RuntimeError) as error:
        run_inference("t1t2", "forward", dataset_dir, tmp_path / "no_models", output_dir)

    message = error_chain(error.value)
    assert f"output folder {output_dir}" in message
    assert f"input folder {dataset_dir.resolve()}" in message
    assert f"choose an output folder outside {dataset_dir.resolve()}" in message
    assert sorted(p.relative_to(dataset_dir) for p in dataset_dir.rglob("*")) == before


def test_inference_truncated_volume_rejected_before_writing(cohort, tmp_path):
    dataset_dir = copy_cohort(cohort["t1t2"], tmp_path / "brats")
    bad = dataset_dir / "BraTS2021_00001" / "BraTS2021_00001_t1.nii.gz"
    bad.write_bytes(bad.read_bytes()[:-200])

    with pytest.raises(RuntimeError) as error:
        run_inference("t1t2", "forward", dataset_dir, tmp_path / "no_models", tmp_path / "out")

    message = error_chain(error.value)
    assert f"{bad} is truncated" in message
    assert "replace or remove the file" in message
    assert not (tmp_path / "out").exists()


def test_inference_unreadable_volume_names_file(trained, cohort, tmp_path, broken_gzip):
    dataset_dir = copy_cohort(cohort["t1t2"], tmp_path / "brats")
    bad = broken_gzip(dataset_dir / "BraTS2021_00001" / "BraTS2021_00001_t1.nii.gz")

    with pytest.raises(RuntimeError) as error:
        run_inference("t1t2", "forward", dataset_dir, trained["t1t2"]["model_dir"], tmp_path / "out")

    message = error_chain(error.value)
    assert f"ValueError: cannot read {bad}: " in message
    assert "replace or remove the file" in message


def test_inference_default_dataset_dir_names_option(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    overrides = tiny_overrides("t1t2", tmp_path / "no_models")

    with pytest.raises(RuntimeError) as error:
        run(config_file=config("t1t2", "inference"), output_dir=str(tmp_path / "out"), **overrides)

    message = error_chain(error.value)
    assert "data folder demo_out/cohort/brats does not exist" in message
    assert "pass --dataset_dir" in message
    assert "the config's default dataset_dir" in message


def test_inference_on_other_data_set_names_bundle(cohort, tmp_path):
    with pytest.raises(RuntimeError) as error:
        run_inference("t1t2", "forward", cohort["ctmr"], tmp_path / "no_models", tmp_path / "out")

    message = error_chain(error.value)
    assert "synthrad2023 layout, which contains modalities mr and ct, not t1" in message
    assert "bundle symot_synthrad_ctmr" in message
    assert "t1.nii.gz" not in message


@pytest.mark.parametrize("pair_name", sorted(BUNDLES))
def test_train_flow_without_autoencoder_names_config(tmp_path, pair_name):
    overrides = {**tiny_overrides(pair_name, tmp_path / "models"), "work_dir": str(tmp_path / "work")}
    overrides.pop("spacing")

    with pytest.raises(RuntimeError) as error:
        run(config_file=config(pair_name, "train_flow"), **overrides)

    message = error_chain(error.value)
    assert f"autoencoder checkpoint {tmp_path / 'models' / 'autoencoder.pt'} not found" in message
    assert "run train_autoencoder.json first" in message


def test_inference_without_weights_names_the_file(cohort, tmp_path):
    with pytest.raises(RuntimeError) as error:
        run_inference("t1t2", "forward", cohort["t1t2"], tmp_path / "no_models", tmp_path / "out")

    assert "model.pt not found" in str(error.value.__cause__ or error.value)


# Evaluation and export


def test_evaluate_scores_held_out_cases(trained, cohort, tmp_path):
    pair = get_pair("ctmr")
    run(
        config_file=[config("ctmr", "inference"), config("ctmr", "evaluate")],
        dataset_dir=str(cohort["ctmr"]),
        output_dir=str(tmp_path),
        direction="forward",
        **tiny_overrides("ctmr", trained["ctmr"]["model_dir"]),
        **SPLIT,
    )

    metrics = dict(line.split(",") for line in (tmp_path / "metrics.csv").read_text().splitlines())
    case_id = held_out_case(cohort["ctmr"], "ctmr")
    case = tmp_path / f"{case_id}_ct_to_mr.nii.gz"
    assert sorted(metrics) == ["identity_psnr", "identity_ssim", "psnr", "ssim"]
    assert sorted(p.name for p in tmp_path.glob("*.nii.gz")) == [case.name]

    folder = cohort["ctmr"] / "Task1" / "brain" / case_id
    ground_truth = np.asarray(nib.load(str(folder / "mr.nii.gz")).get_fdata(), dtype=np.float32)
    translated = np.asarray(nib.load(str(case)).get_fdata(), dtype=np.float32)
    mask = np.asarray(nib.load(str(folder / "mask.nii.gz")).dataobj) > 0
    expected = score_volume(ground_truth, translated, mask, pair.target)
    assert float(metrics["ssim"]) == pytest.approx(expected["ssim"], rel=1e-6)
    assert float(metrics["psnr"]) == pytest.approx(expected["psnr"], rel=1e-6)


@pytest.mark.parametrize("pair_name", sorted(BUNDLES))
def test_ckpt_export_torchscript_reloads(trained, tmp_path, pair_name):
    model_file = trained[pair_name]["model_dir"] / "model.pt"
    height, width = TINY_GEOMETRY["slice_size"]

    ckpt_export(
        net_id="network_def",
        filepath=str(tmp_path / "model.ts"),
        ckpt_file=str(model_file),
        meta_file=config(pair_name, "metadata"),
        config_file=config(pair_name, "inference"),
        key_in_ckpt="state_dict",
        use_trace=True,
        input_shape=[1, 1, height, width],
        slice_size=[height, width],
        autoencoder_config=TINY_AUTOENCODER,
        flow_config=TINY_FLOW,
        direction="inverse",
    )
    exported = torch.jit.load(str(tmp_path / "model.ts"))
    network = build_translation_network(TINY_AUTOENCODER, (height, width), TINY_FLOW, "inverse")
    network = load_translation_network(network, model_file)
    slices = torch.rand(3, 1, height, width, generator=torch.Generator().manual_seed(0))

    with torch.no_grad():
        expected, actual = network(slices), exported(slices)

    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)


def test_parsed_inference_config_builds_bundle_preprocessing():
    parser = ConfigParser()
    parser.read_config(config("ctmr", "inference"))
    names = [type(t).__name__ for t in parser.get_parsed_content("preprocessing").transforms]

    assert names == [
        "LoadNiftid", "EnsureChannelFirstd", "ForegroundMaskd", "Orientationd", "Spacingd",
        "CropForegroundd", "WarnCroppedForegroundd", "ResizeWithPadOrCropd", "NormaliseModalityd",
    ]


@pytest.mark.parametrize("pair_name", ["t1t2", "ctmr"])
def test_bundle_preprocessing_warns_on_cropped_head(pair_name, tmp_path, monkeypatch, caplog):
    # A foreground box 46 voxels of 2 mm wide, in a bundle whose slice is 32 voxels wide.
    monkeypatch.setattr(WarnCroppedForegroundd, "warnings_logged", 0)
    caplog.set_level("WARNING", logger="symot_med.data.transforms")
    values = np.zeros((50, 30, 10), dtype=np.float32)
    values[2:48, 5:25, 2:8] = 500.0
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    image = write_nifti(tmp_path / "wide.nii.gz", values, affine)
    mask = write_nifti(tmp_path / "mask.nii.gz", (values > 0).astype(np.uint8), affine)
    parser = ConfigParser()
    parser.read_config(config(pair_name, "inference"))
    parser["spacing"] = [2.0, 2.0, 2.0]
    parser["slice_size"] = [32, 32]

    output = parser.get_parsed_content("preprocessing")({"image": str(image), "mask": str(mask)})

    assert tuple(output["image"].shape[1:3]) == (32, 32)
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1
    assert "wide.nii.gz" in messages[0]
    assert "leaves out" in messages[0]
