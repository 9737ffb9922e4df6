"""Sample a class-conditional denoiser with classifier-free guidance, optionally protected by CPSample (App. B).

The model kind itself is adapters/conditional.py (ConditionalAdapter); this module keeps the helpers the commands
use (loading, parsing --classes) and, for one release, `generate_conditional`, a thin wrapper over `generate`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cpsample.models import load_denoiser
from cpsample.models.bundle import resolve_model_dir
from cpsample.models.denoiser import ClassInfo, read_class_info
from cpsample.sampling.adapters.conditional import DEFAULT_CFG_SCALE, ConditionalAdapter
from cpsample.sampling.checks import check_device
from cpsample.sampling.generate import SampleConfig, as_spec, generate, torch_dtype
from cpsample.sampling.guards import Guard
from cpsample.sampling.sampler import SampleResult, cfg_denoiser, sample

__all__ = ["DEFAULT_CFG_SCALE", "generate_conditional", "load_conditional", "parse_classes", "sample_labels"]


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
    settings are refused unless overwrite=True (which clears the old batches).

    Kept for one release: this is generate(load_adapter(model_dir).conditioned(class_labels, guidance_scale), guard,
    SampleConfig(n=1, ...), classifier) (sampling/generate.py), which samples every model kind."""
    torch_dtype(dtype)
    check_device(device)
    adapter = ConditionalAdapter.from_pretrained(model_dir, device, dtype, scheduler)
    config = SampleConfig(
        n=1,  # class_labels holds one label per image
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
    spec = as_spec(guard, **guard_options)
    return generate(adapter.conditioned(class_labels, guidance_scale), spec, config, classifier)


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
