"""Image metrics against skimage and hand-built volumes with known values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from symot_med.evaluation.metrics import (
    check_data_range,
    masked_mae,
    masked_psnr,
    masked_ssim,
    masked_ssim_2d,
    score_translation,
    ssim_map,
    synthrad_mae,
    synthrad_psnr,
    synthrad_ssim,
)


@pytest.fixture
def noisy_pair():
    rng = np.random.default_rng(0)
    truth = rng.uniform(0, 1, size=(20, 22, 18))
    prediction = np.clip(truth + rng.normal(0, 0.1, size=truth.shape), 0, 1)
    return truth, prediction


@pytest.fixture
def head_ct():
    """A 24^3 CT in HU: air outside a ball of soft tissue (40 HU) with a bone shell (1200 HU)."""
    grid = np.stack(np.meshgrid(*[np.arange(24) - 11.5] * 3, indexing="ij"))
    radius = np.sqrt((grid**2).sum(axis=0))
    ct = np.full(radius.shape, -1000.0)
    ct[radius < 10] = 1200.0
    ct[radius < 8] = 40.0
    ct += np.random.default_rng(1).normal(0, 20, size=ct.shape)
    mask = radius < 10
    return ct, mask


# --- SSIM against skimage -------------------------------------------------------------------


def test_ssim_map_3d_matches_skimage(noisy_pair):
    truth, prediction = noisy_pair

    _, expected = structural_similarity(truth, prediction, data_range=1.0, win_size=7, full=True)

    np.testing.assert_allclose(ssim_map(truth, prediction, data_range=1.0), expected, atol=1e-12)


def test_ssim_map_2d_matches_skimage_per_slice(noisy_pair):
    truth, prediction = noisy_pair

    ours = ssim_map(truth, prediction, data_range=1.0, axes=(0, 1))

    for k in (0, 7, 17):
        _, expected = structural_similarity(truth[:, :, k], prediction[:, :, k], data_range=1.0, full=True)
        np.testing.assert_allclose(ours[:, :, k], expected, atol=1e-12)


def test_masked_ssim_with_cropped_mask_matches_skimage_mean(noisy_pair):
    truth, prediction = noisy_pair
    mask = np.zeros(truth.shape, dtype=bool)
    mask[3:-3, 3:-3, 3:-3] = True  # skimage's mean drops a 3-voxel border for a 7-voxel window

    expected = structural_similarity(truth, prediction, data_range=1.0, win_size=7)

    assert masked_ssim(truth, prediction, mask, data_range=1.0) == pytest.approx(expected, abs=1e-12)


def test_masked_ssim_2d_is_mean_of_slice_ssims(noisy_pair):
    truth, prediction = noisy_pair
    mask = np.zeros(truth.shape, dtype=bool)
    mask[3:-3, 3:-3, 5:9] = True

    expected = np.mean(
        [structural_similarity(truth[:, :, k], prediction[:, :, k], data_range=1.0) for k in range(5, 9)]
    )

    assert masked_ssim_2d(truth, prediction, mask, data_range=1.0) == pytest.approx(expected, abs=1e-12)


def test_psnr_full_mask_matches_skimage(noisy_pair):
    truth, prediction = noisy_pair

    expected = peak_signal_noise_ratio(truth, prediction, data_range=1.0)

    assert masked_psnr(truth, prediction, np.ones(truth.shape, bool), data_range=1.0) == pytest.approx(expected)


def test_ssim_of_constants_has_closed_form():
    truth = np.full((9, 9, 9), 0.6)
    prediction = np.full((9, 9, 9), 0.3)
    c1 = (0.01 * 1.0) ** 2

    expected = (2 * 0.6 * 0.3 + c1) / (0.6**2 + 0.3**2 + c1)  # variances are 0, so the contrast term is 1

    assert masked_ssim(truth, prediction, np.ones(truth.shape, bool), data_range=1.0) == pytest.approx(expected)


# --- SynthRAD2023 metrics on hand-built volumes --------------------------------------------------


def test_synthrad_mae_of_constant_offset_is_offset(head_ct):
    ct, mask = head_ct

    assert synthrad_mae(ct, ct + 37.5, mask) == pytest.approx(37.5)


def test_synthrad_mae_does_not_clip(head_ct):
    ct, mask = head_ct
    prediction = ct.copy()
    prediction[mask] = 5000.0  # beyond the 3000 HU clip of PSNR and SSIM

    assert synthrad_mae(ct, prediction, mask) == pytest.approx(np.mean(5000.0 - ct[mask]))


def test_synthrad_psnr_of_constant_offset(head_ct):
    ct, mask = head_ct
    offset = 40.24

    expected = 10 * math.log10(4024.0**2 / offset**2)  # 40 dB

    assert synthrad_psnr(ct, ct + offset, mask) == pytest.approx(expected)


def test_synthrad_psnr_clips_to_hu_window():
    truth = np.full((8, 8, 8), 3000.0)
    prediction = np.full((8, 8, 8), 4000.0)  # clipped to 3000, so identical after clipping
    mask = np.ones(truth.shape, dtype=bool)

    assert synthrad_psnr(truth, prediction, mask) == float("inf")


def test_synthrad_identical_volumes(head_ct):
    ct, mask = head_ct

    assert synthrad_ssim(ct, ct, mask) == pytest.approx(1.0)
    assert synthrad_psnr(ct, ct, mask) == float("inf")
    assert synthrad_mae(ct, ct, mask) == 0.0


def test_synthrad_ignores_values_outside_mask(head_ct):
    ct, mask = head_ct
    prediction = ct.copy()
    prediction[~mask] = 2500.0

    assert synthrad_ssim(ct, prediction, mask) == pytest.approx(1.0)
    assert synthrad_psnr(ct, prediction, mask) == float("inf")


def test_synthrad_ssim_follows_challenge_recipe(head_ct):
    ct, mask = head_ct
    prediction = ct + np.random.default_rng(2).normal(0, 100, size=ct.shape)

    # The challenge's steps, with skimage's SSIM map as the independent reference.
    truth_shifted = np.where(mask, np.clip(ct, -1024, 3000), -1024) + 1024
    prediction_shifted = np.where(mask, np.clip(prediction, -1024, 3000), -1024) + 1024
    _, full_map = structural_similarity(truth_shifted, prediction_shifted, data_range=4024.0, full=True)
    expected = full_map[3:-3, 3:-3, 3:-3][mask[3:-3, 3:-3, 3:-3]].mean()

    assert synthrad_ssim(ct, prediction, mask) == pytest.approx(expected, abs=1e-12)


def test_synthrad_ssim_small_mask_matches_recipe():
    grid = np.stack(np.meshgrid(*[np.arange(40) - 14.5] * 3, indexing="ij"))
    mask = np.sqrt((grid**2).sum(axis=0)) < 6  # far from the faces, so the map is computed on a crop
    rng = np.random.default_rng(5)
    ct = np.where(mask, 40.0, -1000.0) + rng.normal(0, 30, size=mask.shape)
    prediction = ct + rng.normal(0, 80, size=mask.shape)

    truth_shifted = np.where(mask, np.clip(ct, -1024, 3000), -1024) + 1024
    prediction_shifted = np.where(mask, np.clip(prediction, -1024, 3000), -1024) + 1024
    _, full_map = structural_similarity(truth_shifted, prediction_shifted, data_range=4024.0, full=True)
    expected = full_map[3:-3, 3:-3, 3:-3][mask[3:-3, 3:-3, 3:-3]].mean()

    assert synthrad_ssim(ct, prediction, mask) == pytest.approx(expected, abs=1e-12)


def test_synthrad_ssim_of_constant_volumes_has_closed_form():
    truth = np.full((12, 12, 12), 976.0)  # 2000 after the +1024 shift
    prediction = np.full((12, 12, 12), -24.0)  # 1000 after the shift
    mask = np.ones(truth.shape, dtype=bool)
    c1 = (0.01 * 4024.0) ** 2

    expected = (2 * 2000.0 * 1000.0 + c1) / (2000.0**2 + 1000.0**2 + c1)

    assert synthrad_ssim(truth, prediction, mask) == pytest.approx(expected)


# --- Scores of a translated volume --------------------------------------------------------------


def test_score_translation_ct_uses_synthrad(head_ct):
    ct, mask = head_ct

    scores = score_translation(ct, ct + 10.0, mask, "ct")

    assert set(scores) == {"ssim_2d", "ssim_3d", "psnr", "mae_hu"}
    assert scores["mae_hu"] == pytest.approx(10.0)
    assert scores["psnr"] == pytest.approx(10 * math.log10(4024.0**2 / 100.0))


def test_score_translation_mr_is_normalised():
    rng = np.random.default_rng(3)
    mr = rng.uniform(100, 900, size=(16, 16, 16))
    mask = np.ones(mr.shape, dtype=bool)

    scores = score_translation(mr, mr * 3.0, mask, "t2")  # a scale change is undone by the normalisation

    assert set(scores) == {"ssim_2d", "ssim_3d", "psnr"}
    assert scores["ssim_3d"] == pytest.approx(1.0)
    assert scores["psnr"] > 100.0  # float32 rounding of the normalisation only


# --- Input errors name the argument and the value -------------------------------------------------

VOLUME = np.zeros((8, 8, 8))
MASK = np.ones((8, 8, 8), dtype=bool)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: masked_psnr(VOLUME, np.zeros((8, 8, 9)), MASK, data_range=1.0), r"prediction shape \(8, 8, 9\) differs"),
        (lambda: masked_ssim(VOLUME, VOLUME, np.ones((8, 8, 9), bool), data_range=1.0), r"mask shape \(8, 8, 9\) differs"),
        (lambda: synthrad_mae(VOLUME, np.zeros((7, 8, 8)), MASK), r"prediction shape \(7, 8, 8\)"),
        (lambda: masked_mae(VOLUME, VOLUME, np.zeros((8, 8, 8), bool)), "mask of shape .* is empty"),
    ],
    ids=["psnr-shape", "ssim-mask-shape", "mae-shape", "empty-mask"],
)
def test_metrics_reject_mismatched_inputs(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("function", [masked_ssim, masked_ssim_2d, masked_psnr], ids=["ssim", "ssim_2d", "psnr"])
def test_metrics_reject_nan_naming_argument(function):
    prediction = VOLUME.copy()
    prediction[1, 2, 3] = np.nan

    with pytest.raises(ValueError, match=r"prediction contains NaN .*index \(1, 2, 3\), value nan"):
        function(VOLUME, prediction, MASK, data_range=1.0)


def test_synthrad_rejects_nan_ground_truth():
    truth = VOLUME.copy()
    truth[0, 0, 0] = np.inf

    with pytest.raises(ValueError, match=r"ground_truth contains NaN or infinite .*value inf"):
        synthrad_psnr(truth, VOLUME, MASK)


@pytest.mark.parametrize("function", [masked_ssim, masked_ssim_2d, masked_psnr], ids=["ssim", "ssim_2d", "psnr"])
@pytest.mark.parametrize("data_range, message", [(None, "data_range is None"), (0.0, "got 0.0"), (float("nan"), "got nan"), ("wide", "got 'wide'")])
def test_metrics_reject_missing_data_range(function, data_range, message):
    with pytest.raises(ValueError, match=message):
        function(VOLUME, VOLUME, MASK, data_range=data_range)


def test_data_range_is_required_argument():
    with pytest.raises(TypeError, match="data_range"):
        masked_psnr(VOLUME, VOLUME, MASK)  # type: ignore[call-arg]


def test_check_data_range_accepts_positive():
    assert check_data_range(4024) == 4024.0
