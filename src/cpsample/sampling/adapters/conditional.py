"""Class-conditional denoisers (train-conditional) sampled with classifier-free guidance (paper App. B).

At each step the UNet is called once on [x_t, x_t] with [labels, null labels]; the guard's `combine` mixes the two
eps into the CFG prediction and its `adjust` applies CPSample with the random-label classifier on x_t, as in the
unconditional case. Batches are those of a pixel model, so a plain and a protected run with the same seed and labels
start from the same x_T.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from cpsample.models.denoiser import ClassInfo, read_class_info
from cpsample.models.pretrained import DiffusionModel
from cpsample.sampling.adapters.base import guard_name, needs_classifier, repeat_each
from cpsample.sampling.adapters.pixel import PixelAdapter, unet_config
from cpsample.sampling.guards import Guard, GuardContext
from cpsample.sampling.sampler import Batch, Denoise, cfg_denoiser, flat_batches

DEFAULT_CFG_SCALE = 3.0


@dataclass(eq=False)
class ConditionalAdapter(PixelAdapter):
    """A class-conditional denoiser: each image is conditioned on a class label, the null label being the CFG
    branch without one."""

    kind: ClassVar[str] = "conditional"
    description: ClassVar[str] = "a class-conditional denoiser"
    conditioning: ClassVar[str] = "labels"
    calls_per_image_step: ClassVar[int] = 2  # CFG: the labelled and the null-label eps

    labels: tuple[int, ...] | None = None  # the classes to sample, each n times (None: every class)
    guidance_scale: float = DEFAULT_CFG_SCALE

    def __post_init__(self):
        self.class_info  # a model without class embeddings is refused here, not half-way through sampling

    @classmethod
    def claims(cls, folder: Path) -> bool:
        config = unet_config(folder)
        return config is not None and config.get("num_class_embeds") is not None

    @classmethod
    def from_pretrained(cls, folder, device: str = "cpu", dtype: str = "float32", scheduler: str | None = None):
        return cls(DiffusionModel.from_pretrained(folder, device), scheduler or "ddim", dtype)

    @property
    def class_info(self) -> ClassInfo:
        if not self.model.conditional:
            read_class_info(self.folder, None)  # raises: this denoiser is not class-conditional
        return self.model.class_info

    def denoiser(self, conditions: list | None) -> Denoise:
        labels = torch.tensor(conditions, dtype=torch.long)
        return cfg_denoiser(self.model.unet, labels, self.guidance_scale, self.class_info.null_label)

    def context(self, device: str, classifier=None) -> GuardContext:
        # By folder: a guard that calls the denoiser (AMG) loads its own copy, whatever precision this one samples in.
        model = self.model if self.folder is None else str(self.folder)
        return GuardContext(model=model, classifier=classifier, device=device)

    def guard(self, spec, classifier=None, device: str = "cpu", **options) -> Guard:
        if needs_classifier(spec) and not classifier:
            # The bundled classifier knows the bundled unconditional model's members, not this model's.
            raise ValueError(
                f"--guard {guard_name(spec)} needs --classifier: train one on this model's members with "
                "`cpsample train-classifier --model MODEL --out DIR`"
            )
        return super().guard(spec, classifier, device, **options)

    def conditioned(self, conditions, guidance_scale: float | None = None) -> "ConditionalAdapter":
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        return replace(self, labels=tuple(self.class_info.check(conditions)), guidance_scale=scale)

    @property
    def classes(self) -> tuple[int, ...]:
        return tuple(range(self.class_info.num_classes)) if self.labels is None else self.labels

    def conditions_per_image(self, n: int) -> list:
        if not self.classes:
            raise ValueError("no class labels given: nothing to sample")
        return repeat_each(self.classes, n)

    def batches(self, n: int, batch_size: int, seed: int) -> list[Batch]:
        return flat_batches(len(self.classes) * n, batch_size, seed)

    def key_settings(self, n: int, conditions: list | None) -> dict:
        return {"labels": conditions, "cfg": self.guidance_scale}

    def result_fields(self, n: int, conditions: list | None) -> dict:
        return {"labels": np.asarray(conditions)}
