"""The one near-copy yardstick: right against brute force on real digits, and the default of every caller."""

from __future__ import annotations

import numpy as np
import pytest
import typer

from cpsample.evaluation import (
    NEAR_COPY_THRESHOLDS,
    NearCopyDetector,
    PixelFeatures,
    default_threshold,
    evaluate,
    feature_space,
    find_near_copies,
    resolve_threshold,
)

PIXELS = NEAR_COPY_THRESHOLDS["pixels"]


@pytest.fixture(scope="module")
def digits(mnist16):
    """200 members; samples: 20 exact copies, 20 brightness-changed copies, 60 held-out digits."""
    order = np.random.default_rng(3).permutation(len(mnist16))
    members, others = mnist16.images[order[:200]], mnist16.images[order[200:]]
    samples = np.concatenate([members[:20], members[20:40] * 0.8 + 0.1, others[:60]]).astype(np.float32)
    return samples, members


def _brute_force(samples: np.ndarray, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine of mean-centred pixels, every pair, in float64."""

    def unit(images):
        flat = images.reshape(len(images), -1).astype(np.float64)
        flat -= flat.mean(axis=1, keepdims=True)
        return flat / np.linalg.norm(flat, axis=1, keepdims=True)

    cosine = unit(samples) @ unit(members).T
    return cosine.max(axis=1), cosine.argmax(axis=1)


def test_yardstick_agrees_with_brute_force_cosine_on_real_digits(digits):
    samples, members = digits
    found = find_near_copies(samples, members)
    similarity, nearest = _brute_force(samples, members)
    assert found.threshold == PIXELS
    assert np.allclose(found.similarity, similarity, atol=1e-5)
    assert (found.nearest == nearest).all()
    assert (found.copies == (similarity > PIXELS)).all()
    assert found.copies[:40].all() and found.nearest[:40].tolist() == list(range(40))


def test_yardstick_takes_features_as_well_as_images(digits):
    samples, members = digits
    from_images = find_near_copies(samples, members, threshold=0.9)
    from_features = find_near_copies(PixelFeatures()(samples), PixelFeatures()(members), threshold=0.9)
    assert np.array_equal(from_images.similarity, from_features.similarity)
    assert np.array_equal(from_images.copies, from_features.copies)


def test_one_default_per_feature_space():
    assert default_threshold("pixels") == default_threshold(PixelFeatures()) == 0.98
    assert default_threshold("dino:/models/dinov2-small") == 0.97  # the paper's CIFAR-10 level
    assert default_threshold("sscd:/weights/sscd.pt") == 0.5  # Somepalli et al.
    extractor = type("Named", (), {"name": "dino(dinov2-small)"})()
    assert feature_space(extractor) == "dino"
    assert resolve_threshold(None, "pixels") == PIXELS and resolve_threshold(0.9, "pixels") == 0.9
    with pytest.raises(ValueError, match="no default near-copy threshold"):
        default_threshold("digitnet")
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        resolve_threshold(1.5, "pixels")


def test_library_callers_default_to_the_yardstick(digits):
    from cpsample.attacks.side import SideConfig, count_extractions
    from cpsample.calibration.search import GridSettings
    from cpsample.workflows.demo import DemoSettings
    from cpsample.workflows.negatives import DEFAULT_MAX_SIMILARITY

    samples, members = digits
    expected = find_near_copies(samples, members)
    detector = NearCopyDetector(members)
    assert detector.threshold == PIXELS and np.array_equal(detector(samples), expected.copies)
    extraction = count_extractions(samples, members)
    assert extraction.threshold == PIXELS and np.array_equal(extraction.copies, expected.copies)
    assert DemoSettings().threshold == GridSettings().threshold == SideConfig().threshold == PIXELS
    assert DEFAULT_MAX_SIMILARITY == 0.95 < PIXELS  # negatives keep a margin below the line
    results = evaluate({"samples": samples}, members, quality_net=None, permutation_rounds=10, progress=False)
    assert results["settings"]["threshold"] == PIXELS
    assert results["methods"]["samples"]["replication"]["count"] == int(expected.copies.sum())


def _threshold_options(command, path: str = ""):
    """(command path, command, parameter) for every CLI option whose name ends in 'threshold'."""
    if hasattr(command, "commands"):  # a group (typer bundles its own click)
        for name, sub in command.commands.items():
            yield from _threshold_options(sub, f"{path} {name}".strip())
        return
    for parameter in command.params:
        if parameter.name.endswith("threshold"):
            yield path, command, parameter


def test_every_cli_near_copy_threshold_defaults_to_the_yardstick():
    from cpsample.cli.main import app

    found = {}
    for path, command, parameter in _threshold_options(typer.main.get_command(app)):
        if parameter.name == "amg_threshold":
            continue  # AMG's guidance gate, deliberately below the near-copy line; not a near-copy verdict
        features = next((p.default for p in command.params if p.name == "features"), "pixels")
        # None resolves through the yardstick for the command's feature space; every such command records the result.
        assert parameter.default is None, (path, parameter.name, parameter.default)
        found[path] = resolve_threshold(parameter.default, features)
        assert f"pixels {PIXELS:g}" in parameter.help
    assert set(found) == {
        "evaluate",
        "demo",
        "calibrate",
        "attack side",
        "attack sample-nn",
        "sample",
    }, found
    assert set(found.values()) == {PIXELS}


def test_numpy_search_finds_the_same_neighbours_as_faiss(mnist16):
    """faiss is optional: the NumPy fallback is exact too, so both give the same rows, best first, on real digits."""
    from cpsample.evaluation.neighbours import NumpyFlatIndex, has_faiss, nearest_by_cosine, nearest_by_l2

    features = PixelFeatures()(mnist16.images[:1500])
    queries, references = features[:300], features[300:]
    numpy_cos = nearest_by_cosine(queries, references, k=5, batch_size=64, progress=False, backend="numpy")
    numpy_l2 = nearest_by_l2(queries, references, k=5, batch_size=64, progress=False, backend="numpy")
    unit = references / np.linalg.norm(references, axis=1, keepdims=True)
    brute = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float64) @ unit.T.astype(np.float64)
    assert np.array_equal(numpy_cos.indices, np.argsort(-brute, axis=1, kind="stable")[:, :5])
    assert np.allclose(numpy_cos.scores, np.sort(brute, axis=1)[:, ::-1][:, :5], atol=1e-6)
    index = NumpyFlatIndex(3, "ip")
    index.add(np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0]], dtype=np.float32))
    assert index.ntotal == 3 and index.search(np.array([[1, 0, 0]], dtype=np.float32), 3)[1].tolist() == [[0, 2, 1]]
    if not has_faiss():
        pytest.skip("faiss not installed: the NumPy path was checked against brute force only")
    faiss_cos = nearest_by_cosine(queries, references, k=5, batch_size=64, progress=False, backend="faiss")
    faiss_l2 = nearest_by_l2(queries, references, k=5, batch_size=64, progress=False, backend="faiss")
    assert np.array_equal(faiss_cos.indices, numpy_cos.indices)
    assert np.array_equal(faiss_l2.indices, numpy_l2.indices)
    assert np.allclose(faiss_cos.scores, numpy_cos.scores, atol=1e-5)
    assert np.allclose(faiss_l2.scores, numpy_l2.scores, rtol=1e-4, atol=1e-4)
