"""Membership inference per threat model, as the demo reports it: whoever holds the weights (white box: the loss
attack and PIA on the plain and the CPSample-guarded denoiser) and whoever sees only the samples (black box: each
candidate's distance to its nearest generated sample), on the same members and non-members."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cpsample.models.pretrained import DiffusionModel
from cpsample.sampling.spec import GuardSpec

WHITE_BOX = "white box (holds the weights)"
BLACK_BOX = "black box (sees only samples)"


def membership_rows(
    settings,
    model: "DiffusionModel | str",
    images: dict | None = None,
    out: Path | None = None,
    progress: bool = True,
) -> dict:
    """Membership inference per threat model, on the same members and non-members. settings: the demo's
    DemoSettings (its knobs, classifier, mia_members, seed, device, features, threshold, n_samples); model: a loaded
    DiffusionModel, or a train-t2i pipeline's folder or name (attacked in its latent space).

    White box: loss attack and PIA against the plain and the CPSample-guarded denoiser (same images, same noise).
    Black box: the sample-only attack (each candidate's distance to its nearest generated sample) on every method's
    samples in `images`; with `out`, its ROC goes to out/mia_sample_nn_roc.png (returned under "figures").
    """
    from cpsample.attacks.membership import run_mia
    from cpsample.attacks.sample_nn import plot_sample_attacks, run_sample_attack

    rows = []
    defences = {
        "plain": GuardSpec.create("none"),
        "cpsample": GuardSpec.create("cpsample", alpha=settings.alpha, scale=settings.scale, tau=settings.tau),
    }
    for defence, spec in defences.items():
        attacks = run_mia(
            model,
            guard=spec,
            classifier=settings.classifier,
            n_members=settings.mia_members,
            seed=settings.seed,
            device=settings.device,
            progress=progress,
        )
        for name, result in attacks.items():
            best = result.best
            rows.append(
                {
                    "threat model": WHITE_BOX,
                    "defence": defence,
                    "attack": name,
                    "best t": result.best_t,
                    "AUC": round(best.auc, 4),
                    "TPR@1%FPR": round(best.tpr_at_1pct_fpr, 4),
                    "Z": round(best.z, 3),
                    "p (one-sided)": best.p_value,
                }
            )
    figures, sample_only = {}, {}
    if images:
        # The same candidates as run_mia's (same counts, same seed), in the near-copy yardstick's feature space.
        sample_only = run_sample_attack(
            {name: np.asarray(batch) for name, batch in images.items()},
            model=model,
            n_members=settings.mia_members,
            features=settings.features,
            threshold=settings.threshold,
            seed=settings.seed,
        )
        for name, result in sample_only.items():
            rows.append(
                {
                    "threat model": BLACK_BOX,
                    "defence": name,
                    "attack": result.attack,
                    "best t": "-",
                    **result.row(),
                    "members copied": round(result.member_copied_share, 4),
                }
            )
        if out is not None:
            plot_sample_attacks(
                sample_only,
                Path(out) / "mia_sample_nn_roc.png",
                title=f"sample-only attack: {settings.n_samples} samples per method",
            )
            figures["mia_sample_nn_roc"] = "mia_sample_nn_roc.png"
    first = next(iter(sample_only.values()), None)
    note = (
        f"{settings.mia_members} members vs as many random non-members (the same images for every attack); "
        "AUC 0.5 = no leak, TPR@1%FPR = share of members found while flagging 1% of non-members. "
        "White box: loss attack (paper Alg. 1) and PIA query the denoiser (as CPSample guards it), so they model "
        "whoever holds the weights. Black box: sample-nn scores each candidate by the cosine distance of its "
        f"{settings.features} features to its nearest generated sample"
        + (f" ({first.n_samples} samples per method)" if first else "")
        + ", so it models anyone who sees the shared outputs and applies to every defence, rejection sampling "
        "included; its p is a one-sided Mann-Whitney U test (members closer), 'members copied' the share of "
        f"members with a near-copy (> {settings.threshold}) among the samples."
    )
    return {"rows": rows, "note": note, "figures": figures}
