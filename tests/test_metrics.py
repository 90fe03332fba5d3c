"""Masked SSIM and PSNR against skimage and closed forms."""

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from symot_med.evaluation.metrics import masked_psnr, masked_ssim, normalise_for_metrics, score_volume


@pytest.fixture
def volumes():
    rng = np.random.default_rng(0)
    truth = rng.uniform(0, 1, size=(24, 26, 22))
    prediction = np.clip(truth + rng.normal(0, 0.1, size=truth.shape), 0, 1)
    return truth, prediction


def test_ssim_full_mask_matches_skimage(volumes):
    truth, prediction = volumes
    mask = np.zeros(truth.shape, dtype=bool)
    mask[3:-3, 3:-3, 3:-3] = True  # skimage's mean drops a 3-voxel border for a 7-voxel window

    expected = structural_similarity(truth, prediction, data_range=1.0, win_size=7)

    assert masked_ssim(truth, prediction, mask, data_range=1.0) == pytest.approx(expected, abs=1e-10)


def test_ssim_of_identical_volumes_is_one(volumes):
    truth, _ = volumes
    mask = truth > 0.3

    assert masked_ssim(truth, truth, mask, data_range=1.0) == pytest.approx(1.0)


def test_psnr_full_mask_matches_skimage(volumes):
    truth, prediction = volumes
    mask = np.ones(truth.shape, dtype=bool)

    expected = peak_signal_noise_ratio(truth, prediction, data_range=1.0)

    assert masked_psnr(truth, prediction, mask, data_range=1.0) == pytest.approx(expected)


def test_psnr_of_constant_offset():
    truth = np.zeros((8, 8, 8))
    prediction = truth + 0.1
    mask = np.ones(truth.shape, dtype=bool)

    assert masked_psnr(truth, prediction, mask, data_range=1.0) == pytest.approx(20.0)


def test_psnr_identical_is_infinite(volumes):
    truth, _ = volumes
    assert masked_psnr(truth, truth, np.ones(truth.shape, bool), data_range=1.0) == float("inf")


def test_psnr_ignores_voxels_outside_mask():
    truth = np.zeros((8, 8, 8))
    prediction = truth.copy()
    prediction[0] = 5.0
    mask = np.zeros(truth.shape, dtype=bool)
    mask[2:] = True
    prediction[2:] += 0.1

    assert masked_psnr(truth, prediction, mask, data_range=1.0) == pytest.approx(20.0)


@pytest.mark.parametrize(
    "truth_shape, prediction_shape, message",
    [((4, 4, 4), (4, 4, 5), "prediction shape"), ((4, 4, 4), (4, 4, 4), "data_range")],
)
def test_metric_input_errors(truth_shape, prediction_shape, message):
    truth = np.zeros(truth_shape)
    prediction = np.zeros(prediction_shape)
    mask = np.ones(truth_shape, dtype=bool)

    with pytest.raises(ValueError, match=message):
        masked_psnr(truth, prediction, mask, data_range=0.0)


def test_nan_rejected(volumes):
    truth, prediction = volumes
    prediction = prediction.copy()
    prediction[0, 0, 0] = np.nan

    with pytest.raises(ValueError, match="prediction contains NaN"):
        masked_ssim(truth, prediction, np.ones(truth.shape, bool), data_range=1.0)


def test_ct_normalisation_window():
    hu = np.array([-2000.0, -1024.0, 0.0, 3000.0, 4000.0]).reshape(5, 1, 1)
    mask = np.ones(hu.shape, dtype=bool)

    np.testing.assert_allclose(normalise_for_metrics(hu, "ct", mask).ravel(), [0, 0, 1024 / 4024, 1, 1], atol=1e-6)


def test_score_identity_baseline_uses_each_modality_scale():
    rng = np.random.default_rng(1)
    mr = rng.uniform(0, 1, size=(16, 16, 16)).astype(np.float32)
    mask = np.ones(mr.shape, dtype=bool)
    ct = (mr * 4024 - 1024).astype(np.float32)  # same image on the CT scale

    scores = score_volume(ct, mr * 700.0, mask, "ct", "mr")

    assert scores["ssim"] > 0.99
