"""Attacks that measure how much a diffusion model gives away about its training images.

`run_mia` (membership inference: loss attack and PIA, plain or guarded) is the one-call entry point.
"""

from cpsample.attacks.metrics import Separation, auc, separation, tpr_at_fpr, z_test
from cpsample.attacks.mia import (
    ATTACKS,
    DEFAULT_LOSS_TIMESTEPS,
    DEFAULT_PIA_TIMESTEPS,
    AttackResult,
    EpsPredictor,
    loss_attack,
    pia_attack,
    run_mia,
)
from cpsample.attacks.plots import plot_attacks

__all__ = ["ATTACKS", "DEFAULT_LOSS_TIMESTEPS", "DEFAULT_PIA_TIMESTEPS", "AttackResult", "EpsPredictor", "Separation", "auc",
           "loss_attack", "pia_attack", "plot_attacks", "run_mia", "separation", "tpr_at_fpr", "z_test"]
