"""Input checks shared by the evaluation suite: every public function accepts images in the same few forms."""

from __future__ import annotations

from typing import Union

import numpy as np
import torch

from cpsample.data import DataError, ImageSet

ImagesLike = Union[np.ndarray, torch.Tensor, ImageSet]


def as_images(images: ImagesLike, what: str = "images") -> np.ndarray:
    """Return float32 (N, C, H, W) images in [-1, 1]; refuse empty sets, wrong shapes and NaN with a clear message."""
    if isinstance(images, ImageSet):
        images = images.images
    if isinstance(images, torch.Tensor):
        images = images.detach().float().cpu().numpy()
    array = np.asarray(images, dtype=np.float32)
    if array.ndim != 4:
        raise DataError(f"{what}: expected images of shape (N, C, H, W), got shape {array.shape}")
    if len(array) == 0:
        raise DataError(f"{what}: the set is empty")
    if array.shape[1] not in (1, 3):
        raise DataError(f"{what}: expected 1 or 3 channels in (N, C, H, W), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise DataError(f"{what}: contains NaN or infinite values")
    return array


def as_features(features: np.ndarray | torch.Tensor, what: str = "features") -> np.ndarray:
    """Return a C-contiguous float32 (N, D) matrix; refuse empty, non-2-D and non-finite input."""
    if isinstance(features, torch.Tensor):
        features = features.detach().float().cpu().numpy()
    array = np.ascontiguousarray(features, dtype=np.float32)
    if array.ndim != 2:
        raise DataError(f"{what}: expected a (N, D) feature matrix, got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise DataError(f"{what}: the feature matrix is empty (shape {array.shape})")
    if not np.isfinite(array).all():
        raise DataError(f"{what}: contains NaN or infinite values")
    return array


def same_image_shape(a: np.ndarray, b: np.ndarray, what_a: str, what_b: str) -> None:
    """Pixel-space comparisons need images of one shape; say which sets differ (in channels: no resize helps)."""
    if a.shape[1] != b.shape[1]:
        kinds = {1: "grey (1 channel)", 3: "RGB (3 channels)"}
        raise DataError(
            f"{what_a} are {kinds.get(a.shape[1], a.shape[1])} but {what_b} are "
            f"{kinds.get(b.shape[1], b.shape[1])}; compare images of the same kind (the right --model?)"
        )
    if a.shape[1:] != b.shape[1:]:
        raise DataError(
            f"{what_a} have shape (C, H, W) = {a.shape[1:]} but {what_b} have {b.shape[1:]}; "
            "resize them to the same size first"
        )
