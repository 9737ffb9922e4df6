"""The one near-copy yardstick: cosine similarity of features to the nearest training image, above a threshold.

Everything in cpsample that calls a sample a near-copy (the evaluation suite, the rejection-sampling detector,
calibration, SIDE, the conditional and Stable Diffusion samplers' reports, negatives) asks `find_near_copies`, and a
threshold left unset (None, also on the command line) resolves through `default_threshold` for its feature space,
so library and CLI defaults cannot drift apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from cpsample.evaluation.features import FeatureExtractor, make_feature_extractor
from cpsample.evaluation.inputs import ImagesLike, as_features
from cpsample.evaluation.neighbours import nearest_by_cosine
from cpsample.evaluation.replication import PAPER_THRESHOLDS

NEAR_COPY_THRESHOLDS = {
    # Measured on the bundled 16x16 MNIST model: 0.42% of 4,800 held-out real digits (look-alike 1s) and 1.5% of
    # held-out sklearn digits score above 0.98, while memorised samples score above 0.99 (docs/results.md,
    # bench/README.md).
    # Checked on the 32x32 RGB Twemoji pictures (issue 33), where it keeps its meaning: 0.5% of 826 pictures score
    # above 0.98 against 200 others taken as members (digits, same protocol: 0.6%), while copies with Gaussian noise
    # of std 0.05 score above it 97.7% of the time (std 0.1: 75.7%). Like on digits it counts only near-exact copies:
    # a copy shifted by one pixel (0.1%) or blurred (1.9%) falls below. Centred pixels of 16x16 downsampled pictures
    # would catch more of those (8%, 78%) at twice the false alarms (1.1%), and the emojinet embedding, a category
    # classifier's, calls 12.6% of distinct pictures copies; neither is better enough to give RGB another yardstick.
    "pixels": 0.98,
    # The CPSample paper's strictest "nearly identical" level with DINO features (CIFAR-10; CelebA 0.95, LSUN 0.90).
    "dino": PAPER_THRESHOLDS["cifar10"],
    # Somepalli et al. 2023: replication when the SSCD similarity exceeds 0.5 (SSCD is trained to score copies high).
    "sscd": 0.5,
}

FeaturesOrImages = ImagesLike  # images (N, C, H, W), or an (N, D) matrix already in the feature space


@dataclass
class NearCopies:
    """Each sample's nearest training item by cosine similarity, and whether it counts as a near-copy."""

    similarity: np.ndarray  # (N,) cosine similarity to the nearest training item
    nearest: np.ndarray  # (N,) that item's row in the training set
    threshold: float

    @property
    def copies(self) -> np.ndarray:
        """(N,) bool: similarity strictly above the threshold."""
        return self.similarity > self.threshold


def feature_space(features: str | FeatureExtractor) -> str:
    """'pixels', 'dino:PATH' or an extractor named 'dino(folder)' -> the space's key in NEAR_COPY_THRESHOLDS."""
    name = features if isinstance(features, str) else features.name
    return re.split(r"[:(]", name, maxsplit=1)[0]


def default_threshold(features: str | FeatureExtractor = "pixels") -> float:
    space = feature_space(features)
    if space not in NEAR_COPY_THRESHOLDS:
        raise ValueError(
            f"no default near-copy threshold for features {space!r} (known: "
            f"{', '.join(NEAR_COPY_THRESHOLDS)}); pass a threshold"
        )
    return NEAR_COPY_THRESHOLDS[space]


def resolve_threshold(threshold: float | None, features: str | FeatureExtractor = "pixels") -> float:
    """The given threshold, checked, or the feature space's default when it is None."""
    value = default_threshold(features) if threshold is None else float(threshold)
    if not -1.0 <= value <= 1.0:
        raise ValueError(f"a near-copy threshold is a cosine similarity in [-1, 1], got {value}")
    return value


def find_near_copies(
    samples: FeaturesOrImages,
    training: FeaturesOrImages,
    features: str | FeatureExtractor = "pixels",
    threshold: float | None = None,
    progress: bool = False,
) -> NearCopies:
    """Exact cosine nearest training item of each sample, and the near-copy mask (similarity > threshold).

    samples, training: images, turned into features by `features`, or (N, D) matrices already in that space.
    threshold: None takes the feature space's default (NEAR_COPY_THRESHOLDS).
    """
    limit = resolve_threshold(threshold, features)
    sample_features, training_features = _in_feature_space([samples, training], features)
    found = nearest_by_cosine(sample_features, training_features, k=1, progress=progress)
    return NearCopies(similarity=found.nearest_score, nearest=found.nearest_index, threshold=limit)


def _in_feature_space(sets: list[FeaturesOrImages], features: str | FeatureExtractor) -> list[np.ndarray]:
    """Feature matrices pass through; images go through the extractor (built once, only when needed)."""
    if all(_is_matrix(items) for items in sets):
        return [as_features(items) for items in sets]
    extractor = make_feature_extractor(features)
    return [as_features(items) if _is_matrix(items) else extractor(items) for items in sets]


def _is_matrix(items: FeaturesOrImages) -> bool:
    return getattr(items, "ndim", None) == 2
