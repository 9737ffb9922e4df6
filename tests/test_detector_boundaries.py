"""The near-copy detector used while sampling (rejection sampling, calibration) at its boundaries: the threshold it is
given or its feature space's default, "strictly above", and the similarities it reports. Hand-made images whose cosine
similarity to their nearest member is known."""

from __future__ import annotations

import numpy as np
import pytest

from cpsample.evaluation import NEAR_COPY_THRESHOLDS, NearCopyDetector, PixelFeatures


def _unit_centred(vector: np.ndarray) -> np.ndarray:
    vector = vector - vector.mean()
    return vector / np.linalg.norm(vector)


def _members_and_blends(cosines=(0.999, 0.95, 0.7, 0.3)):
    """8 random members (1 x 4 x 4) and, per cosine c, an image whose mean-centred pixels have cosine c with member 0's
    (member 0 plus a centred direction orthogonal to it) and less with every other member."""
    rng = np.random.default_rng(0)
    members = rng.uniform(-0.5, 0.5, size=(8, 1, 4, 4)).astype(np.float32)
    base = _unit_centred(members[0].ravel().astype(np.float64))
    other = _unit_centred(rng.normal(size=16))
    other = _unit_centred(other - (other @ base) * base)  # centred, orthogonal to member 0
    blends = np.stack([0.2 * (c * base + np.sqrt(1 - c * c) * other) for c in cosines]).reshape(-1, 1, 4, 4)
    return members, blends.astype(np.float32), np.array(cosines)


def test_similarity_is_the_cosine_to_the_nearest_member():
    members, blends, cosines = _members_and_blends()
    detector = NearCopyDetector(members, threshold=0.5)
    assert np.allclose(detector.similarity(members), 1.0, atol=1e-5)
    blend_similarity = detector.similarity(blends)
    assert np.allclose(blend_similarity[:3], cosines[:3], atol=1e-5)  # member 0 is their nearest
    assert blend_similarity[3] >= cosines[3] - 1e-6  # another member may be nearer than a cosine of 0.3


def test_the_detector_counts_with_the_threshold_it_was_given():
    members, blends, _ = _members_and_blends()
    assert NearCopyDetector(members).threshold == NEAR_COPY_THRESHOLDS["pixels"] == 0.98
    assert NearCopyDetector(members)(blends).tolist() == [True, False, False, False]
    loose = NearCopyDetector(members, threshold=0.6)
    assert loose.threshold == 0.6
    assert loose(blends).tolist() == [True, True, True, False]
    assert loose.share(blends) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="cosine similarity in"):
        NearCopyDetector(members, threshold=1.5)


def test_a_copy_is_strictly_above_the_threshold():
    members, blends, _ = _members_and_blends()
    at = float(NearCopyDetector(members).similarity(blends[1:2])[0])
    assert not NearCopyDetector(members, threshold=at)(blends[1:2])[0]
    assert NearCopyDetector(members, threshold=np.nextafter(at, -1.0, dtype=np.float32))(blends[1:2])[0]


class _NamedPixels(PixelFeatures):
    """Pixel features under another space's name: the detector must take that space's default threshold."""

    def __init__(self, name: str):
        self.name = name


def test_an_extractor_brings_its_feature_space_default():
    members, blends, _ = _members_and_blends()
    sscd = NearCopyDetector(members, features=_NamedPixels("sscd(stub)"))
    assert sscd.threshold == NEAR_COPY_THRESHOLDS["sscd"] == 0.5
    assert sscd(blends[:3]).tolist() == [True, True, True]  # cosines 0.999, 0.95 and 0.7 to member 0
    dino = NearCopyDetector(members, features=_NamedPixels("dino(stub)"))
    assert dino.threshold == NEAR_COPY_THRESHOLDS["dino"]
    assert dino(blends[:3]).tolist() == [True, False, False]
    assert NearCopyDetector(members, threshold=0.9, features=_NamedPixels("sscd(stub)")).threshold == 0.9


def test_the_yardstick_counts_with_the_threshold_and_feature_space_it_is_given():
    """find_near_copies: a threshold given is the one used; left out, the feature space's default, also when the
    inputs are feature matrices already (a weights path is then never opened)."""
    from cpsample.evaluation import find_near_copies

    members, blends, cosines = _members_and_blends()
    found = find_near_copies(blends[:3], members, threshold=0.6)
    assert found.threshold == 0.6 and found.copies.tolist() == [True, True, True]
    assert np.allclose(found.similarity, cosines[:3], atol=1e-5) and found.nearest.tolist() == [0, 0, 0]
    features, member_features = PixelFeatures()(blends[:3]), PixelFeatures()(members)
    in_sscd = find_near_copies(features, member_features, features="sscd:/no/such/weights.pt")
    assert in_sscd.threshold == 0.5 and in_sscd.copies.tolist() == [True, True, True]
    assert find_near_copies(features, member_features).copies.tolist() == [True, False, False]


def test_images_and_features_mix_and_a_single_member_is_a_reference_set():
    from cpsample.data.images import ImageSet
    from cpsample.evaluation import find_near_copies

    members, blends, _ = _members_and_blends()
    both_images = find_near_copies(blends, members, threshold=0.6)
    member_features = PixelFeatures()(members)
    for samples, training in [
        (blends, member_features),
        (PixelFeatures()(blends), members),
        (ImageSet(blends, [f"b{i}" for i in range(len(blends))]), members),
    ]:
        mixed = find_near_copies(samples, training, threshold=0.6)
        assert np.allclose(mixed.similarity, both_images.similarity, atol=1e-6)
        assert np.array_equal(mixed.copies, both_images.copies)
    alone = find_near_copies(blends[:2], members[:1], threshold=0.9)  # one private image
    assert alone.nearest.tolist() == [0, 0] and alone.copies.tolist() == [True, True]


def test_thresholds_are_cosines_in_minus_one_to_one_ends_included():
    from cpsample.evaluation import default_threshold, resolve_threshold

    assert resolve_threshold(None) == default_threshold() == NEAR_COPY_THRESHOLDS["pixels"]  # pixels by default
    assert resolve_threshold(-1.0) == -1.0 and resolve_threshold(1.0) == 1.0
    for outside in (-1.5, 1.01):
        with pytest.raises(ValueError, match="cosine similarity in"):
            resolve_threshold(outside)
    with pytest.raises(ValueError, match=r"features 'clip' \(known: pixels, dino, sscd\)"):
        default_threshold("clip:/weights")


def test_the_interval_of_a_share_is_exact_and_its_inputs_checked():
    from cpsample.evaluation.replication import clopper_pearson

    assert clopper_pearson(0, 1) == (0.0, pytest.approx(0.975))  # one trial: 1 - 0.025 ** (1 / 1)
    low, high = clopper_pearson(5, 20)
    narrow_low, narrow_high = clopper_pearson(5, 20, confidence=0.5)
    assert low < narrow_low < 0.25 < narrow_high < high
    assert (low, high) == pytest.approx((0.0866, 0.4910), abs=1e-4)
    with pytest.raises(ValueError, match="^a share needs at least one trial"):
        clopper_pearson(0, 0)
    with pytest.raises(ValueError, match=r"^count must lie in \[0, n\], got 4 of 3"):
        clopper_pearson(4, 3)
