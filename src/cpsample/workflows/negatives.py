"""Negatives for a selective CPSample classifier: images that are not members, trained towards p = 0.5.

Two sources, both available where the classifier is trained (the training images are there anyway; they are never
needed at sampling time):
- "samples": the denoiser's own plain samples whose nearest member is at most `max_similarity` away (its
  non-copies: the classifier should leave exactly these alone);
- a data spec (folder, .npz, 'mnist', ...): public images, e.g. the data a fine-tuned model was pretrained on.
"""

from __future__ import annotations

import numpy as np

from cpsample.data import load_dataset
from cpsample.evaluation.detector import NearCopyDetector
from cpsample.evaluation.nearcopy import default_threshold

SELF_SAMPLES = "samples"
# Negatives are taught "not a member", so they keep a margin below the near-copy line: a look-alike just under it
# would teach the classifier to leave near-copies alone. 0.98 - 0.03 = 0.95, the value bench/README.md reports.
NEGATIVES_MARGIN = 0.03
DEFAULT_MAX_SIMILARITY = round(default_threshold("pixels") - NEGATIVES_MARGIN, 6)


def load_negatives(
    source: str,
    members: np.ndarray,
    count: int,
    denoiser: str,
    image_size: int,
    seed: int = 0,
    max_similarity: float = DEFAULT_MAX_SIMILARITY,
    progress: bool = True,
) -> np.ndarray:
    """`count` negative images (N, C, H, W) in [-1, 1], none of them close to a member."""
    if count <= 0:
        raise ValueError(f"the number of negatives must be positive, got {count}")
    detector = NearCopyDetector(members, max_similarity)
    if source == SELF_SAMPLES:
        return _self_sample_negatives(denoiser, detector, count, seed, progress)
    images = load_dataset(source, image_size=image_size).images
    if images.shape[1:] != members.shape[1:]:
        raise ValueError(f"negatives from {source} are {images.shape[1:]} but the members are {members.shape[1:]}")
    kept = images[~detector(images)]  # drop public images that happen to be (near-)members
    order = np.random.default_rng(seed).permutation(len(kept))[:count]
    if len(order) < count:
        raise ValueError(
            f"{source}: only {len(order)} images are farther than {max_similarity} from every member; "
            f"asked for {count}"
        )
    return kept[order]


def _self_sample_negatives(
    denoiser: str, detector: NearCopyDetector, count: int, seed: int, progress: bool
) -> np.ndarray:
    """Sample the denoiser plainly (DDIM, 50 steps) until `count` samples are not near-copies."""
    from cpsample.sampling.pipeline import generate

    kept: list[np.ndarray] = []
    total, rounds = 0, 0
    while total < count:
        if rounds == 20:
            raise ValueError(
                f"{denoiser}: after 20 rounds only {total} of {count} samples were farther than "
                f"{detector.threshold} from every member; the model copies nearly always"
            )
        batch = generate(
            model=denoiser, n=max(count, 200), seed=seed + 7919 * (rounds + 1), progress=progress
        ).images.numpy()
        far = batch[~detector(batch)]
        kept.append(far)
        total += len(far)
        rounds += 1
    return np.concatenate(kept)[:count]
