"""`evaluate`: every measure of the suite for named sample sets against the training members, in one dict.

    results = evaluate({"plain": a, "cpsample": b, "rejection": c}, members, nonmembers, figures_dir=out)
    write_report(out, results)

The first method is the baseline the others are compared with (chi-square on near-copy counts, as in Table 1)
unless `baseline=` names another.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping

import numpy as np

from cpsample.data import DataError
from cpsample.evaluation.features import FeatureExtractor, make_feature_extractor
from cpsample.evaluation.figures import most_similar_pairs, pairs_figure, similarity_histogram
from cpsample.evaluation.inputs import ImagesLike, as_images, same_image_shape
from cpsample.evaluation.measures import FrechetDistance, Judge
from cpsample.evaluation.nearcopy import find_near_copies, resolve_threshold
from cpsample.evaluation.permutation import permutation_test
from cpsample.evaluation.quality import class_agreement, class_histogram
from cpsample.evaluation.replication import (
    CARLINI_ALPHA,
    CARLINI_NEIGHBOURS,
    PAPER_THRESHOLDS,
    compare_shares,
    relative_distance,
    relative_share,
    replication_share,
    similarity_summary,
)

REFERENCE_NAME = "held-out real"  # non-member training-distribution images: what "not copied" looks like
HISTOGRAM_FILE, PAIRS_FILE = "similarity_histogram.png", "top_pairs.png"


def evaluate(
    samples: Mapping[str, ImagesLike],
    members: ImagesLike,
    nonmembers: ImagesLike | None = None,
    *,
    features: str | FeatureExtractor = "pixels",
    threshold: float | None = None,
    quality_net="bundled",
    sample_labels: Mapping[str, np.ndarray] | None = None,
    baseline: str | None = None,
    relative_alpha: float = CARLINI_ALPHA,
    relative_neighbours: int = CARLINI_NEIGHBOURS,
    relative_metric: str = "l2",
    permutation_rounds: int = 1000,
    top_k: int = 4,
    figures_dir: str | Path | None = None,
    membership=None,
    trust_torchscript: bool = False,
    inception_weights: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Replication (cosine NN share, CIs, chi-square), Carlini's pixel view, quality, permutation test, figures.

    samples: {method name: images (N, C, H, W) in [-1, 1]}, in display order.
    members: the training images; nonmembers: held-out images of the same distribution (enable the permutation
    test and the real-data reference row). features: 'pixels', 'dino:PATH', 'sscd:PATH' or an extractor.
    threshold: near-copy cosine threshold; None takes the feature space's default (nearcopy.NEAR_COPY_THRESHOLDS).
    quality_net: 'bundled', a folder, a FeatureNet, or None to skip FD and class checks.
    inception_weights: local Inception-v3 FID weights; adds real FID (needs torchmetrics + torch-fidelity).
    sample_labels: {method: intended class per sample} for class-conditional samples.
    figures_dir: where to write the PNGs (their file names land in results["figures"]).
    membership: optional membership-inference rows (another module computes them), shown as-is in the report.
    """
    sample_sets = _check_samples(samples, members)
    members = as_images(members, "members")
    nonmembers = None if nonmembers is None else as_images(nonmembers, "non-members")
    if nonmembers is not None:
        same_image_shape(nonmembers, members, "non-members", "members")
    baseline = baseline or next(iter(sample_sets))
    if baseline not in sample_sets:
        raise ValueError(f"baseline {baseline!r} is not one of the sample sets ({', '.join(sample_sets)})")
    extractor = make_feature_extractor(features, trust_torchscript=trust_torchscript)
    threshold = resolve_threshold(threshold, extractor)
    started = time.time()

    member_features = extractor(members)
    nonmember_features = None if nonmembers is None else extractor(nonmembers)
    results: dict = {
        "settings": _settings(
            extractor,
            threshold,
            members,
            nonmembers,
            baseline,
            relative_alpha,
            relative_neighbours,
            relative_metric,
            permutation_rounds,
            seed,
        ),
        "methods": {},
        "per_sample": {},
    }
    neighbours_of = {}
    for name, images in sample_sets.items():
        method, per_sample, found = _evaluate_method(
            images,
            extractor,
            member_features,
            nonmember_features,
            members,
            threshold,
            relative_alpha,
            relative_neighbours,
            relative_metric,
            permutation_rounds,
            seed,
            progress,
        )
        results["methods"][name], results["per_sample"][name], neighbours_of[name] = method, per_sample, found
    if nonmember_features is not None:
        reference = find_near_copies(nonmember_features, member_features, extractor, threshold, progress)
        results["reference"] = {
            "name": REFERENCE_NAME,
            "n": len(nonmembers),
            "replication": replication_share(reference.similarity, threshold),
            "similarity": similarity_summary(reference.similarity),
        }
        neighbours_of[REFERENCE_NAME] = reference
    results["comparisons"] = [
        {
            "baseline": baseline,
            "method": name,
            **compare_shares(results["methods"][baseline]["replication"], method["replication"]),
        }
        for name, method in results["methods"].items()
        if name != baseline
    ]
    if quality_net is not None:
        _add_quality(results, quality_net, sample_sets, members, nonmembers, sample_labels, seed)
    if inception_weights is not None:
        from cpsample.evaluation.quality import inception_fid

        for name, images in sample_sets.items():
            results["methods"][name]["fid"] = inception_fid(members, images, inception_weights)["value"]
    results["membership_inference"] = membership
    results["seconds"] = round(time.time() - started, 2)
    if figures_dir is not None:
        results["figures"] = make_figures(
            figures_dir, sample_sets, members, neighbours_of, threshold, top_k, feature_name=extractor.name
        )
    return results


def make_figures(
    folder: str | Path,
    sample_sets: Mapping[str, np.ndarray],
    members: np.ndarray,
    neighbours_of: Mapping,
    threshold: float,
    top_k: int = 4,
    feature_name: str = "pixels",
) -> dict:
    """Write the histogram (all sets, plus the held-out reference) and the top-pairs figure; returns {key: file name}.

    neighbours_of: {set name: its `NearCopies` against the members}.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    similarity_histogram(
        {name: found.similarity for name, found in neighbours_of.items()},
        folder / HISTOGRAM_FILE,
        threshold=threshold,
        xlabel=f"cosine similarity to nearest training image ({feature_name})",
    )
    pairs = {
        name: most_similar_pairs(images, members, neighbours_of[name].similarity, neighbours_of[name].nearest, top_k)
        for name, images in sample_sets.items()
    }
    pairs_figure(pairs, folder / PAIRS_FILE)
    return {"similarity_histogram": HISTOGRAM_FILE, "top_pairs": PAIRS_FILE}


def _check_samples(samples: Mapping[str, ImagesLike], members: ImagesLike) -> dict[str, np.ndarray]:
    if not isinstance(samples, Mapping) or not samples:
        raise DataError("samples must be a non-empty mapping {method name: images}")
    member_array = as_images(members, "members")
    checked = {}
    for name, images in samples.items():
        array = as_images(images, f"samples '{name}'")
        same_image_shape(array, member_array, f"samples '{name}'", "the training members")
        checked[str(name)] = array
    return checked


def _settings(extractor, threshold, members, nonmembers, baseline, alpha, neighbours, metric, rounds, seed) -> dict:
    return {
        "features": extractor.name,
        "threshold": threshold,
        "paper_thresholds": PAPER_THRESHOLDS,
        "members": len(members),
        "nonmembers": 0 if nonmembers is None else len(nonmembers),
        "image_shape": list(members.shape[1:]),
        "baseline": baseline,
        "relative_alpha": alpha,
        "relative_neighbours": neighbours,
        "relative_metric": metric,
        "permutation_rounds": rounds,
        "seed": seed,
    }


def _evaluate_method(
    images,
    extractor,
    member_features,
    nonmember_features,
    members,
    threshold,
    alpha,
    neighbours,
    metric,
    rounds,
    seed,
    progress,
):
    sample_features = extractor(images)
    search_started = time.time()
    found = find_near_copies(sample_features, member_features, extractor, threshold, progress)
    search_seconds = time.time() - search_started
    relative = relative_distance(
        images, members, alpha=alpha, neighbours=neighbours, distance=metric, progress=progress
    )
    method = {
        "n": len(images),
        "replication": replication_share(found.similarity, threshold),
        "similarity": similarity_summary(found.similarity),
        "relative": relative_share(relative),
        "nn_search_seconds": round(search_seconds, 4),
    }
    if nonmember_features is not None:
        pool = np.concatenate([member_features, nonmember_features])
        method["permutation"] = permutation_test(
            sample_features, member_features, pool, rounds=rounds, seed=seed, progress=progress
        )
    per_sample = {
        "nn_similarity": np.round(found.similarity, 5).tolist(),
        "nn_index": found.nearest.tolist(),
        "relative_ratio": np.round(relative["ratio"], 5).tolist(),
        "tiled_l2": np.round(relative["tiled_l2"], 5).tolist(),
    }
    return method, per_sample, found


def _add_quality(results: dict, quality_net, sample_sets, members, nonmembers, sample_labels, seed) -> None:
    """FD to the members in the feature net's space for each method, and for held-out real images as a floor."""
    from cpsample.evaluation.feature_net import FeatureNet, load_feature_net

    net = (
        quality_net
        if isinstance(quality_net, FeatureNet)
        else load_feature_net(quality_net, channels=as_images(members).shape[1])
    )
    metric = f"FD_{net.name}"
    fd = Judge([FrechetDistance(net, members, column="value", samples_first=True)])  # the members' fit made once
    for name, images in sample_sets.items():
        quality = {
            "metric": metric,
            **fd(images),
            "reference": "members",
            "predicted_class_counts": class_histogram(net, images),
        }
        if sample_labels and name in sample_labels:
            quality["class_agreement"] = class_agreement(net, images, sample_labels[name])
        results["methods"][name]["quality"] = quality
    if nonmembers is not None and "reference" in results:
        # FD shrinks with more images; compare like with like by drawing as many real images as the largest sample set.
        count = min(len(nonmembers), max(len(images) for images in sample_sets.values()))
        chosen = np.random.default_rng(seed).choice(len(nonmembers), count, replace=False)
        real = nonmembers[chosen]
        results["reference"]["quality"] = {
            "metric": metric,
            "reference": "members",
            "n": count,
            **fd(real),
            "predicted_class_counts": class_histogram(net, real),
        }
