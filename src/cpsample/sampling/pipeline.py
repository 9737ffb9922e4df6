"""The pixel denoiser's entry point of old, now a thin wrapper over `generate(adapter, spec, config)`; the checks
every entry point makes live in checks.py (importable from here for one release)."""

from __future__ import annotations

from pathlib import Path

from cpsample.models.pretrained import Classifier, DiffusionModel
from cpsample.sampling.adapters.pixel import PixelAdapter
from cpsample.sampling.checks import (  # noqa: F401 (their old home: callers import them from here)
    check_classifier_fits,
    check_device,
    check_guard_fits,
    check_same_schedule,
    check_scheduler,
    model_folder_of,
)
from cpsample.sampling.generate import SampleConfig, as_spec, torch_dtype
from cpsample.sampling.generate import generate as generate_with
from cpsample.sampling.guards import Guard
from cpsample.sampling.sampler import SampleResult


def guard_for_model(model: DiffusionModel, guard: str | Guard, classifier, device: str = "cpu", **options) -> Guard:
    """The guard a command samples or attacks `model` with (a name built with its options, or a ready Guard), checked
    to fit the model (check_guard_fits): the model's adapter's guard (PixelAdapter.guard)."""
    return PixelAdapter(model).guard(guard, classifier, device, **options)


def generate(
    model: str | DiffusionModel = "bundled",
    n: int = 64,
    steps: int = 50,
    scheduler: str = "ddim",
    guard: str | Guard = "none",
    classifier: str | Classifier = "bundled",
    batch_size: int = 250,
    dtype: str = "float32",
    device: str = "cpu",
    seed: int = 0,
    work_dir: Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
    **guard_options,
) -> SampleResult:
    """Sample n images from a denoiser (a folder, "bundled" or a loaded DiffusionModel, used as is: cast in place if
    dtype differs); guard is a Guard or a name built with its guard_options (e.g. alpha=0.1; see `cpsample guards`),
    options left out taking the guard's defaults.

    With work_dir, finished batches are kept there: a rerun with the same settings resumes, other settings are
    refused unless overwrite=True (which clears the old batches).

    Kept for one release: this is generate(PixelAdapter(model), as_spec(guard, **guard_options), SampleConfig(...),
    classifier) (sampling/generate.py), which samples every model kind."""
    torch_dtype(dtype)
    check_device(device)
    loaded = model if isinstance(model, DiffusionModel) else DiffusionModel.from_pretrained(model, device)
    if loaded.conditional:
        raise ValueError(
            f"{loaded.folder or 'this model'} is a class-conditional model: sample it with `cpsample sample --classes`"
        )
    config = SampleConfig(
        n=n,
        steps=steps,
        scheduler=scheduler,
        batch_size=batch_size,
        dtype=dtype,
        device=device,
        seed=seed,
        work_dir=work_dir,
        overwrite=overwrite,
        progress=progress,
    )
    return generate_with(PixelAdapter(loaded, scheduler, dtype), as_spec(guard, **guard_options), config, classifier)
