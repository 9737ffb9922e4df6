"""Pixel-space denoisers: an eps-predicting UNet2DModel with its noise schedule (a DDPMPipeline folder, as
train-denoiser writes it, or "bundled")."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from cpsample.models.pretrained import DiffusionModel
from cpsample.sampling.adapters.base import unconditional
from cpsample.sampling.checks import check_guard_fits
from cpsample.sampling.guards import Guard, GuardContext
from cpsample.sampling.guards.base import move_network
from cpsample.sampling.sampler import Batch, Denoise, flat_batches, make_scheduler, unet_denoiser
from cpsample.sampling.spec import resolve_guard


def unet_config(folder: Path) -> dict | None:
    """unet/config.json of a denoiser folder, or None where there is none (or it is unreadable)."""
    try:
        return json.loads((Path(folder) / "unet" / "config.json").read_text())
    except (OSError, ValueError):
        return None


@dataclass(eq=False)
class PixelAdapter:
    """An unconditional denoiser sampled in pixel space: x is the image, decoding only clamps it to [-1, 1]."""

    kind: ClassVar[str] = "pixel"
    description: ClassVar[str] = "an unconditional denoiser"
    conditioning: ClassVar[str] = "none"
    calls_per_image_step: ClassVar[int] = 1
    keeps_latents: ClassVar[bool] = False

    model: DiffusionModel
    scheduler_name: str = "ddim"
    dtype: str = "float32"

    @classmethod
    def claims(cls, folder: Path) -> bool:
        config = unet_config(folder)
        return config is not None and config.get("num_class_embeds") is None

    @classmethod
    def from_pretrained(cls, folder, device: str = "cpu", dtype: str = "float32", scheduler: str | None = None):
        return cls(DiffusionModel.from_pretrained(folder, device), scheduler or "ddim", dtype)

    @property
    def folder(self) -> Path | None:
        return self.model.folder

    @property
    def device(self) -> torch.device:
        return self.model.unet.device

    @property
    def network(self) -> torch.nn.Module:
        return self.model.unet

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        config = self.model.unet.config
        return (config.in_channels, config.sample_size, config.sample_size)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.sample_shape

    def scheduler(self, name: str, steps: int):
        return make_scheduler(name, self.model.schedule.config, steps)

    def denoiser(self, conditions: list | None) -> Denoise:
        return unet_denoiser(self.model.unet)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().clamp(-1.0, 1.0).cpu()

    def context(self, device: str, classifier=None) -> GuardContext:
        return GuardContext(model=self.model, classifier=classifier, device=device)

    def guard(self, spec, classifier=None, device: str = "cpu", **options) -> Guard:
        built = resolve_guard(spec, self.context(device, classifier), **options)
        check_guard_fits(built, self.model.unet, self.model.schedule, self.model.folder)
        return built

    def conditioned(self, conditions, guidance_scale: float | None = None) -> "PixelAdapter":
        raise unconditional(self.folder)

    def conditions_per_image(self, n: int) -> list | None:
        return None

    def batches(self, n: int, batch_size: int, seed: int) -> list[Batch]:
        return flat_batches(n, batch_size, seed)

    def key_settings(self, n: int, conditions: list | None) -> dict:
        return {"n": n}

    def result_fields(self, n: int, conditions: list | None) -> dict:
        return {}

    def cast(self, dtype: torch.dtype) -> None:
        move_network(self.model.unet, None, dtype)  # (the model stays on its device)
