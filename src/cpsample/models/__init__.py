"""Models: the eps-predicting denoiser (diffusers UNet2DModel), the time-conditioned classifier, and both loaded
once."""

from cpsample.models.classifier import TimeClassifier, load_classifier
from cpsample.models.denoiser import (
    build_denoiser,
    build_noise_schedule,
    load_denoiser,
    load_noise_schedule,
    save_denoiser,
)
from cpsample.models.pretrained import Classifier, DiffusionModel

__all__ = [
    "Classifier",
    "DiffusionModel",
    "TimeClassifier",
    "build_denoiser",
    "build_noise_schedule",
    "load_classifier",
    "load_denoiser",
    "load_noise_schedule",
    "save_denoiser",
]
