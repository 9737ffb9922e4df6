"""Models loaded once and passed inward: a denoiser with everything known about it, and a CPSample classifier.

    model = DiffusionModel.from_pretrained("bundled")      # or a folder written by train-denoiser
    classifier = Classifier.from_pretrained("bundled")     # or a folder written by train-classifier
    model.members.images                                   # the member images, read on first use

Sampling, attacks and workflows take these objects as well as folder names, so a script that samples, attacks
and evaluates one model reads its weights and its data once.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel

from cpsample.data import ImageSet, Split
from cpsample.models.bundle import resolve_model_dir, training_data
from cpsample.models.classifier import TimeClassifier, load_classifier
from cpsample.models.denoiser import ClassInfo, load_denoiser, read_class_info, save_denoiser

RECORDS = ("split.json", "cpsample.json")  # what a model folder holds besides weights: its data and its history
CLASSIFIER_RECORDS = ("calibration.json", "cpsample.json", "split.json")


@dataclass(eq=False)
class DiffusionModel:
    """An eps-predicting UNet2DModel with its noise schedule and, when it came from a folder, its member split."""

    unet: UNet2DModel
    schedule: DDPMScheduler
    folder: Path | None = None
    _data: tuple[ImageSet, Split] | None = field(default=None, repr=False)

    @classmethod
    def from_pretrained(cls, spec: str | Path = "bundled", device: str | torch.device = "cpu") -> "DiffusionModel":
        folder = resolve_model_dir(spec, "denoiser")
        unet, schedule = load_denoiser(folder, device)
        return cls(unet, schedule, folder)

    def save_pretrained(self, folder: str | Path) -> Path:
        """The diffusers layout (unet/, scheduler/) plus the split and training record, so it loads back whole."""
        folder = Path(folder)
        save_denoiser(folder, self.unet, self.schedule)
        for name in RECORDS:
            if self.folder is not None and (self.folder / name).exists() and self.folder.resolve() != folder.resolve():
                shutil.copy2(self.folder / name, folder / name)
        return folder

    @property
    def conditional(self) -> bool:
        return self.unet.config.num_class_embeds is not None

    @cached_property
    def class_info(self) -> ClassInfo | None:
        return read_class_info(self.folder, self.unet.config.num_class_embeds) if self.conditional else None

    @property
    def split(self) -> Split:
        return self._training_data()[1]

    @cached_property
    def members(self) -> ImageSet:
        dataset, split = self._training_data()
        return dataset.take(split.members)

    @cached_property
    def nonmembers(self) -> ImageSet:
        dataset, split = self._training_data()
        return dataset.take(split.nonmembers)

    @property
    def dataset(self) -> ImageSet:
        return self._training_data()[0]

    def _training_data(self) -> tuple[ImageSet, Split]:
        if self._data is None:
            if self.folder is None:
                raise ValueError(
                    "this model was built in memory: it knows no member split (load it with from_pretrained)"
                )
            self._data = training_data(self.folder)
        return self._data


@dataclass(eq=False)
class Classifier:
    """CPSample's random-label classifier p(y | x_t, t) and the folder it came from (where its calibration lives)."""

    model: TimeClassifier
    folder: Path | None = None

    @classmethod
    def from_pretrained(cls, spec: str | Path = "bundled", device: str | torch.device = "cpu") -> "Classifier":
        folder = resolve_model_dir(spec, "classifier")
        return cls(load_classifier(folder, device), folder)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Weights (safetensors) in classifier/, plus the calibration and records the source folder had."""
        folder = Path(folder)
        self.model.save_pretrained(folder / "classifier", safe_serialization=True)
        for name in CLASSIFIER_RECORDS:
            if self.folder is not None and (self.folder / name).exists() and self.folder.resolve() != folder.resolve():
                shutil.copy2(self.folder / name, folder / name)
        if (
            self.folder is not None
            and (self.folder / "scheduler").is_dir()
            and self.folder.resolve() != folder.resolve()
        ):
            shutil.copytree(self.folder / "scheduler", folder / "scheduler", dirs_exist_ok=True)
        return folder
