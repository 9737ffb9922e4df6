"""A near-copy test usable while sampling (rejection sampling, calibration): the same criterion as the report."""

from __future__ import annotations

import numpy as np

from cpsample.evaluation.features import FeatureExtractor, make_feature_extractor
from cpsample.evaluation.inputs import ImagesLike
from cpsample.evaluation.neighbours import nearest_by_cosine

# Pixel-space default for the bundled 16x16 MNIST model: 0.98 keeps the false-alarm rate on held-out real digits
# (fresh images that merely look alike) under 1%, while a memorised sample scores above 0.99.
MNIST16_PIXEL_THRESHOLD = 0.98


class NearCopyDetector:
    """Flags images whose features' cosine similarity to the nearest training image exceeds `threshold`."""

    def __init__(self, members: ImagesLike, threshold: float = MNIST16_PIXEL_THRESHOLD,
                 features: str | FeatureExtractor = "pixels"):
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"a cosine threshold lies in [-1, 1], got {threshold}")
        self.extractor = make_feature_extractor(features)
        self.member_features = self.extractor(members)
        self.threshold = threshold

    def similarity(self, images: ImagesLike) -> np.ndarray:
        return nearest_by_cosine(self.extractor(images), self.member_features, progress=False).nearest_score

    def __call__(self, images: ImagesLike) -> np.ndarray:
        return self.similarity(images) > self.threshold

    def share(self, images: ImagesLike) -> float:
        return float(self(images).mean())
