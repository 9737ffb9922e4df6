"""Sample a class-conditional denoiser with classifier-free guidance, optionally protected by CPSample (App. B).

At each step the UNet is called once on [x_t, x_t] with [labels, null labels]; the guard's `combine` mixes the two
eps into the CFG prediction and then `adjust` applies CPSample with the same random-label classifier on x_t as in
the unconditional case. Batch b starts from noise seeded by (seed, b) exactly as `sampler.sample` does, so a
plain and a protected run with the same seed and labels start from the same x_T.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cpsample.models import load_denoiser
from cpsample.models.bundle import resolve_model_dir
from cpsample.models.denoiser import ClassInfo, read_class_info
from cpsample.sampling.guards import Guard, GuardContext
from cpsample.sampling.guards.base import move_network
from cpsample.sampling.pipeline import check_device, check_guard_fits
from cpsample.sampling.sampler import (
    DTYPES,
    SampleResult,
    batch_settings_file,
    cfg_denoiser,
    make_scheduler,
    sample,
    sampling_key,
)
from cpsample.sampling.spec import resolve_guard

DEFAULT_CFG_SCALE = 3.0


def load_conditional(model_dir: str | Path, device: str = "cpu"):
    """(unet, noise schedule, ClassInfo) for a folder written by train-conditional."""
    folder = resolve_model_dir(model_dir, "denoiser")
    unet, schedule = load_denoiser(folder, device)
    return unet, schedule, read_class_info(folder, unet.config.num_class_embeds)


def parse_classes(text: str | None, info: ClassInfo) -> list[int]:
    """'0,3,7' -> [0, 3, 7]; None or 'all' -> every class the model knows."""
    if text is None or text.strip().lower() == "all":
        return list(range(info.num_classes))
    try:
        classes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--classes must be comma-separated integers, got {text!r}") from None
    if not classes:
        raise ValueError("--classes is empty")
    return info.check(classes)


def generate_conditional(
    model_dir: str | Path,
    class_labels,
    guidance_scale: float = DEFAULT_CFG_SCALE,
    guard: str | Guard = "none",
    scheduler: str = "ddim",
    steps: int = 50,
    seed: int = 0,
    classifier: str | None = None,
    batch_size: int = 250,
    dtype: str = "float32",
    device: str = "cpu",
    progress: bool = True,
    work_dir: Path | None = None,
    overwrite: bool = False,
    **guard_options,
) -> SampleResult:
    """One image per entry of class_labels, with CFG at guidance_scale and the guard (a Guard, or a name built with
    guard_options such as alpha=0.1 or transition_t=500) applied around the CFG mix.

    With work_dir, finished batches are kept there and a rerun with the same settings resumes after a kill; other
    settings are refused unless overwrite=True (which clears the old batches)."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    check_device(device)
    unet, schedule, info = load_conditional(model_dir, device)
    labels = info.check(class_labels)
    if not labels:
        raise ValueError("no class labels given: nothing to sample")
    torch_dtype = DTYPES[dtype]
    guard = _resolve_guard(guard, classifier, device, str(model_dir), guard_options)
    check_guard_fits(guard, unet, schedule, resolve_model_dir(model_dir, "denoiser"))
    first_scheduler = make_scheduler(scheduler, schedule.config, steps)  # fail fast on a bad name
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    if work_dir is not None:  # the key hashes the weights before any dtype cast
        batch_settings_file(
            work_dir,
            sampling_key(
                unet,
                guard,
                first_scheduler,
                labels=labels,
                cfg=guidance_scale,
                steps=steps,
                scheduler=scheduler,
                dtype=dtype,
                seed=seed,
                batch_size=batch_size,
            ),
            overwrite,
        )
    move_network(unet, None, torch_dtype)  # (a loaded model stays on its device)
    guard.to(torch.device(device), torch_dtype)
    return sample_labels(
        unet,
        labels,
        info.null_label,
        lambda: make_scheduler(scheduler, schedule.config, steps),
        shape,
        guidance_scale,
        guard,
        batch_size,
        seed,
        device,
        torch_dtype,
        progress,
        work_dir,
    )


def sample_labels(
    unet,
    labels: list[int],
    null_label: int,
    scheduler_factory,
    image_shape: tuple,
    guidance_scale: float,
    guard: Guard,
    batch_size: int = 250,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    work_dir: Path | None = None,
) -> SampleResult:
    """The shared sampling loop (seeding, batch cache, resume), each batch with a CFG denoiser holding its labels."""
    label_tensor = torch.tensor(labels, dtype=torch.long)

    def denoiser_for(start: int, size: int):
        return cfg_denoiser(unet, label_tensor[start : start + size].to(device), guidance_scale, null_label)

    return sample(
        None,
        scheduler_factory,
        len(labels),
        image_shape,
        guard=guard,
        batch_size=batch_size,
        seed=seed,
        device=device,
        dtype=dtype,
        work_dir=work_dir,
        progress=progress,
        batch_denoiser=denoiser_for,
        calls_per_image_step=2,
    )  # CFG: two eps per image and step


def _resolve_guard(guard: str | Guard, classifier: str | None, device: str, model: str, options: dict) -> Guard:
    if guard == "cpsample" and not classifier:
        # The bundled classifier knows the bundled unconditional model's members, not this model's.
        raise ValueError(
            "--guard cpsample needs --classifier: train one on this model's members with "
            "`cpsample train-classifier --denoiser MODEL --out DIR`"
        )
    return resolve_guard(guard, GuardContext(model=model, classifier=classifier, device=device), **options)
