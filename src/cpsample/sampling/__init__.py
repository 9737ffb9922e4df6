"""Sampling: one denoising loop for every scheduler, with pluggable guidance strategies (guards)."""

from cpsample import imported_on_first_use

# Each name is imported on first use, so the command line can read the sampling settings without loading torch.
_API = {
    "GUARDS": "cpsample.sampling.guards",
    "CPSampleGuard": "cpsample.sampling.guards",
    "Guard": "cpsample.sampling.guards",
    "NoGuard": "cpsample.sampling.guards",
    "SCHEDULERS": "cpsample.sampling.sampler",
    "SampleResult": "cpsample.sampling.sampler",
    "make_scheduler": "cpsample.sampling.sampler",
    "sample": "cpsample.sampling.sampler",
    "sample_batch": "cpsample.sampling.sampler",
    "unet_denoiser": "cpsample.sampling.sampler",
}

__all__ = sorted(_API)


__getattr__ = imported_on_first_use(__name__, _API)
