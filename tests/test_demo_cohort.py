"""Tests of the synthetic demo cohort (one subject per data set, about 17 s of CPU time in all)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from symot_med.data import demo_cohort
from symot_med.data.demo_cohort import generate_demo_cohort
from symot_med.data.layouts import discover_cases

BRATS_CASE = "brats/BraTS2021_00000"
SYNTHRAD_CASE = "synthrad/Task1/brain/1BA001"
EXPECTED_FILES = {
    "cohort.json",
    "TEMPLATE_LICENSE.txt",
    f"{BRATS_CASE}/BraTS2021_00000_t1.nii.gz",
    f"{BRATS_CASE}/BraTS2021_00000_t2.nii.gz",
    f"{BRATS_CASE}/BraTS2021_00000_seg.nii.gz",
    f"{SYNTHRAD_CASE}/mr.nii.gz",
    f"{SYNTHRAD_CASE}/ct.nii.gz",
    f"{SYNTHRAD_CASE}/mask.nii.gz",
}


def load(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    image = nib.load(str(path))
    return np.asarray(image.dataobj), image


def relative_files(folder: Path) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp("demo") / "cohort"
    generate_demo_cohort(out_dir, seed=0, n_subjects=1, progress=False)
    return out_dir


@pytest.fixture(scope="module")
def template_maps() -> dict:
    """Independent tissue maps straight from nilearn: probabilities on the template grid."""
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=1)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).dataobj, dtype=np.float64)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).dataobj, dtype=np.float64)
    brain = np.asarray(datasets.load_mni152_brain_mask(resolution=1).dataobj, dtype=np.float64)
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    return {"affine": t1.affine, "gm": gm, "wm": wm, "csf": csf, "brain": brain}


def on_output_grid(volume: np.ndarray, template_affine: np.ndarray, image: nib.Nifti1Image) -> np.ndarray:
    """Copy a template-grid volume onto ``image``'s grid through the two affines (world mm)."""
    voxel_to_voxel = np.linalg.inv(image.affine) @ template_affine
    assert np.allclose(voxel_to_voxel[:3, :3], np.eye(3))
    shift = np.rint(voxel_to_voxel[:3, 3]).astype(int)
    assert np.allclose(voxel_to_voxel[:3, 3], shift)

    out = np.zeros(image.shape, dtype=volume.dtype)
    source, target = [], []
    for offset, size, out_size in zip(shift, volume.shape, image.shape):
        low = max(0, -offset)
        high = min(size, out_size - offset)
        source.append(slice(low, high))
        target.append(slice(low + offset, high + offset))
    out[tuple(target)] = volume[tuple(source)]
    return out


def test_layout_file_names(cohort):
    assert relative_files(cohort) == EXPECTED_FILES


def test_no_staging_folder_left(cohort):
    leftovers = [path.name for path in cohort.parent.iterdir() if path.name.startswith(".cohort.partial-")]
    assert leftovers == []


def test_layouts_discover_cohort(cohort):
    brats = discover_cases(cohort / "brats", modalities=("t1", "t2"))
    synthrad = discover_cases(cohort / "synthrad", modalities=("mr", "ct"))
    assert [case.case_id for case in brats] == ["BraTS2021_00000"]
    assert brats[0].layout == "brats2021"
    assert brats[0].seg is not None
    assert [case.case_id for case in synthrad] == ["1BA001"]
    assert synthrad[0].layout == "synthrad2023"
    assert synthrad[0].mask is not None


def test_brats_grid_and_dtypes(cohort):
    for name, dtype in (("t1", np.int16), ("t2", np.int16), ("seg", np.uint8)):
        array, image = load(cohort / BRATS_CASE / f"BraTS2021_00000_{name}.nii.gz")
        assert array.shape == (240, 240, 155), name
        assert image.header.get_zooms() == (1.0, 1.0, 1.0), name
        assert array.dtype == dtype, name


def test_brats_skull_stripped_with_lesion(cohort):
    t1, _ = load(cohort / BRATS_CASE / "BraTS2021_00000_t1.nii.gz")
    t2, _ = load(cohort / BRATS_CASE / "BraTS2021_00000_t2.nii.gz")
    seg, _ = load(cohort / BRATS_CASE / "BraTS2021_00000_seg.nii.gz")

    assert np.array_equal(t1 > 0, t2 > 0)
    brain_voxels = int((t1 > 0).sum())
    assert 1_400_000 < brain_voxels < 2_400_000
    assert t1[:10].max() == 0
    assert 300 < np.percentile(t1[t1 > 0], 90) < 1500

    assert set(np.unique(seg)) == {0, 1, 2, 4}
    assert not np.any((seg > 0) & (t1 == 0))


def test_affines_shared_and_not_identity(cohort):
    cases = {
        BRATS_CASE: ["BraTS2021_00000_t1.nii.gz", "BraTS2021_00000_t2.nii.gz", "BraTS2021_00000_seg.nii.gz"],
        SYNTHRAD_CASE: ["mr.nii.gz", "ct.nii.gz", "mask.nii.gz"],
    }
    for folder, names in cases.items():
        affines = [nib.load(str(cohort / folder / name)).affine for name in names]
        assert not np.allclose(affines[0], np.eye(4)), folder
        assert np.allclose(np.abs(np.diag(affines[0])[:3]), 1.0), folder
        for name, affine in zip(names[1:], affines[1:]):
            assert np.array_equal(affine, affines[0]), f"{folder}/{name}"


def test_affines_keep_template_world_coordinates(cohort, template_maps):
    for path in (cohort / BRATS_CASE / "BraTS2021_00000_t1.nii.gz", cohort / SYNTHRAD_CASE / "ct.nii.gz"):
        voxel_to_voxel = np.linalg.inv(nib.load(str(path)).affine) @ template_maps["affine"]
        assert np.allclose(voxel_to_voxel[:3, :3], np.eye(3)), path.name
        assert np.allclose(voxel_to_voxel[:3, 3], np.rint(voxel_to_voxel[:3, 3])), path.name


@pytest.mark.parametrize(
    "relative_path, tissue_order",
    [
        (f"{BRATS_CASE}/BraTS2021_00000_t1.nii.gz", ("wm", "gm", "csf")),
        (f"{BRATS_CASE}/BraTS2021_00000_t2.nii.gz", ("csf", "gm", "wm")),
        (f"{SYNTHRAD_CASE}/mr.nii.gz", ("wm", "gm", "csf")),
    ],
)
def test_tissue_contrast_order(cohort, template_maps, relative_path, tissue_order):
    image_array, image = load(cohort / relative_path)
    if relative_path.startswith("brats"):
        outside_lesion = load(cohort / BRATS_CASE / "BraTS2021_00000_seg.nii.gz")[0] == 0
    else:
        outside_lesion = np.ones(image.shape, dtype=bool)

    medians = {}
    for tissue in tissue_order:
        probability = on_output_grid(template_maps[tissue], template_maps["affine"], image)
        selected = (probability > 0.9) & outside_lesion
        assert selected.sum() > 5000, tissue
        medians[tissue] = float(np.median(image_array[selected]))

    brightest, middle, darkest = tissue_order
    assert medians[brightest] > medians[middle], medians
    assert medians[middle] > medians[darkest], medians


def test_ct_units_background_and_bone(cohort, template_maps):
    ct, image = load(cohort / SYNTHRAD_CASE / "ct.nii.gz")
    mask, _ = load(cohort / SYNTHRAD_CASE / "mask.nii.gz")

    assert ct.dtype == np.int16
    assert mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1}
    assert np.all(ct[mask == 0] == -1000)
    assert ct[0, 0, -1] == -1000

    bone = ct > 500
    assert bone.sum() > 100_000
    assert ct.max() > 1000

    # Bone lies around the brain: none of it is inside the template brain eroded by 6 mm,
    # which is more than the largest deformation.
    brain = on_output_grid(template_maps["brain"], template_maps["affine"], image) > 0.5
    deep_brain = ndimage.binary_erosion(brain, iterations=6)
    assert deep_brain.sum() > 500_000
    assert not np.any(bone & deep_brain)
    assert np.median(ct[deep_brain]) == pytest.approx(30, abs=15)


def test_mr_dark_bone_bright_fat(cohort):
    ct, _ = load(cohort / SYNTHRAD_CASE / "ct.nii.gz")
    mr, _ = load(cohort / SYNTHRAD_CASE / "mr.nii.gz")
    cortical_bone = ct > 1000
    fat = (ct < -60) & (ct > -150)
    white_matter_level = np.percentile(mr[ct > 0], 75)
    assert np.median(mr[cortical_bone]) < 0.5 * white_matter_level
    assert np.median(mr[fat]) > white_matter_level


def test_simpleitk_reads_same_grid(cohort):
    for path in (cohort / BRATS_CASE / "BraTS2021_00000_t2.nii.gz", cohort / SYNTHRAD_CASE / "mr.nii.gz"):
        nib_image = nib.load(str(path))
        itk_image = sitk.ReadImage(str(path))
        assert itk_image.GetSpacing() == pytest.approx((1.0, 1.0, 1.0)), path.name
        assert itk_image.GetSize() == nib_image.shape, path.name
        # ITK uses LPS world coordinates: x and y change sign against NIfTI's RAS.
        ras_origin = nib_image.affine[:3, 3]
        lps_origin = (-ras_origin[0], -ras_origin[1], ras_origin[2])
        assert itk_image.GetOrigin() == pytest.approx(lps_origin), path.name
        itk_array = sitk.GetArrayFromImage(itk_image)  # (z, y, x)
        assert np.array_equal(itk_array.transpose(2, 1, 0), np.asarray(nib_image.dataobj)), path.name


def test_record_and_licence(cohort):
    record = json.loads((cohort / "cohort.json").read_text())
    assert record["seed"] == 0
    assert record["n_subjects"] == 1
    assert record["generator_version"] == demo_cohort.GENERATOR_VERSION
    assert record["datasets"] == ["brats", "synthrad"]
    assert [s["case_id"] for s in record["subjects"]["brats"]] == ["BraTS2021_00000"]
    assert [s["case_id"] for s in record["subjects"]["synthrad"]] == ["1BA001"]
    assert "peak_displacement_mm" in record["subjects"]["synthrad"][0]

    licence = (cohort / "TEMPLATE_LICENSE.txt").read_text()
    assert "Louis Collins, McConnell Brain" in licence
    assert "Permission to use, copy, modify, and distribute" in licence
    assert "nilearn" in licence


def test_same_seed_identical_arrays(cohort, tmp_path):
    again = tmp_path / "again"
    generate_demo_cohort(again, seed=0, n_subjects=1, progress=False)
    for relative in sorted(EXPECTED_FILES):
        if not relative.endswith(".nii.gz"):
            continue
        first, first_image = load(cohort / relative)
        second, second_image = load(again / relative)
        assert first.dtype == second.dtype, relative
        assert first.tobytes() == second.tobytes(), relative
        assert np.array_equal(first_image.affine, second_image.affine), relative


def test_other_seed_differs_in_empty_folder(cohort, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    roots = generate_demo_cohort(other, seed=1, n_subjects=1, datasets=("brats",), progress=False)
    assert roots == {"brats": other / "brats"}
    assert not (other / "synthrad").exists()
    for name in ("t1", "seg"):
        first, _ = load(cohort / BRATS_CASE / f"BraTS2021_00000_{name}.nii.gz")
        second, _ = load(other / BRATS_CASE / f"BraTS2021_00000_{name}.nii.gz")
        assert not np.array_equal(first, second), name


def test_second_call_does_not_regenerate(cohort, caplog):
    t1_path = cohort / BRATS_CASE / "BraTS2021_00000_t1.nii.gz"
    before = os.stat(t1_path).st_mtime_ns
    with caplog.at_level(logging.INFO, logger=demo_cohort.__name__):
        roots = generate_demo_cohort(cohort, seed=0, n_subjects=1, progress=False)
    assert roots == {"brats": cohort / "brats", "synthrad": cohort / "synthrad"}
    assert os.stat(t1_path).st_mtime_ns == before
    assert "not regenerating" in caplog.text


def test_subset_of_existing_cohort_returned(cohort):
    roots = generate_demo_cohort(cohort, seed=0, n_subjects=1, datasets=("synthrad",), progress=False)
    assert roots == {"synthrad": cohort / "synthrad"}


def test_foreign_folder_raises(tmp_path):
    foreign = tmp_path / "my_scans"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a cohort")
    with pytest.raises(ValueError, match="choose an empty folder") as error:
        generate_demo_cohort(foreign, seed=0, n_subjects=1, progress=False)
    assert str(foreign) in str(error.value)
    assert relative_files(foreign) == {"notes.txt"}


def test_cohort_with_other_seed_raises(cohort):
    with pytest.raises(ValueError, match="seed 0") as error:
        generate_demo_cohort(cohort, seed=3, n_subjects=1, progress=False)
    assert str(cohort) in str(error.value)
    with pytest.raises(ValueError, match="choose an empty folder"):
        generate_demo_cohort(cohort, seed=0, n_subjects=2, progress=False)


def test_file_as_out_dir_raises(tmp_path):
    path = tmp_path / "cohort"
    path.write_text("")
    with pytest.raises(ValueError, match="is a file"):
        generate_demo_cohort(path, progress=False)


@pytest.mark.parametrize(
    "arguments",
    [
        {"seed": -1},
        {"seed": 1.5},
        {"seed": True},
        {"n_subjects": 0},
        {"n_subjects": 1000},
        {"datasets": ("mri",)},
        {"datasets": ()},
    ],
)
def test_invalid_arguments_raise(tmp_path, arguments):
    with pytest.raises(ValueError):
        generate_demo_cohort(tmp_path / "cohort", progress=False, **arguments)
    assert not (tmp_path / "cohort").exists()


def test_failure_leaves_no_partial_cohort(tmp_path, monkeypatch):
    def fail(root, template, seed, index):
        raise RuntimeError("simulated failure")

    monkeypatch.setitem(demo_cohort._WRITERS, "synthrad", fail)
    out_dir = tmp_path / "cohort"
    with pytest.raises(RuntimeError, match="simulated failure"):
        generate_demo_cohort(out_dir, n_subjects=1, datasets=("synthrad",), progress=False)
    assert list(tmp_path.iterdir()) == []
