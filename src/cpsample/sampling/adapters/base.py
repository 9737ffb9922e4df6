"""What every model kind gives the one denoising loop: k-diffusion's model wrappers, one per model family.

An adapter wraps a loaded model so that `generate` (sampling/generate.py) draws every kind the same way: the
noise of each batch, the scheduler, a denoiser (x_t, t) -> eps (or a `CFGPrediction` under classifier-free
guidance) for the guard to see, and a decoder from the final x to images. What differs between kinds stays here:
the shape of x (pixels or latents), what an image is conditioned on (nothing, a class label, a prompt), how a guard
is built for the model and checked to fit it, and what the batch cache's key must hold.

A new model kind is one file with one such class, plus its line in `ADAPTERS` (adapters/__init__.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

import torch

from cpsample.sampling.guards import Guard, GuardContext, guard_class
from cpsample.sampling.sampler import Batch, Denoise


@runtime_checkable
class ModelAdapter(Protocol):
    """The call contract of one model kind (pixel DDPM, class-conditional with CFG, latent Stable Diffusion)."""

    kind: ClassVar[str]  # its name in ADAPTERS
    description: ClassVar[str]  # what such a model is, in words ("a Stable Diffusion pipeline")
    conditioning: ClassVar[str]  # what each image is conditioned on: "none", "labels" or "prompts"
    calls_per_image_step: ClassVar[int]  # denoiser evaluations per image and step (2 under CFG)
    keeps_latents: ClassVar[bool]  # the final x is a latent worth keeping beside the decoded images
    scheduler_name: str  # the scheduler `generate` uses unless its config names another
    dtype: str  # the dtype `generate` samples in unless its config names another

    @classmethod
    def claims(cls, folder: Path) -> bool:
        """Whether a model folder is of this kind (read from its model_index.json / unet config, no weights)."""

    @classmethod
    def from_pretrained(cls, folder: Path, device: str = "cpu", dtype: str = "float32", scheduler: str | None = None):
        """The adapter of the model in folder, loaded on device."""

    @property
    def folder(self) -> Path | None:
        """Where the model was loaded from (None: built in memory)."""

    @property
    def device(self) -> torch.device:
        """Where the model's weights are."""

    @property
    def network(self) -> torch.nn.Module:
        """The denoising network, whose weights key the batch cache."""

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the x the loop denoises (latents, for a latent model)."""

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the decoded images."""

    def scheduler(self, name: str, steps: int):
        """A scheduler of this model's noise schedule, ready for a run of `steps` steps (its history cleared)."""

    def denoiser(self, conditions: list | None) -> Denoise:
        """(x_t, t) -> eps or CFGPrediction for one batch whose images have these conditions (None: unconditional)."""

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """The final x of a batch -> its images, float32 on the CPU in [-1, 1]."""

    def context(self, device: str, classifier=None) -> GuardContext:
        """What a guard built for this model may use: the model (or None where a guard cannot call it), the
        classifier, the device."""

    def guard(self, spec, classifier=None, device: str = "cpu", **options) -> Guard:
        """The guard to sample this model with (a name built with options, a GuardSpec, or a ready Guard), checked
        to fit the model: every classifier it holds takes this model's x and shares its noise schedule."""

    def conditioned(self, conditions, guidance_scale: float | None = None) -> "ModelAdapter":
        """This adapter sampling these conditions (class labels, prompts), each `n` times; an error for a kind that
        takes none."""

    def conditions_per_image(self, n: int) -> list | None:
        """The condition of each image of a run of n per condition, in result order (None: unconditional)."""

    def batches(self, n: int, batch_size: int, seed: int) -> list[Batch]:
        """The run's batches in result order, each with its noise seed."""

    def key_settings(self, n: int, conditions: list | None) -> dict:
        """What the batch cache's key must hold about this model and its conditions, beyond the loop settings."""

    def result_fields(self, n: int, conditions: list | None) -> dict:
        """The kind's own SampleResult fields (labels; prompts and prompt_index)."""

    def cast(self, dtype: torch.dtype) -> None:
        """Cast the model's networks in place to dtype (sampling precision)."""


def repeat_each(conditions, n: int) -> list:
    """Each condition n times, in order: [a, b] -> [a, a, b, b] for n = 2."""
    return [condition for condition in conditions for _ in range(n)]


def unconditional(folder: Path | None) -> ValueError:
    """The error for class labels or prompts given to a model that takes none."""
    return ValueError(f"{folder or 'this model'} is an unconditional denoiser: it takes no class labels or prompts")


def guard_name(spec) -> str | None:
    """The name of a guard still to be built (a name or a GuardSpec); None for a ready Guard, which holds its own
    classifier."""
    return spec if isinstance(spec, str) else None if isinstance(spec, Guard) else getattr(spec, "name", None)


def needs_classifier(spec) -> bool:
    """Whether a guard still to be built (a name or a GuardSpec) guides with a classifier of the members (so one must
    be given for a model that has no bundled one)."""
    name = guard_name(spec)
    return name is not None and guard_class(name).uses_classifier
