"""Models: the eps-predicting denoiser (diffusers UNet2DModel) and the time-conditioned classifier."""

from cpsample.models.classifier import TimeClassifier
from cpsample.models.denoiser import build_denoiser, build_noise_schedule, load_denoiser, load_noise_schedule, save_denoiser

__all__ = ["TimeClassifier", "build_denoiser", "build_noise_schedule", "load_denoiser", "load_noise_schedule", "save_denoiser"]
