"""From names to samples: resolve model folders, build the guard and scheduler, and run the sampler."""

from __future__ import annotations

from pathlib import Path

import torch

from cpsample.models import load_denoiser
from cpsample.models.bundle import resolve_model_dir
from cpsample.sampling.guards import GUARDS, AMGGuard, CPSampleGuard, Guard, NoGuard
from cpsample.sampling.sampler import DTYPES, SampleResult, batch_settings_file, make_scheduler, sample, unet_denoiser


def build_guard(guard: str, classifier: str = "bundled", alpha: float = 0.001, scale: float = 1000.0, tau: float = 0.001,
                device: str = "cpu", model: str = "bundled", amg_threshold: float = 0.95, amg_scale: float = 1000.0,
                amg_spec_scale: float = 10.0, transition_t: int | None = None, transition_fraction: float | None = None,
                dynamic_transition: bool = False, early_scale: float | None = None) -> Guard:
    """A guard by name, with the options that name uses (the others are ignored)."""
    if guard not in GUARDS:
        raise ValueError(f"unknown guard {guard!r}; choose one of {', '.join(GUARDS)}")
    if guard == "cpsample":
        from cpsample.training.classifier import load_classifier

        return CPSampleGuard(load_classifier(resolve_model_dir(classifier, "classifier"), device), alpha=alpha, scale=scale, tau=tau)
    if guard == "amg":  # needs the model's training images (and its UNet for the exact gradient)
        return AMGGuard.from_model_dir(model, device=device, threshold=amg_threshold, sim_scale=amg_scale, spec_scale=amg_spec_scale)
    if guard in ("delayed-cfg", "opposite-cfg"):
        options = {"transition_t": transition_t, "transition_fraction": transition_fraction, "dynamic": dynamic_transition}
        if early_scale is not None:
            options["early_scale"] = early_scale
        return GUARDS[guard](**options)
    if guard == "none":
        return NoGuard()
    raise ValueError(f"guard {guard!r} cannot be built by name")


def generate(model: str = "bundled", n: int = 64, steps: int = 50, scheduler: str = "ddim", guard: str | Guard = "none",
             classifier: str = "bundled", alpha: float = 0.001, scale: float = 1000.0, tau: float = 0.001, batch_size: int = 250,
             dtype: str = "float32", device: str = "cpu", seed: int = 0, work_dir: Path | None = None,
             progress: bool = True, guard_options: dict | None = None) -> SampleResult:
    """Sample n images from a denoiser folder; guard is a name (built with build_guard and guard_options) or a Guard."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    torch_dtype = DTYPES[dtype]
    unet, schedule = load_denoiser(resolve_model_dir(model, "denoiser"), device)
    if unet.config.num_class_embeds is not None:
        raise ValueError(f"{model} is a class-conditional model: sample it with `cpsample sample-conditional`")
    if unet.dtype != torch_dtype:  # (a same-dtype .to() makes diffusers print a warning)
        unet.to(dtype=torch_dtype)
    if isinstance(guard, str):
        guard = build_guard(guard, classifier, alpha, scale, tau, device, model=str(model), **(guard_options or {}))
    guard.to(torch.device(device), torch_dtype)
    make_scheduler(scheduler, schedule.config, steps)  # fail fast on a bad name
    if work_dir is not None:
        batch_settings_file(work_dir, {"model": str(model), "steps": steps, "scheduler": scheduler, "dtype": dtype,
                                       "seed": seed, "batch_size": batch_size, **guard.settings()})
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    return sample(unet_denoiser(unet), lambda: make_scheduler(scheduler, schedule.config, steps), n, shape, guard=guard,
                  batch_size=batch_size, seed=seed, device=device, dtype=torch_dtype, work_dir=work_dir, progress=progress)
