"""Preprocessing geometry and intensity, checked against the input files."""

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from symot_med.config import Profile
from symot_med.data import transforms
from symot_med.data.transforms import IntensityScale, LoadNiftid, preprocess_volume, threshold_mask, to_native


def smooth_ball(shape):
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    radius2 = sum(g**2 for g in grid)
    return (1000.0 * np.exp(-2.0 * radius2) * (radius2 < 0.8)).astype(np.float32)


def oblique_affine(spacing=(1.2, 0.9, 2.0)):
    """Non-RAS (flipped x and y), rotated, anisotropic voxel-to-world matrix."""
    affine = np.eye(4)
    rotation = Rotation.from_euler("xyz", [10, -5, 20], degrees=True).as_matrix()
    affine[:3, :3] = rotation @ np.diag([-spacing[0], -spacing[1], spacing[2]])
    affine[:3, 3] = [30.0, -20.0, 10.0]
    return affine


def write_unreadable_volume(path, broken_gzip):
    """Write a noisy .nii.gz whose header passes ``check_nifti`` but whose data cannot be read."""
    noise = np.random.default_rng(0).uniform(0, 1000, size=(40, 40, 20)).astype(np.float32)
    nib.save(nib.Nifti1Image(noise, np.eye(4)), str(path))
    return broken_gzip(path)


def test_ras_volume_round_trip_exact(tmp_path):
    volume = smooth_ball((40, 48, 20))
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.diag([1.0, 1.0, 1.0, 1.0])), str(path))
    profile = Profile("t", "brats", (1.0, 1.0, 1.0), (64, 64))

    pre = preprocess_volume(path, "t1", profile)
    scale = IntensityScale(pre.record.intensity_low, pre.record.intensity_high)
    back = to_native(scale.denormalise(pre.image) * pre.mask, pre.record)

    native_mask = to_native(pre.mask, pre.record, mode="nearest") > 0.5
    inside = native_mask & (volume > scale.low) & (volume < scale.high)
    assert inside.sum() > 0.5 * (volume > 0).sum()
    assert back.shape == volume.shape
    np.testing.assert_allclose(back[inside], volume[inside], rtol=1e-4, atol=1e-2)


def test_oblique_volume_round_trip_close(tmp_path):
    volume = smooth_ball((40, 50, 30))
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(volume, oblique_affine()), str(path))
    profile = Profile("t", "brats", (1.0, 1.0, 1.0), (64, 64))

    pre = preprocess_volume(path, "t1", profile)
    scale = IntensityScale(pre.record.intensity_low, pre.record.intensity_high)
    back = to_native(scale.denormalise(pre.image) * pre.mask, pre.record)

    inside = volume > 100
    relative_error = np.abs(back - volume)[inside].mean() / volume[inside].mean()
    assert relative_error < 0.03


def test_preprocessed_grid_is_ras_with_profile_spacing(tmp_path):
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(smooth_ball((40, 50, 30)), oblique_affine()), str(path))
    profile = Profile("t", "brats", (2.0, 2.0, 2.0), (32, 40))

    pre = preprocess_volume(path, "t1", profile)
    affine = np.array(pre.record.preprocessed_affine)

    assert pre.image.shape[:2] == (32, 40)
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), [2.0, 2.0, 2.0], atol=1e-5)
    assert pre.record.native_shape == [40, 50, 30]
    np.testing.assert_allclose(pre.record.native_affine, oblique_affine())


def test_mr_normalisation_uses_mask_percentiles(tmp_path):
    volume = smooth_ball((30, 30, 20))
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(path))
    profile = Profile("t", "brats", (1.0, 1.0, 1.0), (32, 32))

    pre = preprocess_volume(path, "t2", profile)

    foreground = volume[volume > 0.05 * np.percentile(volume[volume > 0], 99)]
    low, high = np.percentile(foreground, [0.5, 99.5])
    assert pre.record.intensity_low == pytest.approx(low, rel=0.05)
    assert pre.record.intensity_high == pytest.approx(high, rel=0.01)
    assert pre.image.min() >= 0.0
    assert pre.image.max() <= 1.0
    assert np.all(pre.image[pre.mask == 0] == 0)


def test_ct_normalisation_is_fixed_window(tmp_path):
    hu = np.full((30, 30, 20), -1000, dtype=np.int16)
    hu[10:20, 10:20, 5:15] = 40
    hu[12:18, 12:18, 8:12] = 3500
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(hu, np.eye(4)), str(path))
    profile = Profile("t", "synthrad", (1.0, 1.0, 1.0), (32, 32))

    pre = preprocess_volume(path, "ct", profile)

    assert (pre.record.intensity_low, pre.record.intensity_high) == (-1024.0, 3000.0)
    assert pre.image.max() == pytest.approx(1.0)
    soft = pre.image[pre.mask > 0]
    assert np.any(np.isclose(soft, (40 + 1024) / 4024, atol=1e-4))


def test_mask_file_is_used(tmp_path):
    volume = smooth_ball((30, 30, 20))
    mask = np.zeros(volume.shape, dtype=np.uint8)
    mask[5:25, 5:25, 5:15] = 1
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(tmp_path / "mr.nii.gz"))
    nib.save(nib.Nifti1Image(mask, np.eye(4)), str(tmp_path / "mask.nii.gz"))
    profile = Profile("t", "synthrad", (1.0, 1.0, 1.0), (32, 32))

    pre = preprocess_volume(tmp_path / "mr.nii.gz", "mr", profile, mask_path=tmp_path / "mask.nii.gz")

    assert pre.mask.sum() == mask.sum()


def write_masked_volume(folder, name, shape, box):
    """Write a 2 mm volume and its mask, ones inside ``box`` (a tuple of slices), and return both paths."""
    mask = np.zeros(shape, dtype=np.uint8)
    mask[box] = 1
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(smooth_ball(shape), affine), str(folder / name))
    nib.save(nib.Nifti1Image(mask, affine), str(folder / "mask.nii.gz"))
    return folder / name, folder / "mask.nii.gz"


@pytest.fixture
def crop_warnings(monkeypatch, caplog):
    """Reset the per-process limit of crop warnings and capture them."""
    monkeypatch.setattr(transforms.WarnCroppedForegroundd, "warnings_logged", 0)
    caplog.set_level("WARNING", logger="symot_med.data.transforms")
    return caplog


def test_wide_foreground_logs_crop_warning(tmp_path, crop_warnings):
    # 46 voxels of 2 mm along x, wider than the 32-voxel slice.
    image, mask = write_masked_volume(tmp_path, "wide.nii.gz", (50, 30, 10), np.s_[2:48, 5:25, 2:8])
    profile = Profile("t", "synthrad", (2.0, 2.0, 2.0), (32, 32))

    pre = preprocess_volume(image, "mr", profile, mask_path=mask)

    assert pre.image.shape[:2] == (32, 32)
    messages = [record.getMessage() for record in crop_warnings.records]
    assert len(messages) == 1
    assert "wide.nii.gz" in messages[0]
    assert "spans 46 x 20 voxels (92 x 40 mm)" in messages[0]
    assert "slice of 32 x 32 voxels (64 x 64 mm)" in messages[0]
    assert f"leaves out {14 * 20 * 6} of {46 * 20 * 6} foreground voxels (30 %)" in messages[0]


def test_foreground_at_edge_logs_crop_warning(tmp_path, crop_warnings):
    # 34 voxels from x = 0: the box gets its margin on one side only, so the 34-voxel centre of
    # its 36 voxels cuts foreground, although the foreground is exactly as wide as the slice.
    image, mask = write_masked_volume(tmp_path, "edge.nii.gz", (50, 30, 10), np.s_[0:34, 5:25, 2:8])
    profile = Profile("t", "synthrad", (2.0, 2.0, 2.0), (34, 34))

    pre = preprocess_volume(image, "mr", profile, mask_path=mask)

    assert pre.mask.sum() < 34 * 20 * 6
    assert len(crop_warnings.records) == 1


def test_fitting_foreground_logs_no_warning(tmp_path, crop_warnings):
    # 30 x 20 voxels plus the 2-voxel crop margin fits 34 x 34.
    image, mask = write_masked_volume(tmp_path, "fits.nii.gz", (50, 30, 10), np.s_[10:40, 5:25, 2:8])
    profile = Profile("t", "synthrad", (2.0, 2.0, 2.0), (34, 34))

    pre = preprocess_volume(image, "mr", profile, mask_path=mask)

    assert pre.mask.sum() == 30 * 20 * 6
    assert crop_warnings.records == []


def test_crop_warnings_stop_at_limit(tmp_path, crop_warnings):
    image, mask = write_masked_volume(tmp_path, "wide.nii.gz", (50, 30, 10), np.s_[2:48, 5:25, 2:8])
    profile = Profile("t", "synthrad", (2.0, 2.0, 2.0), (32, 32))

    for _ in range(transforms.WarnCroppedForegroundd.max_warnings + 2):
        preprocess_volume(image, "mr", profile, mask_path=mask)

    messages = [record.getMessage() for record in crop_warnings.records]
    assert len(messages) == transforms.WarnCroppedForegroundd.max_warnings
    assert "not shown" in messages[-1]
    assert "not shown" not in messages[0]


def test_huge_voxels_rejected_before_resampling(tmp_path):
    path = tmp_path / "coarse.nii.gz"
    nib.save(nib.Nifti1Image(smooth_ball((20, 20, 10)), np.diag([50.0, 50.0, 50.0, 1.0])), str(path))
    profile = Profile("t", "brats", (1.0, 1.0, 1.0), (64, 64))

    with pytest.raises(ValueError) as caught:
        preprocess_volume(path, "t1", profile)

    message = str(caught.value)
    assert "coarse.nii.gz" in message
    assert "50 x 50 x 50 mm" in message
    assert "1000 x 1000 x 500 voxels" in message
    assert "pixdim" in message


@pytest.mark.parametrize(("scale", "origin"), [(0.0, 0.0), (float("nan"), 0.0), (1.0, float("nan"))])
def test_degenerate_affine_rejected(tmp_path, scale, origin):
    # nibabel builds no image from such an affine, so the header's sform rows are set directly.
    path = tmp_path / "flat.nii.gz"
    header = nib.Nifti1Header()
    header.set_data_shape((20, 20, 10))
    header.set_data_dtype(np.float32)
    header["srow_x"], header["srow_y"], header["srow_z"] = [1.0, 0, 0, 0], [0, scale, 0, origin], [0, 0, 1.0, 0]
    header["sform_code"], header["qform_code"] = 2, 0
    nib.save(nib.Nifti1Image(smooth_ball((20, 20, 10)).astype(np.float32), None, header=header), str(path))
    profile = Profile("t", "brats", (1.0, 1.0, 1.0), (64, 64))

    with pytest.raises(ValueError, match="flat.nii.gz: the affine in the header is degenerate"):
        preprocess_volume(path, "t1", profile)


def test_to_native_rejects_wrong_shape(tmp_path):
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(smooth_ball((20, 20, 10)), np.eye(4)), str(path))
    pre = preprocess_volume(path, "t1", Profile("t", "brats", (1.0, 1.0, 1.0), (24, 24)))

    with pytest.raises(ValueError, match="record expects"):
        to_native(np.zeros((5, 5, 5), dtype=np.float32), pre.record)


def test_load_niftid_names_unreadable_file(tmp_path, broken_gzip):
    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(smooth_ball((20, 20, 10)), np.eye(4)), str(good))
    bad = write_unreadable_volume(tmp_path / "bad.nii.gz", broken_gzip)
    loader = LoadNiftid(keys=["image", "mask"])

    with pytest.raises(ValueError) as error:
        loader({"image": str(good), "mask": str(bad)})

    assert str(error.value).startswith(f"cannot read {bad}: ")
    assert "invalid block type" in str(error.value)
    assert str(error.value).endswith("replace or remove the file")


def test_load_niftid_rejects_metadata_dictionaries():
    with pytest.raises(ValueError, match="image_only=True"):
        LoadNiftid(keys="image", image_only=False)


def test_preprocess_names_file_and_cause(tmp_path, broken_gzip):
    bad = write_unreadable_volume(tmp_path / "v.nii.gz", broken_gzip)

    with pytest.raises(ValueError) as error:
        preprocess_volume(bad, "t1", Profile("t", "brats", (1.0, 1.0, 1.0), (24, 24)))

    assert f"preprocessing {bad} failed: cannot read {bad}" in str(error.value)
    assert "invalid block type" in str(error.value)
    assert "applying transform" not in str(error.value)


@pytest.mark.parametrize("thin_axis", [0, 1, 2])
@pytest.mark.parametrize("thickness", [1, 2])
def test_threshold_mask_of_thin_volume(thin_axis, thickness):
    volume = np.zeros((20, 20, thickness), dtype=np.float32)
    volume[5:15, 5:15, :] = 100.0  # a 10 x 10 head in every slice
    volume = np.moveaxis(volume, 2, thin_axis)

    mask = np.moveaxis(threshold_mask(volume, "t1"), thin_axis, 2)

    # Opening with the in-plane cross removes only the 4 corners of the square.
    expected = np.zeros((20, 20), dtype=bool)
    expected[5:15, 5:15] = True
    expected[[5, 5, 14, 14], [5, 14, 5, 14]] = False
    for k in range(thickness):
        np.testing.assert_array_equal(mask[:, :, k], expected)
