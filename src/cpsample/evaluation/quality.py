"""Sample quality: Frechet distance between Gaussian fits of two feature sets, and class agreement.

FD = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)). With Inception features this is FID; with any other
network it is a different number on a different scale, so results name the network: "FD_digitnet", never "FID".
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from scipy import linalg

from cpsample.evaluation.inputs import ImagesLike, as_features, as_images


def gaussian_fit(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of (N, D) features, in float64 for a stable matrix square root."""
    values = as_features(features).astype(np.float64)
    if len(values) < 2:
        raise ValueError("a covariance needs at least 2 feature vectors")
    return values.mean(axis=0), np.cov(values, rowvar=False).reshape(values.shape[1], values.shape[1])


def frechet_distance_from_fits(
    mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray, eps: float = 1e-6
) -> float:
    """Frechet distance of two Gaussians, with scipy.linalg.sqrtm and the usual safeguards.

    Small sample sets give singular covariances, for which sqrtm can fail or return a complex result; like
    pytorch-fid we then add eps to the diagonals, drop an imaginary part that is only rounding noise, and
    otherwise take the trace from the eigenvalues of the product.
    """
    mu_a, mu_b = np.atleast_1d(mu_a), np.atleast_1d(mu_b)
    cov_a, cov_b = np.atleast_2d(cov_a), np.atleast_2d(cov_b)
    if mu_a.shape != mu_b.shape or cov_a.shape != cov_b.shape:
        raise ValueError(f"feature dimensions differ: {mu_a.shape} vs {mu_b.shape}")
    mean_term = float(np.sum((mu_a - mu_b) ** 2))
    root = _sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():
        offset = np.eye(len(cov_a)) * eps
        root = _sqrtm((cov_a + offset) @ (cov_b + offset), strict=False)
    if not np.isfinite(root).all():
        raise ValueError("the covariance product has no finite square root; check the features for degenerate values")
    trace_root = float(np.trace(root).real)
    if np.iscomplexobj(root) and np.abs(np.diagonal(root).imag).max() > 1e-3:
        # Not rounding noise: fall back on tr sqrt(A B) = sum sqrt(eig(A B)), whose eigenvalues are real and >= 0
        # in exact arithmetic (A B is similar to the PSD matrix A^1/2 B A^1/2).
        eigenvalues = np.linalg.eigvals(cov_a @ cov_b).real
        trace_root = float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())
    distance = mean_term + float(np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_root)
    return max(distance, 0.0)  # rounding can push a true 0 slightly below


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Frechet distance between Gaussian fits of two (N, D) feature sets."""
    return frechet_distance_from_fits(*gaussian_fit(features_a), *gaussian_fit(features_b))


def _sqrtm(matrix: np.ndarray, strict: bool = True) -> np.ndarray:
    """scipy's sqrtm; when strict, 'singular matrix' becomes NaN so the caller retries with a regularised product."""
    with warnings.catch_warnings():
        warnings.simplefilter("error" if strict else "ignore", linalg.LinAlgWarning)
        try:
            root = linalg.sqrtm(matrix)
        except (ValueError, np.linalg.LinAlgError, linalg.LinAlgWarning):
            return np.full_like(matrix, np.nan)
    return root[0] if isinstance(root, tuple) else root  # older scipy returned (root, error) with disp=False


class MissingOptionalPackage(ImportError, ValueError):
    """An optional package is not installed; a ValueError too, so the CLI prints one line instead of a traceback."""


def frechet_distance_in(net, images_a: ImagesLike, images_b: ImagesLike) -> dict:
    """FD between two image sets in a feature network's space, named after the network (e.g. FD_digitnet)."""
    value = frechet_distance(net(images_a), net(images_b))
    return {
        "metric": f"FD_{net.name}",
        "value": value,
        "n_a": len(as_images(images_a)),
        "n_b": len(as_images(images_b)),
    }


def inception_fid(real: ImagesLike, generated: ImagesLike, weights: str | Path, batch_size: int = 64) -> dict:
    """Real FID with Inception-v3 weights from a local file, through torchmetrics + torch-fidelity if installed.

    Nothing downloads: without both packages or without the weights file this raises a message saying what to pass.
    """
    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(
            f"{weights}: Inception weights not found; pass the local path of the FID Inception "
            "weights (pt_inception-2015-12-05-6726825d.pth)"
        )
    try:
        import torch
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError as error:
        raise MissingOptionalPackage(
            "FID needs torchmetrics and torch-fidelity (pip install torchmetrics torch-fidelity); "
            "without them use the offline FD_digitnet / FD_emojinet"
        ) from error
    metric = FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=str(weights))
    for images, is_real in ((as_images(real, "real images"), True), (as_images(generated, "generated images"), False)):
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy((images[start : start + batch_size] + 1.0) / 2.0)
            metric.update(batch.expand(-1, 3, -1, -1) if batch.shape[1] == 1 else batch, real=is_real)
    return {"metric": "FID", "value": float(metric.compute())}


def class_agreement(net, images: ImagesLike, intended: np.ndarray) -> dict:
    """How often the feature net's predicted class equals the class a class-conditional sample was asked for."""
    from cpsample.evaluation.replication import clopper_pearson

    intended = np.asarray(intended).reshape(-1)
    predicted = net.predict(images)
    if len(predicted) != len(intended):
        raise ValueError(f"{len(intended)} intended labels for {len(predicted)} images")
    hits = int((predicted == intended).sum())
    low, high = clopper_pearson(hits, len(intended))
    return {"agreement": hits / len(intended), "count": hits, "n": len(intended), "ci_low": low, "ci_high": high}


def class_histogram(net, images: ImagesLike) -> list[int]:
    """Predicted-class counts: a collapsed sampler shows up as a few classes taking most samples."""
    predicted = net.predict(images)
    return np.bincount(predicted, minlength=net.num_classes).tolist()
