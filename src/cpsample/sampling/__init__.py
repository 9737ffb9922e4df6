"""Sampling: one denoising loop for every scheduler, with pluggable guidance strategies (guards)."""

from cpsample.sampling.guards import GUARDS, CPSampleGuard, Guard, NoGuard
from cpsample.sampling.sampler import SCHEDULERS, SampleResult, make_scheduler, sample, sample_batch, unet_denoiser

__all__ = [
    "GUARDS",
    "SCHEDULERS",
    "CPSampleGuard",
    "Guard",
    "NoGuard",
    "SampleResult",
    "make_scheduler",
    "sample",
    "sample_batch",
    "unet_denoiser",
]
