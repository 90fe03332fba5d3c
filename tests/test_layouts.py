import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from symot_med.data.layouts import LayoutError, check_nifti, discover_cases, match_layout, named_modality, read_case
from symot_med.inference.translate import output_name


def truncate(path: Path, keep: float = 0.6) -> None:
    """Cut ``path`` to the first ``keep`` fraction of its bytes, as an interrupted download does."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize(
    "layout, case_id, modalities",
    [
        ("brats2020", "BraTS20_Training_001", ("t1", "t2")),
        ("brats2021", "BraTS2021_00000", ("t1", "t2")),
        ("brats2023", "BraTS-GLI-00000-000", ("t1", "t2")),
        ("synthrad2023", "1BA001", ("mr", "ct")),
    ],
)
def test_discovery_finds_layout(layout_tree, layout, case_id, modalities):
    root = layout_tree(layout)

    cases = discover_cases(root, modalities)

    assert [c.case_id for c in cases] == [case_id]
    assert cases[0].layout == layout
    assert set(modalities) <= set(cases[0].images)
    for modality in modalities:
        assert cases[0].images[modality].is_file()


def test_brats2023_names_map_to_canonical(layout_tree):
    case = discover_cases(layout_tree("brats2023"))[0]

    assert case.images["t1"].name == "BraTS-GLI-00000-000-t1n.nii.gz"
    assert case.images["t2"].name == "BraTS-GLI-00000-000-t2w.nii.gz"
    assert case.seg.name == "BraTS-GLI-00000-000-seg.nii.gz"


def test_synthrad_mask_found(layout_tree):
    case = discover_cases(layout_tree("synthrad2023"))[0]

    assert case.mask is not None
    assert case.mask.name == "mask.nii.gz"


def test_synthrad_found_from_task_folder_and_case_folder(layout_tree):
    root = layout_tree("synthrad2023")

    assert [c.case_id for c in discover_cases(root / "Task1")] == ["1BA001"]
    assert [c.case_id for c in discover_cases(root / "Task1" / "brain" / "1BA001")] == ["1BA001"]


def test_missing_modality_names_expected_file(layout_tree):
    root = layout_tree("brats2021")
    (root / "BraTS2021_00000" / "BraTS2021_00000_t2.nii.gz").unlink()

    with pytest.raises(LayoutError, match=r"BraTS2021_00000_t2\.nii\.gz"):
        discover_cases(root, ("t1", "t2"))


def test_non_nifti_file_rejected_with_its_name(layout_tree):
    root = layout_tree("synthrad2023")
    bad = root / "Task1" / "brain" / "1BA001" / "ct.nii.gz"
    bad.write_text("not an image")

    with pytest.raises(LayoutError, match="ct.nii.gz"):
        discover_cases(root, ("mr", "ct"))


def test_truncated_gzip_volume_rejected(layout_tree):
    root = layout_tree("brats2021")
    bad = root / "BraTS2021_00000" / "BraTS2021_00000_t2.nii.gz"
    truncate(bad)

    with pytest.raises(LayoutError, match="truncated") as error:
        discover_cases(root, ("t1", "t2"))

    assert str(bad) in str(error.value)
    assert "replace or remove the file" in str(error.value)


def test_truncated_uncompressed_volume_rejected(layout_tree):
    root = layout_tree("brats2020")
    bad = root / "BraTS20_Training_001" / "BraTS20_Training_001_t1.nii"
    truncate(bad, keep=0.9)

    with pytest.raises(LayoutError, match="truncated") as error:
        discover_cases(root, ("t1", "t2"))

    assert str(bad) in str(error.value)


def test_gzip_with_trailing_bytes_accepted(layout_tree):
    """A complete volume followed by extra bytes has a gzip trailer that differs from the header's length."""
    root = layout_tree("brats2021")
    path = root / "BraTS2021_00000" / "BraTS2021_00000_t1.nii.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()) + b"\0" * 16))

    check_nifti(path)


def test_corrupt_mask_rejected_up_front(layout_tree):
    root = layout_tree("synthrad2023")
    mask = root / "Task1" / "brain" / "1BA001" / "mask.nii.gz"
    truncate(mask)

    with pytest.raises(LayoutError, match="mask.nii.gz"):
        discover_cases(root, ("mr", "ct"))


def test_unchecked_discovery_skips_mask(layout_tree):
    root = layout_tree("synthrad2023")
    truncate(root / "Task1" / "brain" / "1BA001" / "mask.nii.gz")

    cases = discover_cases(root, ("mr", "ct"), check_files=False)

    assert cases[0].mask.name == "mask.nii.gz"


@pytest.mark.parametrize(
    "layout, modalities, held, suggestion",
    [
        ("synthrad2023", ("t1", "t2"), "mr and ct, not t1", "the ctmr pair (bundle symot_synthrad_ctmr)"),
        ("brats2021", ("ct", "mr"), "t1, t1ce, t2 and flair, not ct", "the t1t2 pair (bundle symot_brats_t1t2)"),
    ],
)
def test_modality_of_other_data_set_names_pair(layout_tree, layout, modalities, held, suggestion):
    root = layout_tree(layout)

    with pytest.raises(LayoutError) as error:
        discover_cases(root, modalities)

    message = str(error.value)
    assert held in message
    assert suggestion in message
    assert "expected" not in message


def test_unknown_folder_lists_expected_layouts(tmp_path):
    (tmp_path / "patient_a").mkdir()

    with pytest.raises(LayoutError, match="expected one of: BraTS 2020"):
        discover_cases(tmp_path)


def test_missing_root_rejected(tmp_path):
    with pytest.raises(LayoutError, match="does not exist"):
        discover_cases(tmp_path / "nowhere")


def test_mixed_layouts_rejected(layout_tree):
    layout_tree("brats2021", root_name="mixed")
    root = layout_tree("brats2023", root_name="mixed")

    with pytest.raises(LayoutError, match="mixes layouts"):
        discover_cases(root)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("BraTS20_Training_001", "brats2020"),
        ("BraTS20_Validation_012", "brats2020"),
        ("BraTS2021_01666", "brats2021"),
        ("BraTS-MEN-00004-000", "brats2023"),
        ("1BC042", "synthrad2023"),
        ("1PA001", None),
        ("BraTS2021_0001", None),
    ],
)
def test_case_folder_patterns(name, expected):
    spec = match_layout(name)
    assert (spec.name if spec else None) == expected


def test_read_case_rejects_other_folder(tmp_path):
    with pytest.raises(LayoutError, match="not a case folder"):
        read_case(tmp_path / "something")


@pytest.mark.parametrize(
    "name, expected",
    [
        ("BraTS20_Training_001_t1.nii", "t1"),
        ("BraTS2021_00000_t1ce.nii.gz", "t1ce"),
        ("subject01_t2.nii.gz", "t2"),
        ("subject01_T2.nii.gz", "t2"),
        ("BraTS-GLI-00000-000-t2w.nii.gz", "t2"),
        ("BraTS-GLI-00000-000-t2f.nii.gz", "flair"),
        ("mr.nii.gz", "mr"),
        ("ct.nii", "ct"),
        ("t1.nii.gz", None),  # nothing before the suffix, so no case id
        ("my_ct.nii.gz", None),  # SynthRAD names its files mr and ct, without a case id
        ("brain.nii.gz", None),
    ],
)
def test_named_modality(name, expected):
    assert named_modality(name) == expected


def test_check_nifti_missing_file_hint(tmp_path):
    with pytest.raises(LayoutError, match="mask.nii.gz not found; pass a mask"):
        check_nifti(tmp_path / "mask.nii.gz", "pass a mask")


def test_check_nifti_rejects_complex_voxels(tmp_path):
    path = tmp_path / "complex_t1.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), dtype=np.complex64), np.eye(4)), str(path))

    with pytest.raises(LayoutError, match="complex64 voxels; expected real integer or float intensities"):
        check_nifti(path)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("in/BraTS2021_00001/BraTS2021_00001_t1.nii.gz", "BraTS2021_00001_t1_to_t2.nii.gz"),
        ("in/1BA001/mr.nii.gz", "1BA001_t1_to_t2.nii.gz"),
        ("flat/scan_t1.nii.gz", "scan_t1_to_t2.nii.gz"),
        ("flat/scan_T1.nii", "scan_t1_to_t2.nii.gz"),
        ("flat/scan.nii.gz", "scan_t1_to_t2.nii.gz"),
        ("flat/_t1.nii.gz", "_t1_t1_to_t2.nii.gz"),
        ("flat/scan_t2.nii.gz", "scan_t2_t1_to_t2.nii.gz"),
    ],
)
def test_output_name_of_input(path, expected):
    assert output_name(Path(path), "t1", "t2") == expected
