"""Sample-only membership inference: the adversary who sees nothing but the generated images.

Threat models. The loss attack and PIA (`cpsample.attacks.mia`) query the denoiser's noise prediction: they model
whoever holds the weights (white box). This attack needs only a set of samples, as any defence would share them: a
candidate image is called a member when some generated sample lies close to it. Its score is the cosine distance
(1 - cosine similarity) of the candidate's features to its nearest generated sample, in the feature space and through
the very code (`find_near_copies`) that measures near-copies, with the roles swapped: the candidates are the queries,
the samples the references. Lower = more likely a member, the convention of `cpsample.attacks.metrics`, so the same
ROC AUC, TPR at 1% FPR and Z-test apply; a one-sided Mann-Whitney U test (members lie closer) is added, because
nearest-sample distances are far from normal (a memorised member sits at distance 0).

Because it reads only samples, it scores every defence (plain, CPSample, rejection, AMG, ...) without sampling again:

    attack = SampleNNAttack(model.members.images, heldout_images)
    attack(plain_samples).auc, attack(protected_samples).stats.tpr_at_1pct_fpr
    run_sample_attack({"plain": a, "cpsample": b}, model="bundled")   # members / non-members from the model's split
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
from scipy.stats import mannwhitneyu

from cpsample.attacks.metrics import Separation, roc, separation
from cpsample.evaluation.features import FeatureExtractor, make_feature_extractor
from cpsample.evaluation.inputs import ImagesLike, as_images, same_image_shape
from cpsample.evaluation.nearcopy import find_near_copies, resolve_threshold

SAMPLE_ATTACK = "sample-nn"
THREAT_MODELS = {
    "loss": "white box: holds the denoiser's weights",
    "pia": "white box: holds the denoiser's weights",
    SAMPLE_ATTACK: "black box: sees only the generated samples",
}


@dataclass
class SampleAttackResult:
    """The sample-only attack against one set of samples: separation of members from non-members by nearest
    distance."""

    n_members: int
    n_nonmembers: int
    n_samples: int
    stats: Separation
    member_scores: np.ndarray  # (n_members,) cosine distance to the nearest sample
    nonmember_scores: np.ndarray
    mann_whitney_u: float  # U of the members: pairs (member, non-member) where the member lies farther, ties half
    mann_whitney_p: float  # one-sided: H1 "members lie closer to the samples than non-members"
    member_copied_share: float  # share of members with a near-copy among the samples (similarity > threshold)
    nonmember_copied_share: float
    settings: dict = field(default_factory=dict)
    attack: str = SAMPLE_ATTACK

    @property
    def auc(self) -> float:
        return self.stats.auc

    @property
    def best(self) -> Separation:
        """The attack has no noise level to choose: `best` is its one Separation (the interface of AttackResult)."""
        return self.stats

    def to_dict(self, with_scores: bool = False) -> dict:
        record = {
            "attack": self.attack,
            "threat_model": THREAT_MODELS[self.attack],
            "n_members": self.n_members,
            "n_nonmembers": self.n_nonmembers,
            "n_samples": self.n_samples,
            "stats": self.stats.to_dict(),
            "mann_whitney_u": self.mann_whitney_u,
            "mann_whitney_p": self.mann_whitney_p,
            "member_copied_share": self.member_copied_share,
            "nonmember_copied_share": self.nonmember_copied_share,
            "settings": self.settings,
        }
        if with_scores:
            record["member_scores"] = self.member_scores.tolist()
            record["nonmember_scores"] = self.nonmember_scores.tolist()
        return record

    def row(self) -> dict:
        """The headline numbers, as the demo's and the CLI's tables show them."""
        return {
            "AUC": round(self.auc, 4),
            "TPR@1%FPR": round(self.stats.tpr_at_1pct_fpr, 4),
            "Z": round(self.stats.z, 3),
            "p (one-sided)": self.stats.p_value,
            "p (Mann-Whitney, one-sided)": self.mann_whitney_p,
        }


class SampleNNAttack:
    """Members and non-members turned into features once; call the attack on each defence's samples.

    members, nonmembers: images (N, C, H, W) in [-1, 1]; features: the near-copy yardstick's feature space
    ('pixels', 'dino:PATH', 'sscd:PATH' or an extractor); threshold: the near-copy level for the copied shares
    (None: the feature space's default).
    """

    def __init__(
        self,
        members: ImagesLike,
        nonmembers: ImagesLike,
        features: str | FeatureExtractor = "pixels",
        threshold: float | None = None,
        trust_torchscript: bool = False,
    ):
        self.members, self.nonmembers = as_images(members, "members"), as_images(nonmembers, "non-members")
        same_image_shape(self.members, self.nonmembers, "members", "non-members")
        if len(self.members) < 2 or len(self.nonmembers) < 2:
            raise ValueError(
                f"need at least 2 members and 2 non-members, got {len(self.members)} and {len(self.nonmembers)}"
            )
        self.extractor = make_feature_extractor(features, trust_torchscript=trust_torchscript)
        self.threshold = resolve_threshold(threshold, self.extractor)
        self.candidates = self.extractor(np.concatenate([self.members, self.nonmembers]))

    def __call__(self, samples: ImagesLike) -> SampleAttackResult:
        images = as_images(samples, "samples")
        same_image_shape(images, self.members, "samples", "the model's training images")
        found = find_near_copies(
            self.candidates, self.extractor(images), features=self.extractor, threshold=self.threshold
        )
        distance = np.maximum(1.0 - found.similarity.astype(np.float64), 0.0)
        copied = found.copies
        n = len(self.members)
        members, nonmembers = distance[:n], distance[n:]
        test = mannwhitneyu(members, nonmembers, alternative="less")
        settings = {
            "features": self.extractor.name,
            "threshold": self.threshold,
            "score": "1 - cosine similarity of the candidate to its nearest generated sample",
        }
        return SampleAttackResult(
            n_members=n,
            n_nonmembers=len(nonmembers),
            n_samples=len(images),
            stats=separation(members, nonmembers),
            member_scores=members,
            nonmember_scores=nonmembers,
            mann_whitney_u=float(test.statistic),
            mann_whitney_p=float(test.pvalue),
            member_copied_share=float(copied[:n].mean()),
            nonmember_copied_share=float(copied[n:].mean()),
            settings=settings,
        )


def run_sample_attack(
    samples: Mapping[str, ImagesLike] | ImagesLike,
    model="bundled",
    n_members: int | None = None,
    n_nonmembers: int | None = None,
    features: str | FeatureExtractor = "pixels",
    threshold: float | None = None,
    seed: int = 0,
    trust_torchscript: bool = False,
) -> dict[str, SampleAttackResult]:
    """The sample-only attack on each named sample set, candidates drawn from the model's own member split.

    model: 'bundled', a denoiser folder or a loaded DiffusionModel (only its split and data are read, not its weights).
    n_members / n_nonmembers / seed pick the candidates exactly as `run_mia` does (same seed, same counts: the same
    images), so the white-box and the sample-only numbers compare like with like. A bare image set is named 'samples'.
    """
    from cpsample.attacks.mia import pick_images

    sets = dict(samples) if isinstance(samples, Mapping) else {"samples": samples}
    if not sets:
        raise ValueError("give at least one set of samples to attack")
    dataset, split = _training_data(model)
    member_idx, nonmember_idx = pick_images(split.members, split.nonmembers, n_members, n_nonmembers, seed)
    attack = SampleNNAttack(
        dataset.images[member_idx],
        dataset.images[nonmember_idx],
        features,
        threshold,
        trust_torchscript=trust_torchscript,
    )
    results = {}
    for name, images in sets.items():
        results[name] = attack(images)
        results[name].settings.update(
            model=str(model), seed=seed, member_indices=member_idx, nonmember_indices=nonmember_idx
        )
    return results


def _training_data(model):
    from cpsample.models.bundle import resolve_model_dir, training_data
    from cpsample.models.pretrained import DiffusionModel

    if isinstance(model, DiffusionModel):
        return model.dataset, model.split
    return training_data(resolve_model_dir(model, "denoiser"))


def plot_sample_attacks(results: Mapping[str, SampleAttackResult], path: Path, title: str = "") -> Path:
    """ROC of the sample-only attack, one curve per sample set: linear axes (left) and log FPR (right, the low-FPR
    end)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not results:
        raise ValueError("no sample-only attack results to plot")
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for name, result in results.items():
        fpr, tpr = roc(result.member_scores, result.nonmember_scores)
        label = f"{name}: AUC {result.auc:.3f}, TPR@1% {result.stats.tpr_at_1pct_fpr:.1%}"
        (line,) = axes[0].plot(fpr, tpr, label=label)
        axes[1].plot(np.maximum(fpr, 1e-4), tpr, color=line.get_color())
    first = next(iter(results.values()))
    axes[0].plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8, label="chance")
    axes[0].set(
        xlabel="false positive rate (non-members flagged)",
        ylabel="true positive rate (members found)",
        xlim=(0, 1),
        ylim=(0, 1.01),
        title=f"sample-only attack ({first.n_members} members vs {first.n_nonmembers} non-members)",
    )
    axes[0].legend(fontsize=8, loc="lower right")
    chance = np.geomspace(1e-4, 1, 50)
    axes[1].plot(chance, chance, color="grey", linestyle="--", linewidth=0.8)
    axes[1].axvline(0.01, color="grey", linestyle=":", linewidth=0.8)
    axes[1].set(
        xscale="log",
        xlim=(1e-3, 1),
        ylim=(0, 1.01),
        xlabel="false positive rate (log)",
        ylabel="true positive rate",
        title="low-FPR end (dotted: 1% FPR)",
    )
    from cpsample.attacks.plots import save_figure

    return save_figure(figure, path, title)
