"""One figure for a membership-inference run: per attack, the ROC curves (one per t) and the score histograms at the
best t."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cpsample.attacks.metrics import roc


def plot_attacks(results: dict, path: Path, title: str = "") -> Path:
    """Write a PNG with one row per attack: ROC curves (left), members vs non-members scores at the best t (right)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    if not results:
        raise ValueError("no attack results to plot")
    figure, axes = plt.subplots(len(results), 2, figsize=(10, 4.2 * len(results)), squeeze=False)
    for row, (name, result) in enumerate(results.items()):
        _plot_roc(axes[row][0], name, result)
        _plot_histograms(axes[row][1], name, result)
    return save_figure(figure, path, title)


def _plot_roc(ax, name: str, result) -> None:
    for t, stats in result.per_t.items():
        fpr, tpr = roc(result.member_scores[t], result.nonmember_scores[t])
        ax.plot(fpr, tpr, label=f"t={t}: AUC {stats.auc:.3f}, TPR@1% {stats.tpr_at_1pct_fpr:.1%}")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8, label="chance")
    ax.axvline(0.01, color="grey", linestyle=":", linewidth=0.8)
    ax.set(
        xlabel="false positive rate (non-members flagged)",
        ylabel="true positive rate (members found)",
        title=f"{name} attack: ROC ({result.n_members} members vs {result.n_nonmembers} non-members)",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    ax.legend(fontsize=8, loc="lower right")


def _plot_histograms(ax, name: str, result) -> None:
    t = result.best_t
    members, nonmembers = result.member_scores[t], result.nonmember_scores[t]
    everything = np.r_[members, nonmembers]
    # Guarded scores can span orders of magnitude: then log-spaced bins show both sets instead of one spike.
    logarithmic = everything.min() > 0 and everything.max() / everything.min() > 100
    if logarithmic:
        edges = np.geomspace(everything.min(), everything.max(), 41)
        ax.set_xscale("log")
    else:
        edges = np.histogram_bin_edges(everything, bins=40)
    # Share of each set per bin (not density, which log-spaced bins would distort; not counts, the sets differ in
    # size).
    ax.hist(
        nonmembers,
        bins=edges,
        alpha=0.55,
        weights=np.full(len(nonmembers), 1 / len(nonmembers)),
        label=f"non-members (mean {nonmembers.mean():.4g})",
    )
    ax.hist(
        members,
        bins=edges,
        alpha=0.55,
        weights=np.full(len(members), 1 / len(members)),
        label=f"members (mean {members.mean():.4g})",
    )
    stats = result.best
    ax.set(
        xlabel="score (lower = looks like a member)",
        ylabel="share of the set",
        title=f"{name} scores at t={t}: Z = {stats.z:.2f}, one-sided p = {stats.p_value:.2g}",
    )
    ax.legend(fontsize=8)


def save_figure(figure, path: str | Path, title: str | None = None) -> Path:
    """Title, tight layout, write (making the folder), close: the last step of every attack figure."""
    import matplotlib.pyplot as plt

    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
