"""Attacks that measure how much a diffusion model gives away about its training images.

`run_mia` (membership inference: loss attack and PIA, plain or guarded) is the one-call entry point for the white-box
adversary who holds the weights; `run_sample_attack` (nearest generated sample, `SampleNNAttack`) for the black-box one
who sees only the samples, of any defence.
"""

from cpsample import imported_on_first_use

# Each name is imported on first use, so the command line can read the attacks' settings without loading torch.
_API = {
    "run_mia": "cpsample.attacks.membership",
    "Separation": "cpsample.attacks.metrics",
    "auc": "cpsample.attacks.metrics",
    "separation": "cpsample.attacks.metrics",
    "tpr_at_fpr": "cpsample.attacks.metrics",
    "z_test": "cpsample.attacks.metrics",
    "ATTACKS": "cpsample.attacks.mia",
    "DEFAULT_LOSS_TIMESTEPS": "cpsample.attacks.mia",
    "DEFAULT_PIA_TIMESTEPS": "cpsample.attacks.mia",
    "AttackResult": "cpsample.attacks.mia",
    "EpsPredictor": "cpsample.attacks.mia",
    "loss_attack": "cpsample.attacks.mia",
    "pia_attack": "cpsample.attacks.mia",
    "plot_attacks": "cpsample.attacks.plots",
    "SAMPLE_ATTACK": "cpsample.attacks.sample_nn",
    "THREAT_MODELS": "cpsample.attacks.sample_nn",
    "SampleAttackResult": "cpsample.attacks.sample_nn",
    "SampleNNAttack": "cpsample.attacks.sample_nn",
    "plot_sample_attacks": "cpsample.attacks.sample_nn",
    "run_sample_attack": "cpsample.attacks.sample_nn",
}

__all__ = sorted(_API)


__getattr__ = imported_on_first_use(__name__, _API)
