"""The permutation test of the CPSample paper (App. E): are samples closer to the training members than to
arbitrary images from the same distribution?

S = the k members, T = members + non-members (the whole pool), P = the m samples.
a0 = the highest nearest-neighbour cosine between k' = min(k, m) samples drawn from P and S.
a_i (i = 1..rounds) = the same statistic with S replaced by a random k-subset S_i of T and a fresh draw from P.
Under H0 (samples are no closer to S than to any k images of T) a0 is exchangeable with the a_i, so
p = (1 + #{a_i >= a0}) / (1 + rounds). The paper's Table 6 reports share_below = mean(a0 > a_i); its step 3
rejects when that share is large, i.e. when p is small.

Power has a floor: each null draw S_i contains a given member with probability |S| / |T|, and then sees the
same copy that produced a0. So even blatant copying gives p of about |S| / |T| at best (reported as
`members_share_of_pool`); the test can only reject at level 0.05 when T is more than ~20 times larger than S.
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from cpsample.evaluation.inputs import as_features
from cpsample.evaluation.neighbours import l2_normalise


def permutation_test(
    sample_features: np.ndarray,
    member_features: np.ndarray,
    pool_features: np.ndarray,
    rounds: int = 1000,
    level: float = 0.05,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Run App. E's test on features; pool_features must hold the members too (T contains S)."""
    samples = l2_normalise(as_features(sample_features, "sample features"))
    members = l2_normalise(as_features(member_features, "member features"))
    pool = l2_normalise(as_features(pool_features, "pool features"))
    if not (samples.shape[1] == members.shape[1] == pool.shape[1]):
        raise ValueError("samples, members and pool must share one feature dimension")
    if len(pool) <= len(members):
        raise ValueError(
            f"the pool T ({len(pool)}) must be larger than the member set S ({len(members)}): "
            "it needs non-members to draw the null distribution from"
        )
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    rng = np.random.default_rng(seed)
    draw = min(len(members), len(samples))
    observed = _max_similarity(samples[rng.choice(len(samples), draw, replace=False)], members)
    null = np.empty(rounds)
    for i in tqdm(range(rounds), desc="permutation test", disable=not progress, leave=False):
        subset = pool[rng.choice(len(pool), len(members), replace=False)]
        null[i] = _max_similarity(samples[rng.choice(len(samples), draw, replace=False)], subset)
    p_value = (1 + int((null >= observed).sum())) / (1 + rounds)
    return {
        "observed_max_similarity": float(observed),
        "null_mean": float(null.mean()),
        "null_p95": float(np.percentile(null, 95)),
        "share_below": float((observed > null).mean()),
        "p_value": p_value,
        "rounds": rounds,
        "samples_per_draw": draw,
        "members": len(members),
        "pool": len(pool),
        "members_share_of_pool": len(members) / len(pool),
        "level": level,
        "reject": bool(p_value < level),
    }


def _max_similarity(queries: np.ndarray, references: np.ndarray) -> float:
    """Highest cosine over all (query, reference) pairs; rows are already unit length."""
    return float((queries @ references.T).max())
