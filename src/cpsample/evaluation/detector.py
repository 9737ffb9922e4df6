"""A near-copy test usable while sampling (rejection sampling, calibration): the same yardstick as the report."""

from __future__ import annotations

import numpy as np

from cpsample.evaluation.features import FeatureExtractor, make_feature_extractor
from cpsample.evaluation.inputs import ImagesLike
from cpsample.evaluation.nearcopy import find_near_copies, resolve_threshold


class NearCopyDetector:
    """`find_near_copies` against fixed members, their features computed once; threshold None: the space's default."""

    def __init__(
        self, members: ImagesLike, threshold: float | None = None, features: str | FeatureExtractor = "pixels"
    ):
        self.extractor = make_feature_extractor(features)
        self.threshold = resolve_threshold(threshold, self.extractor)
        self.member_features = self.extractor(members)

    def similarity(self, images: ImagesLike) -> np.ndarray:
        return self._near_copies(images).similarity

    def __call__(self, images: ImagesLike) -> np.ndarray:
        return self._near_copies(images).copies

    def share(self, images: ImagesLike) -> float:
        return float(self(images).mean())

    def _near_copies(self, images: ImagesLike):
        return find_near_copies(self.extractor(images), self.member_features, self.extractor, self.threshold)
