"""Units of symot_med.bundle: network, transforms, writer, file names, data sets, loading errors."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from symot_med.bundle.data import UnpairedLatentDataset, find_bundle_root, split_latent_batch
from symot_med.bundle.network import (
    SymmetricFlow,
    TranslationNetwork,
    build_translation_network,
    load_translation_network,
)
from symot_med.bundle.transforms import (
    DenormaliseModalityd,
    NativeSpaceNiftiWriter,
    NormaliseModalityd,
    TranslatedNameFormatter,
)
from symot_med.bundle.workflows import translation_record
from symot_med.config import get_pair
from symot_med.data.transforms import IntensityScale
from symot_med.training.checkpoints import save_checkpoint

TINY_AUTOENCODER = {"channels": 8, "res_channels": 4, "n_res_blocks": 1, "embed_dim": 4, "n_embed": 16}
TINY_FLOW = {"n_blocks": 1, "hidden": 4, "n_res_blocks": 0}


def tiny_network(direction: str = "forward") -> TranslationNetwork:
    return build_translation_network(TINY_AUTOENCODER, (16, 24), TINY_FLOW, direction)


def test_network_maps_slices_to_unit_range():
    network = tiny_network().eval()

    with torch.no_grad():
        output = network(torch.rand(2, 1, 16, 24))

    assert output.shape == (2, 1, 16, 24)
    assert output.dtype == torch.float32
    assert float(output.min()) >= 0.0
    assert float(output.max()) <= 1.0


def test_network_rejects_unknown_direction():
    network = tiny_network()

    with pytest.raises(ValueError, match="direction"):
        TranslationNetwork(network.autoencoder, network.flow, "sideways")


def test_output_intensity_follows_direction():
    network = tiny_network("inverse")
    network.set_intensity(IntensityScale(-1024.0, 3000.0), IntensityScale(10.0, 900.0))

    scale = network.output_intensity()

    assert (scale.low, scale.high) == (-1024.0, 3000.0)


def test_output_intensity_missing_raises():
    with pytest.raises(ValueError, match="not a valid scale"):
        tiny_network().output_intensity()


def test_symmetric_flow_returns_both_directions():
    network = tiny_network()
    symmetric = SymmetricFlow(network.flow)
    x = network.autoencoder.latents(torch.rand(2, 1, 16, 24))

    with torch.no_grad():
        t_x, t_inv_z = symmetric(x, x)

    for level, forward, inverse in zip(x, t_x, t_inv_z):
        assert forward.shape == level.shape
        assert inverse.shape == level.shape


def test_load_rejects_other_architecture(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, translation_record(tiny_network(), get_pair("t1t2")))
    other = build_translation_network({**TINY_AUTOENCODER, "n_embed": 8}, (16, 24), TINY_FLOW)

    with pytest.raises(ValueError, match="autoencoder_config"):
        load_translation_network(other, path)


def test_load_rejects_other_checkpoint_kind(tmp_path):
    path = tmp_path / "flow.pt"
    save_checkpoint(path, {"kind": "flow", "state_dict": {}})

    with pytest.raises(ValueError, match="not a translation checkpoint"):
        load_translation_network(tiny_network(), path)


def test_load_round_trip_keeps_intensity(tmp_path):
    network = tiny_network()
    network.set_intensity(IntensityScale(1.0, 2.0), IntensityScale(3.0, 4.0))
    path = tmp_path / "model.pt"
    save_checkpoint(path, translation_record(network, get_pair("t1t2")))

    loaded = load_translation_network(tiny_network(), path)

    assert (loaded.output_intensity().low, loaded.output_intensity().high) == (3.0, 4.0)
    assert not loaded.training


def test_denormalise_ct_rounds_and_clips():
    values = torch.tensor([[[[0.0, 0.5, 1.2, 0.30001]]]])  # (1, X, Y, Z)
    mask = torch.tensor([[[[1.0, 1.0, 1.0, 0.0]]]])
    transform = DenormaliseModalityd("pred", "ct", IntensityScale(-1024.0, 3000.0))

    out = transform({"pred": MetaTensor(values), "mask": mask})["pred"]

    assert out.dtype == torch.int16
    assert out.flatten().tolist() == [-1024, 988, 3000, -1000]


def test_denormalise_mr_keeps_float_and_zero_background():
    values = torch.tensor([[[[0.25, 1.0]]]])
    mask = torch.tensor([[[[1.0, 0.0]]]])
    transform = DenormaliseModalityd("pred", "t2", IntensityScale(100.0, 500.0))

    out = transform({"pred": MetaTensor(values), "mask": mask})["pred"]

    assert out.dtype == torch.float32
    assert out.flatten().tolist() == [200.0, 0.0]


def test_denormalise_rejects_mask_of_other_grid():
    transform = DenormaliseModalityd("pred", "t2", IntensityScale(0.0, 1.0))

    with pytest.raises(ValueError, match="Invertd"):
        transform({"pred": torch.zeros(1, 2, 2, 2), "mask": torch.ones(1, 3, 2, 2)})


def test_normalise_keeps_transform_trace():
    image = MetaTensor(torch.arange(24.0).reshape(1, 2, 3, 4))
    image.applied_operations = [{"class": "Orientation"}]
    data = {"image": image, "mask": torch.ones(1, 2, 3, 4)}

    out = NormaliseModalityd("ct")(data)

    assert out["image"].applied_operations == [{"class": "Orientation"}]
    assert float(out["image"].max()) <= 1.0
    assert out["intensity_low"] == -1024.0


@pytest.mark.parametrize(
    "source, expected",
    [
        ("/data/Task1/brain/1BA001/mr.nii.gz", "1BA001_mr_to_ct"),
        ("/data/BraTS2021_00007/BraTS2021_00007_t1.nii.gz", "BraTS2021_00007_t1_to_ct"),
        ("/data/loose/scan.nii", "scan_mr_to_ct"),
    ],
)
def test_name_formatter_keeps_case_folder(source, expected):
    input_modality = "t1" if "BraTS" in source else "mr"
    formatter = TranslatedNameFormatter(input_modality, "ct")

    assert formatter({"filename_or_obj": source}, saver=None) == {"subject": expected, "idx": None}


def _reference_file(tmp_path: Path) -> Path:
    affine = np.array([[0.0, -1.5, 0.0, 10.0], [2.0, 0.0, 0.0, -5.0], [0.0, 0.0, 3.0, 2.0], [0, 0, 0, 1]])
    image = nib.Nifti1Image(np.zeros((4, 5, 6), dtype=np.int16), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=4)
    path = tmp_path / "input.nii.gz"
    nib.save(image, str(path))
    return path


def _write(path: Path, reference: Path, array: np.ndarray, affine: np.ndarray) -> None:
    writer = NativeSpaceNiftiWriter(output_dtype=None)
    writer.set_data_array(torch.from_numpy(array)[None], channel_dim=0)
    writer.set_metadata({"filename_or_obj": str(reference), "affine": torch.from_numpy(affine)}, resample=False)
    writer.write(path)


def test_writer_keeps_input_header(tmp_path):
    reference = _reference_file(tmp_path)
    original = nib.load(str(reference))
    array = np.arange(120, dtype=np.int16).reshape(4, 5, 6)

    _write(tmp_path / "out.nii.gz", reference, array, original.affine + 1e-6)

    written = nib.load(str(tmp_path / "out.nii.gz"))
    np.testing.assert_array_equal(written.affine, original.affine)
    assert int(written.header["sform_code"]) == 4
    assert int(written.header["qform_code"]) == 1
    assert written.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asarray(written.dataobj), array)


def test_writer_rejects_other_grid(tmp_path):
    reference = _reference_file(tmp_path)
    affine = nib.load(str(reference)).affine

    with pytest.raises(ValueError, match="affine"):
        _write(tmp_path / "moved.nii.gz", reference, np.zeros((4, 5, 6), dtype=np.float32), affine + np.eye(4))
    with pytest.raises(ValueError, match="shape"):
        _write(tmp_path / "cropped.nii.gz", reference, np.zeros((4, 5, 5), dtype=np.float32), affine)
    assert not (tmp_path / "moved.nii.gz").exists()


def test_unpaired_dataset_covers_every_sample():
    x = (torch.arange(5.0).reshape(5, 1, 1, 1), torch.arange(5.0).reshape(5, 1, 1, 1))
    z = (torch.arange(3.0).reshape(3, 1, 1, 1) + 10, torch.arange(3.0).reshape(3, 1, 1, 1) + 10)
    dataset = UnpairedLatentDataset(x, z, seed=1)

    items = [dataset[i] for i in range(len(dataset))]
    first_epoch = [int(item["z0"]) for item in items]
    dataset.set_epoch(2)
    second_epoch = [int(dataset[i]["z0"]) for i in range(len(dataset))]

    assert len(dataset) == 5
    assert sorted(int(item["x0"]) for item in items) == [0, 1, 2, 3, 4]
    assert set(first_epoch) == {10, 11, 12}
    assert first_epoch != second_epoch


def test_split_latent_batch_names_missing_key():
    with pytest.raises(ValueError, match="z1"):
        split_latent_batch({"x0": 0, "x1": 0, "z0": 0}, n_levels=2)


def test_find_bundle_root_from_repository(monkeypatch):
    repository = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repository)

    assert Path(find_bundle_root("symot_brats_t1t2")) == repository / "bundles" / "symot_brats_t1t2"
    with pytest.raises(FileNotFoundError, match="--bundle_root"):
        find_bundle_root("no_such_bundle")
