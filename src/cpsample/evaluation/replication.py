"""How often samples copy training images, with exact intervals and the paper's chi-square test (Table 1).

Two views:
- feature cosine (the CPSample paper): a sample is a near-copy when the cosine similarity of its features to
  the nearest training image exceeds a threshold (paper: 0.97 CIFAR-10, 0.95 CelebA, 0.90 LSUN Church);
- pixel distance (Carlini et al. 2023): a sample is extracted when its distance to the nearest training image
  is at most alpha (0.5) times its mean distance to the 50 nearest ones; tiled l2 (max over 4x4 tiles of the RMS
  difference) is reported alongside, since one copied region is enough to make a copy.
Pixel distances are RMS differences in [0, 1] pixel units (images mapped from [-1, 1]).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from cpsample.evaluation.inputs import ImagesLike, as_images, same_image_shape
from cpsample.evaluation.neighbours import nearest_by_l2

PAPER_THRESHOLDS = {"cifar10": 0.97, "celeba": 0.95, "lsun_church": 0.90}  # defaults: nearcopy.NEAR_COPY_THRESHOLDS
CARLINI_ALPHA = 0.5
CARLINI_NEIGHBOURS = 50
DEFAULT_TILES = 4  # 4 x 4 = 16 tiles, as in Carlini et al.


def clopper_pearson(count: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval for a binomial share count / n."""
    if n <= 0:
        raise ValueError("a share needs at least one trial (n > 0)")
    if not 0 <= count <= n:
        raise ValueError(f"count must lie in [0, n], got {count} of {n}")
    interval = stats.binomtest(int(count), int(n)).proportion_ci(confidence_level=confidence, method="exact")
    return float(interval.low), float(interval.high)


def replication_share(similarities: np.ndarray, threshold: float, confidence: float = 0.95) -> dict:
    """Share of samples whose nearest-neighbour similarity is strictly above threshold, with its exact interval."""
    values = _finite_vector(similarities, "similarities")
    count = int((values > threshold).sum())
    low, high = clopper_pearson(count, len(values), confidence)
    return {
        "threshold": float(threshold),
        "count": count,
        "n": len(values),
        "share": count / len(values),
        "ci_low": low,
        "ci_high": high,
        "confidence": confidence,
    }


def compare_shares(baseline: dict, method: dict) -> dict:
    """Did `method` copy less often than `baseline`? 2x2 chi-square (Yates) as in the paper, plus one-sided Fisher.

    Both arguments are `replication_share` results. The chi-square test is two-sided (as reported in Table 1);
    the Fisher test is exact and one-sided (H1: method's share < baseline's), so it stays valid with zero counts.
    """
    table = np.array(
        [[baseline["count"], baseline["n"] - baseline["count"]], [method["count"], method["n"] - method["count"]]]
    )
    if (table.sum(axis=0) == 0).any():
        # Nobody (or everybody) copied in both sets: the test has nothing to compare.
        chi2, p_value, note = 0.0, 1.0, "no difference to test: the copy count is 0 (or n) in both sets"
    else:
        result = stats.chi2_contingency(table, correction=True)
        chi2, p_value, note = float(result.statistic), float(result.pvalue), ""
    fisher = stats.fisher_exact(table, alternative="greater")
    return {
        "table": table.tolist(),
        "chi2": chi2,
        "p_value": p_value,
        "fisher_p_one_sided": float(fisher.pvalue),
        "share_baseline": baseline["count"] / baseline["n"],
        "share_method": method["count"] / method["n"],
        "note": note,
    }


def cut_interval(copies: int, n: int, baseline_copies: int, baseline_n: int, confidence: float = 0.95) -> dict:
    """The cut of near-copies against a baseline (1 - relative share) with its interval: Katz's log interval of the
    relative share (scipy); with no near-copies left, the exact (Clopper-Pearson) bound of 0/n against the baseline's
    share. All None when the baseline has none (there is nothing to cut)."""
    from scipy.stats.contingency import relative_risk

    if not baseline_copies:
        return {"cut": None, "cut_low": None, "cut_high": None}
    ratio = relative_risk(copies, n, baseline_copies, baseline_n)
    if copies:
        interval = ratio.confidence_interval(confidence)
        low, high = 1.0 - interval.high, 1.0 - interval.low
    else:
        low, high = max(0.0, 1.0 - clopper_pearson(0, n, confidence)[1] / (baseline_copies / baseline_n)), 1.0
    return {"cut": 1.0 - ratio.relative_risk, "cut_low": low, "cut_high": high}


def tiled_l2(a: np.ndarray, b: np.ndarray, tiles: int = DEFAULT_TILES) -> np.ndarray:
    """Max over tiles x tiles tiles of the RMS pixel difference, in [0, 1] units. a, b: (..., C, H, W),
    broadcastable."""
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    height, width = a.shape[-2:]
    if min(height, width) < tiles:
        raise ValueError(f"cannot split {height}x{width} images into {tiles}x{tiles} tiles")
    squared = ((a - b) / 2.0) ** 2  # [-1, 1] -> [0, 1] units
    row_starts = np.array([edges[0] for edges in np.array_split(np.arange(height), tiles)])
    column_starts = np.array([edges[0] for edges in np.array_split(np.arange(width), tiles)])
    sums = np.add.reduceat(np.add.reduceat(squared.sum(axis=-3), row_starts, axis=-2), column_starts, axis=-1)
    counts = np.outer(np.diff(np.append(row_starts, height)), np.diff(np.append(column_starts, width))) * a.shape[-3]
    return np.sqrt(sums / counts).reshape(*sums.shape[:-2], -1).max(axis=-1)


def relative_distance(
    samples: ImagesLike,
    training: ImagesLike,
    alpha: float = CARLINI_ALPHA,
    neighbours: int = CARLINI_NEIGHBOURS,
    distance: str = "l2",
    tiles: int = DEFAULT_TILES,
    progress: bool = True,
) -> dict:
    """Carlini et al.'s calibrated distance: d(x, nn) / (alpha * mean d(x, y) over the n nearest y); <= 1 flags a copy.

    Candidates are the `neighbours` nearest training images by l2 (exact search). distance="l2" uses the RMS
    l2 for both numerator and denominator (their CIFAR-10 rule); "tiled" uses tiled l2 over the same candidates.
    Returns per-sample arrays: ratio, nearest (index into training), l2 and tiled_l2 to that nearest image.
    """
    if distance not in ("l2", "tiled"):
        raise ValueError(f"distance must be 'l2' or 'tiled', got {distance!r}")
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    samples, training = as_images(samples, "samples"), as_images(training, "training images")
    same_image_shape(samples, training, "samples", "training images")
    k = min(neighbours, len(training))
    pixels = samples[0].size
    found = nearest_by_l2(
        samples.reshape(len(samples), -1), training.reshape(len(training), -1), k=k, progress=progress
    )
    rms = found.scores / 2.0 / np.sqrt(pixels)  # [0, 1] units, normalised like the tiles
    tiled = _tiled_to_candidates(samples, training, found.indices, tiles)
    candidate_distance = rms if distance == "l2" else tiled
    best = candidate_distance.argmin(axis=1)
    rows = np.arange(len(samples))
    nearest = candidate_distance[rows, best]
    ratio = nearest / np.maximum(alpha * candidate_distance.mean(axis=1), 1e-12)
    return {
        "ratio": ratio,
        "nearest": found.indices[rows, best],
        "l2": rms[rows, best],
        "tiled_l2": tiled[rows, best],
        "alpha": alpha,
        "neighbours": k,
        "distance": distance,
    }


def relative_share(relative: dict, confidence: float = 0.95) -> dict:
    """Summary of `relative_distance`: share flagged (ratio <= 1) with its exact interval, and typical distances."""
    count = int((relative["ratio"] <= 1.0).sum())
    n = len(relative["ratio"])
    low, high = clopper_pearson(count, n, confidence)
    return {
        "alpha": relative["alpha"],
        "neighbours": relative["neighbours"],
        "distance": relative["distance"],
        "count": count,
        "n": n,
        "share": count / n,
        "ci_low": low,
        "ci_high": high,
        "ratio_min": float(relative["ratio"].min()),
        "ratio_median": float(np.median(relative["ratio"])),
        "tiled_l2_min": float(relative["tiled_l2"].min()),
        "tiled_l2_median": float(np.median(relative["tiled_l2"])),
    }


def similarity_summary(similarities: np.ndarray) -> dict:
    """Mean, median, 95th percentile (as Somepalli et al. report) and max of nearest-neighbour similarities."""
    values = _finite_vector(similarities, "similarities")
    return {
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "p95": float(np.percentile(values, 95)),
        "max": float(values.max()),
    }


def _tiled_to_candidates(
    samples: np.ndarray, training: np.ndarray, candidates: np.ndarray, tiles: int, chunk: int = 256
) -> np.ndarray:
    """Tiled l2 from each sample to each of its candidate training images, in chunks to bound memory."""
    out = np.empty(candidates.shape, dtype=np.float32)
    for start in range(0, len(samples), chunk):
        stop = start + chunk
        out[start:stop] = tiled_l2(samples[start:stop, None], training[candidates[start:stop]], tiles)
    return out


def _finite_vector(values: np.ndarray, what: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(values) == 0:
        raise ValueError(f"{what}: empty")
    if not np.isfinite(values).all():
        raise ValueError(f"{what}: contains NaN or infinite values")
    return values
