"""From names to samples: resolve model folders, build the guard and scheduler, and run the sampler."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from cpsample.data import Split
from cpsample.models import load_denoiser, load_noise_schedule
from cpsample.models.bundle import resolve_model_dir
from cpsample.sampling.guards import GUARDS, AMGGuard, CPSampleGuard, Guard, NoGuard
from cpsample.sampling.guards.cpsample import cpsample_settings
from cpsample.sampling.sampler import DTYPES, SampleResult, batch_settings_file, make_scheduler, sample, sampling_key, unet_denoiser


def build_guard(guard: str, classifier: str = "bundled", alpha: float | None = None, scale: float | None = None,
                tau: float | None = None, device: str = "cpu", model: str = "bundled", amg_threshold: float = 0.95,
                amg_scale: float = 1000.0, amg_spec_scale: float = 10.0, transition_t: int | None = None,
                transition_fraction: float | None = None, dynamic_transition: bool = False,
                early_scale: float | None = None, max_t: int | None = None) -> Guard:
    """A guard by name, with the options that name uses (the others are ignored).

    CPSample's knobs left as None come from the classifier's calibration (see `cpsample_settings`)."""
    if guard not in GUARDS:
        raise ValueError(f"unknown guard {guard!r}; choose one of {', '.join(GUARDS)}")
    check_guard_knobs(guard, alpha=alpha, scale=scale, tau=tau, amg_threshold=amg_threshold, amg_scale=amg_scale)
    if guard == "cpsample":
        from cpsample.models.classifier import load_classifier

        folder = resolve_model_dir(classifier, "classifier")
        return CPSampleGuard(load_classifier(folder, device), **cpsample_settings(folder, alpha, scale, tau, max_t))
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


def check_device(device: str) -> None:
    """--device cuda on a machine without CUDA: one clear line, not a traceback from deep inside torch."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a torch device; use cpu, cuda or cuda:1 ...") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: torch sees no CUDA GPU on this machine; use --device cpu")


def check_guard_knobs(guard: str, **knobs: float) -> None:
    """NaN or infinite knobs (and tau <= 0, where log(tau + p) is -inf at p = 0) give NaN samples: refuse them."""
    for name, value in knobs.items():
        if value is not None and not math.isfinite(value):
            raise ValueError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
    if guard == "cpsample" and knobs.get("tau") is not None and knobs["tau"] <= 0:
        raise ValueError(f"--tau must be positive (log(tau + p) needs tau > 0), got {knobs['tau']}")


def check_guard_fits(guard: Guard, unet, schedule, model_dir: Path, classifier_dir: Path | None = None) -> None:
    """A classifier made for other images protects nothing (or crashes): it must take this model's image size and
    channels and, when its folder is known, share the model's noise schedule and member split."""
    classifier = getattr(guard, "classifier", None)
    if classifier is None:
        return
    expected = (unet.config.in_channels, unet.config.sample_size)
    found = (classifier.config.in_channels, classifier.config.sample_size)
    fix = "train one on this model's members with `cpsample train-classifier --denoiser MODEL`"
    if found != expected:
        raise ValueError(f"the classifier takes {found[0]}-channel {found[1]}x{found[1]} inputs but this model makes "
                         f"{expected[0]}-channel {expected[1]}x{expected[1]} images; {fix}")
    if classifier_dir is None:
        return
    if (Path(classifier_dir) / "scheduler").exists():
        theirs = load_noise_schedule(classifier_dir).alphas_cumprod
        if theirs.shape != schedule.alphas_cumprod.shape or not torch.allclose(theirs, schedule.alphas_cumprod):
            raise ValueError(f"{classifier_dir}: the classifier was trained with another noise schedule than {model_dir}; {fix}")
    splits = [Path(folder) / "split.json" for folder in (model_dir, classifier_dir)]
    if all(path.exists() for path in splits):
        model_split, classifier_split = (Split.load(path) for path in splits)
        if (model_split.source, model_split.members) != (classifier_split.source, classifier_split.members):
            raise ValueError(f"{classifier_dir}: the classifier was trained on other member images than {model_dir} "
                             f"({classifier_split.source}, {len(classifier_split.members)} members vs "
                             f"{model_split.source}, {len(model_split.members)}); {fix}")


def generate(model: str = "bundled", n: int = 64, steps: int = 50, scheduler: str = "ddim", guard: str | Guard = "none",
             classifier: str = "bundled", alpha: float | None = None, scale: float | None = None, tau: float | None = None,
             batch_size: int = 250,
             dtype: str = "float32", device: str = "cpu", seed: int = 0, work_dir: Path | None = None,
             progress: bool = True, guard_options: dict | None = None, overwrite: bool = False) -> SampleResult:
    """Sample n images from a denoiser folder; guard is a name (built with build_guard and guard_options) or a Guard.

    With work_dir, finished batches are kept there: a rerun with the same settings resumes, other settings are
    refused unless overwrite=True (which clears the old batches)."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    check_device(device)
    torch_dtype = DTYPES[dtype]
    model_dir = resolve_model_dir(model, "denoiser")
    unet, schedule = load_denoiser(model_dir, device)
    if unet.config.num_class_embeds is not None:
        raise ValueError(f"{model} is a class-conditional model: sample it with `cpsample sample-conditional`")
    classifier_dir = None
    if isinstance(guard, str):
        classifier_dir = resolve_model_dir(classifier, "classifier") if guard == "cpsample" else None
        guard = build_guard(guard, classifier, alpha, scale, tau, device, model=str(model), **(guard_options or {}))
    check_guard_fits(guard, unet, schedule, model_dir, classifier_dir)
    first_scheduler = make_scheduler(scheduler, schedule.config, steps)  # fail fast on a bad name
    if work_dir is not None:  # the key hashes the weights before any dtype cast
        batch_settings_file(work_dir, sampling_key(unet, guard, first_scheduler, n=n, steps=steps, scheduler=scheduler,
                                                   dtype=dtype, seed=seed, batch_size=batch_size), overwrite)
    if unet.dtype != torch_dtype:  # (a same-dtype .to() makes diffusers print a warning)
        unet.to(dtype=torch_dtype)
    guard.to(torch.device(device), torch_dtype)
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    return sample(unet_denoiser(unet), lambda: make_scheduler(scheduler, schedule.config, steps), n, shape, guard=guard,
                  batch_size=batch_size, seed=seed, device=device, dtype=torch_dtype, work_dir=work_dir, progress=progress)
