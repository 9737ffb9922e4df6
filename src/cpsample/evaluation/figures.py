"""The paper's figures as PNGs: overlaid similarity histograms (Fig. 2) and the most similar pairs (Fig. 1 / 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from cpsample.data import to_uint8

PAIR_GAP = 2  # white pixels between a sample and its neighbour


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def similarity_histogram(
    similarities: Mapping[str, np.ndarray],
    path: Path,
    threshold: float | None = None,
    xlabel: str = "cosine similarity to nearest training image",
    bins: int = 50,
) -> Path:
    """One panel per method (shares of each set, so sets of different sizes compare), side by side on shared axes,
    each titled with its share above the threshold; a set named "held-out ..." (real images that are no members) is
    drawn as a grey outline in every panel, the yardstick a sample should look like."""
    if not similarities:
        raise ValueError("no similarity sets to plot")
    plt = _pyplot()
    values = {name: np.asarray(v, dtype=float).reshape(-1) for name, v in similarities.items()}
    reference = {name: v for name, v in values.items() if name.startswith("held-out")}
    methods = {name: v for name, v in values.items() if name not in reference} or reference
    low = min(v.min() for v in values.values())
    high = max(max(v.max() for v in values.values()), threshold if threshold is not None else -np.inf)
    edges = np.linspace(low, max(high, low + 1e-6), bins + 1)
    columns = min(len(methods), 4)
    rows = -(-len(methods) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows), sharex=True, sharey=True)
    axes = np.atleast_1d(axes).reshape(-1)
    for axis, (name, v) in zip(axes, methods.items()):
        axis.hist(v, bins=edges, weights=np.full(len(v), 100.0 / len(v)), color="tab:blue", alpha=0.8)
        for ref_name, ref in reference.items():
            weights = np.full(len(ref), 100.0 / len(ref))
            axis.hist(ref, bins=edges, weights=weights, histtype="step", color="grey", label=ref_name)
        title = f"{name} (n={len(v)})"
        if threshold is not None:
            axis.axvline(threshold, color="black", linestyle="--", linewidth=1)
            title += f"\n{100 * float((v > threshold).mean()):.1f}% above {threshold:g}"
        axis.set_title(title, fontsize=9)
    for axis in axes[len(methods) :]:
        axis.set_visible(False)
    for axis in axes[::columns]:
        axis.set_ylabel("% of images")
    for axis in axes[-columns:]:
        axis.set_xlabel(xlabel, fontsize=8)
    if reference:
        axes[0].legend(fontsize=7, loc="upper left")
    suptitle = "similarity of each image to its nearest training image"
    figure.suptitle(suptitle + ("" if threshold is None else " (dashed: near-copy threshold)"), fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


def most_similar_pairs(
    samples: np.ndarray, training: np.ndarray, similarity: np.ndarray, nearest: np.ndarray, k: int = 4
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k samples with the highest similarity, their nearest training images, and the similarities."""
    order = np.argsort(-np.asarray(similarity), kind="stable")[:k]
    return samples[order], training[np.asarray(nearest)[order]], np.asarray(similarity)[order]


def pairs_figure(
    pairs: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    path: Path,
    caption: str = "left: generated, right: nearest training image",
) -> Path:
    """One row per method: its k most similar (generated | training) pairs, each titled with the similarity."""
    if not pairs:
        raise ValueError("no pairs to plot")
    plt = _pyplot()
    columns = max(len(sims) for _, _, sims in pairs.values())
    figure, axes = plt.subplots(len(pairs), columns, figsize=(2.0 * columns, 1.35 * len(pairs) + 0.5), squeeze=False)
    for row, (name, (generated, training, sims)) in enumerate(pairs.items()):
        for column in range(columns):
            axis = axes[row, column]
            axis.set_xticks([])
            axis.set_yticks([])
            if column >= len(sims):
                axis.axis("off")
                continue
            picture = _side_by_side(generated[column], training[column])
            axis.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
            axis.set_title(f"{sims[column]:.3f}", fontsize=9)
        axes[row, 0].set_ylabel(name, fontsize=9)
    figure.suptitle(f"most similar pairs per method ({caption})", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


def _side_by_side(generated: np.ndarray, training: np.ndarray) -> np.ndarray:
    left, right = to_uint8(generated[None])[0], to_uint8(training[None])[0]  # (H, W, C)
    gap = np.full((left.shape[0], PAIR_GAP, left.shape[2]), 255, dtype=np.uint8)
    picture = np.concatenate([left, gap, right], axis=1)
    return picture[:, :, 0] if picture.shape[2] == 1 else picture
