"""The guidance-strategy interface: one small object that may change eps at each denoising step.

A strategy sees the current noisy batch x_t, the step t, abar_t and the denoiser's eps, and returns the eps to use,
through two hooks (`guided_eps` runs them in order):
- `correct`: a change that depends only on x_t and t (CPSample's push), applied to every eps the denoiser made at
  this step -- both halves under classifier-free guidance, before the mix, which passes it through unchanged. This
  is the part `cpsample.protect` can apply inside a diffusers UNet;
- `adjust`: a change that needs the final (mixed) eps, such as AMG's predicted-x0 search.
It records what it did per sample and step in `trace` (name -> list of per-step arrays), which samplers save.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
import torch

from cpsample.settings import check_bounds, option  # noqa: F401 (guards declare their options with option)


@dataclass(frozen=True)
class GuardOptions:
    """A guard's options as a validated config (the way diffusers guiders and scikit-learn estimators hold theirs).

    Subclasses declare fields with `option(default, help)` and refuse bad values in `check`; messages name an option
    as its CLI flag (--max-t), as TrainConfig's do. A guard whose knobs a calibration chooses names them in
    `calibrated` (left as None, `GuardSpec` fills them from the classifier's calibration.json, else `uncalibrated`),
    and in `variants` the calibration entries that name another guard to build instead (see sampling/spec.py)."""

    calibrated: ClassVar[tuple[str, ...]] = ()
    variants: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"--{item.name.replace('_', '-')} must be a finite number, got {value}")
        check_bounds(self)  # the range each option declares (option(..., min=, max=))
        self.check()

    def check(self) -> None:
        pass

    @classmethod
    def names(cls) -> list[str]:
        return [item.name for item in fields(cls)]

    @classmethod
    def uncalibrated(cls, latent: bool) -> dict:
        """The calibrated knobs' values where no calibration chose them (latent: for a latent-space classifier)."""
        return {}

    def knobs_given(self) -> bool:
        """Whether anything but the defaults was asked for (a calibrated variant is then not used)."""
        return any(getattr(self, item.name) != item.default for item in fields(self))


@dataclass(frozen=True)
class GuardContext:
    """What a guard may need beyond its options. model: a folder, "bundled" or a loaded DiffusionModel (AMG needs its
    members; None where the sampler is not ours, as in `cpsample.protect`); classifier: a folder, "bundled", a
    Classifier or a TimeClassifier (CPSample; None: "bundled"); members: where model is None, a call giving the
    members as the sampler's x (a pipeline's VAE latents), for guards that search them (AMG)."""

    model: "str | Path | object" = "bundled"
    classifier: "str | Path | object | None" = None
    device: str = "cpu"
    members: "Callable[[], torch.Tensor] | None" = None


# A differentiable denoiser for guards that follow a gradient through the UNet: (x_t, t) -> eps, or a CFG prediction.
Denoise = Callable[[torch.Tensor, torch.Tensor], object]


def context_model(context: GuardContext):
    """The DiffusionModel of a guard's context (loaded from its folder, or "bundled", when not loaded yet)."""
    from cpsample.models.pretrained import DiffusionModel  # (models import the sampling package)

    if isinstance(context.model, DiffusionModel):
        return context.model
    if context.model is None:
        raise ValueError(
            "this guard follows gradients through the denoiser (jacobian=true, or AMG), which a guard "
            "inside a pipeline's UNet (cpsample.protect, the latent path) cannot call; drop that option"
        )
    return DiffusionModel.from_pretrained(context.model, context.device)


def unconditional_denoiser(model) -> tuple[torch.nn.Module, Denoise]:
    """(the model's UNet with its weights frozen, (x_t, t) -> eps through it); a class-conditional UNet answers with
    its
    null label (its unconditional branch). Gradients flow to x_t only."""
    unet = model.unet.requires_grad_(False)
    if not model.conditional:
        return unet, lambda x, t: unet(x, t).sample
    null_label = model.class_info.null_label
    return unet, lambda x, t: unet(x, t, class_labels=torch.full((len(x),), null_label, device=x.device)).sample


def move_network(network: torch.nn.Module, device, dtype) -> None:
    """Move a network in place to device (None: it stays where it is) and dtype, the dtype only where it differs
    (diffusers warns about casting on every `.to(dtype)`, even a no-op one). The sampler's UNet, guards' networks
    and the attacks' models all move through here."""
    if device is not None:
        network.to(device=device)
    if any(parameter.dtype != dtype for parameter in network.parameters()):
        network.to(dtype=dtype)


def as_eps(prediction) -> torch.Tensor:
    """A denoiser's eps; a classifier-free-guidance prediction is mixed at its own scale."""
    if hasattr(prediction, "cond") and hasattr(prediction, "uncond"):
        return prediction.uncond + prediction.scale * (prediction.cond - prediction.uncond)
    return prediction


class Guard:
    name = "none"
    Options: type[GuardOptions] = GuardOptions  # no options
    uses_classifier = False  # guides with a classifier of the members (GuardContext.classifier), whose fit matters

    @classmethod
    def from_options(cls, options: GuardOptions, context: GuardContext) -> "Guard":
        """Build the guard from validated options (guards needing a classifier or training data override this)."""
        return cls(**{name: getattr(options, name) for name in options.names()})

    def __init__(self) -> None:
        self.trace: dict[str, list[np.ndarray]] = {}
        self.step_index, self.num_steps = 0, 0
        self.noise_levels: list[float] | None = None  # floats, not a tensor: not part of the guard's digest

    def begin_run(self, noise_levels: list[float]) -> None:
        """Told before each run the abar_t of its steps, in order (for strategies that look one step ahead)."""
        self.noise_levels = noise_levels

    def begin_step(self, index: int, count: int) -> None:
        """Told before each denoising step which step of how many it is (for strategies that act only early or
        late)."""
        self.step_index, self.num_steps = index, count

    def combine(
        self, eps_cond: torch.Tensor, eps_uncond: torch.Tensor, guidance_scale: float, t: torch.Tensor
    ) -> torch.Tensor:
        """Classifier-free guidance: how conditional and unconditional eps are mixed. Strategies may override."""
        return eps_uncond + guidance_scale * (eps_cond - eps_uncond)

    def reset(self) -> None:
        """Called before each batch; forget the last batch's trace."""
        self.trace = {}

    def record(self, **values: torch.Tensor) -> None:
        for key, value in values.items():
            self.trace.setdefault(key, []).append(value.detach().float().cpu().numpy())

    def correct(
        self, predictions: tuple[torch.Tensor, ...], x_t: torch.Tensor, t: torch.Tensor, abar_t: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """Change every eps of this step by the same x_t-only correction (see the module docstring)."""
        return predictions

    def adjust(self, eps: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, abar_t: torch.Tensor) -> torch.Tensor:
        return eps

    def settings(self) -> dict:
        return {"guard": self.name}

    def to(self, device: torch.device, dtype: torch.dtype) -> "Guard":
        return self

    def __repr__(self) -> str:
        """The guard's name and every knob it runs with (its `settings()`), plus what `describe()` adds."""
        knobs = {key: value for key, value in self.settings().items() if key != "guard"}
        parts = [repr(self.name)] + [f"{key}={value!r}" for key, value in {**knobs, **self.describe()}.items()]
        return f"{type(self).__name__}({', '.join(parts)})"

    def describe(self) -> dict:
        """What a repr tells besides the knobs (where a classifier and its calibration came from); none here."""
        return {}


class NoGuard(Guard):
    """Plain sampling."""


def run_noise_levels(scheduler) -> list[float]:
    """abar_t of each step of a scheduler's run, in order: what `Guard.begin_run` is told."""
    return [float(scheduler.alphas_cumprod[int(t)]) for t in scheduler.timesteps]


@dataclass
class CFGPrediction:
    """Both halves of a classifier-free-guidance call; the guard's `combine` mixes them into one eps."""

    cond: torch.Tensor
    uncond: torch.Tensor
    scale: float


def guided_eps(
    guard: Guard, prediction: "torch.Tensor | CFGPrediction", x_t: torch.Tensor, t: torch.Tensor, abar_t: torch.Tensor
) -> torch.Tensor:
    """The eps a sampler steps with: the guard's correction of each eps made, the CFG mix (if any), then `adjust`.

    x_t is what the denoiser saw (the scheduler's scaled model input); t holds one timestep per sample."""
    if isinstance(prediction, CFGPrediction):
        cond, uncond = guard.correct((prediction.cond, prediction.uncond), x_t, t, abar_t)
        eps = guard.combine(cond, uncond, prediction.scale, t)
    else:
        (eps,) = guard.correct((prediction,), x_t, t, abar_t)
    return guard.adjust(eps, x_t, t, abar_t)
