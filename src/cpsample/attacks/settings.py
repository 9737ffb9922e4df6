"""The attacks' settings: `Defence` (what an attack faces), `SideConfig`, `MiaSettings` and `SampleAttackSettings`,
whose documented fields are also the `cpsample attack` commands' options. Light on purpose (torch loads inside its
check), so the command line can build its --help from it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cpsample.evaluation.settings import FEATURES_HELP, TRUST_TORCHSCRIPT_HELP
from cpsample.settings import (
    BATCH_SIZE_HELP,
    KNOB_HELP,
    check_bounds,
    device_option,
    option,
    seed_option,
    threshold_option,
)

PAPER_COHESION = 0.5


@dataclass(frozen=True)
class Defence:
    """What an attack faces: the plain model ('none') or the CPSample-guarded one ('cpsample', with its classifier);
    knobs left None come from the classifier's calibration, else the paper's setting."""

    guard: str = option(
        "none", "The defence attacked: 'none' (the plain model) or 'cpsample' (guarded, --classifier)."
    )
    classifier: str | None = option(
        None, "CPSample classifier folder for --guard cpsample ('bundled' for the bundled model)."
    )
    alpha: float | None = option(None, KNOB_HELP["alpha"])
    scale: float | None = option(None, KNOB_HELP["scale"])
    tau: float | None = option(None, KNOB_HELP["tau"])


@dataclass
class SideConfig:
    samples: int = option(500, "Size of the sample pool that is clustered.", flag="--n-samples", min=1)
    clusters: int = option(20, "k-means clusters K over the sample pool (paper: 100).", min=1)
    min_cohesion: float = option(PAPER_COHESION, "Keep clusters whose mean cosine to their centroid is at least this.")
    min_cluster_size: int = option(2, min=1)  # a one-image cluster teaches the classifier nothing about a mode
    attack_steps: int = option(50, "Denoising steps for the pool and the guided samples.", min=1)
    scheduler: str = "ddim"
    train_steps: int = option(600, "Training steps of the surrogate time-dependent classifier.", min=1)
    train_batch_size: int = option(64, min=1)
    lr: float = 1e-3
    classifier_channels: tuple[int, ...] = (16, 32, 32)
    # lambda: extraction first rises, then falls; on the bundled 16x16 model, which copies half the time unguided, it
    # only falls: 76, 70, 46, 27 distinct at 0, 1, 3, 10
    attack_scale: float = option(1.0, "Attacker's classifier-guidance scale lambda (paper sweeps 0-50).", min=0.0)
    per_class: int = option(10, "Guided samples per surrogate class.", min=1)
    threshold: float | None = threshold_option()  # near-copy: pixel cosine strictly above this
    batch_size: int = option(250, BATCH_SIZE_HELP, min=1)
    seed: int = seed_option()

    def __post_init__(self):
        from cpsample.evaluation.nearcopy import resolve_threshold

        self.threshold = resolve_threshold(self.threshold, "pixels")

    def check(self) -> None:
        check_bounds(self)  # the counts >= 1 and the attack scale >= 0, as their options declare
        if self.clusters > self.samples:
            raise ValueError(f"SIDE: cannot form {self.clusters} clusters from {self.samples} samples")
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"SIDE: the near-copy threshold is a cosine similarity in [-1, 1], got {self.threshold}")


MEMBERS_HELP = "At most this many members, picked at random (default: all)."
NONMEMBERS_HELP = "Number of random non-members (default: as many as members)."


@dataclass
class MiaSettings:
    """`cpsample attack mia`'s attack: which, where, on how many images (recorded under these names)."""

    attack: str = option("both", "loss (paper Alg. 1 + Z-test), pia (Kong et al. 2024) or both.")
    t: list[int] | None = option(
        None, "Diffusion step(s) to attack at; repeat for several (default: loss 100, 200, 300; pia 200).", flag="--t"
    )
    members: int | None = option(None, MEMBERS_HELP, flag="--members")
    nonmembers: int | None = option(None, NONMEMBERS_HELP, flag="--nonmembers")
    draws: int = option(4, "Loss attack: noise draws averaged per image.", min=1)
    pia_norm: float = option(4.0, "PIA: the p of the l_p norm.")
    captions: Path | None = option(
        None, "Text-to-image pipelines: captions of the held-out images (image<TAB>caption lines)."
    )
    batch_size: int = option(128, BATCH_SIZE_HELP, min=1)
    dtype: str = option("float32", "float32, bfloat16 or float16.")
    device: str = device_option()
    seed: int = seed_option()


@dataclass(frozen=True)
class SampleAttackSettings:
    """`cpsample attack sample-nn`'s attack: on how many images, in which feature space (recorded under these
    names)."""

    members: int | None = option(None, MEMBERS_HELP, flag="--members")
    nonmembers: int | None = option(None, NONMEMBERS_HELP, flag="--nonmembers")
    features: str = option("pixels", FEATURES_HELP)
    threshold: float | None = threshold_option()
    trust_torchscript: bool = option(False, TRUST_TORCHSCRIPT_HELP)
    seed: int = seed_option()
