"""Attacks that measure how much a diffusion model gives away about its training images.

`run_mia` (membership inference: loss attack and PIA, plain or guarded) is the one-call entry point for the white-box
adversary who holds the weights; `run_sample_attack` (nearest generated sample, `SampleNNAttack`) for the black-box one
who sees only the samples, of any defence.
"""

from cpsample.attacks.membership import run_mia
from cpsample.attacks.metrics import Separation, auc, separation, tpr_at_fpr, z_test
from cpsample.attacks.mia import (
    ATTACKS,
    DEFAULT_LOSS_TIMESTEPS,
    DEFAULT_PIA_TIMESTEPS,
    AttackResult,
    EpsPredictor,
    loss_attack,
    pia_attack,
)
from cpsample.attacks.plots import plot_attacks
from cpsample.attacks.sample_nn import (
    SAMPLE_ATTACK,
    THREAT_MODELS,
    SampleAttackResult,
    SampleNNAttack,
    plot_sample_attacks,
    run_sample_attack,
)

__all__ = [
    "ATTACKS",
    "DEFAULT_LOSS_TIMESTEPS",
    "DEFAULT_PIA_TIMESTEPS",
    "SAMPLE_ATTACK",
    "THREAT_MODELS",
    "AttackResult",
    "EpsPredictor",
    "SampleAttackResult",
    "SampleNNAttack",
    "Separation",
    "auc",
    "loss_attack",
    "pia_attack",
    "plot_attacks",
    "plot_sample_attacks",
    "run_mia",
    "run_sample_attack",
    "separation",
    "tpr_at_fpr",
    "z_test",
]
