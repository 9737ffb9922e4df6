"""How to sample: `SampleConfig` and `Conditions`, whose documented fields are also `cpsample sample`'s options. Light
on purpose, so the command line can build its --help from them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cpsample.settings import (
    BATCH_SIZE_HELP,
    DENOISING_STEPS_HELP,
    KNOB_HELP,
    NEAR_COPY_THRESHOLD_HELP,
    device_option,
    option,
    seed_option,
)


@dataclass
class SampleConfig:
    """How to sample, whatever the model: n images (n per class or prompt where the adapter has conditions)."""

    n: int | None = option(
        64,
        "Number of images; per class or prompt for a conditional model (default: 64; 8 per class, 4 per prompt).",
        flag=("--n-samples", "-n"),
        min=1,
    )
    steps: int = option(50, DENOISING_STEPS_HELP, min=1)
    # None: the adapter's own (ddim for denoisers, the pipeline's for Stable Diffusion)
    scheduler: str | None = option(
        None,
        "ddim, ddpm or dpm++ (default ddim); a Stable Diffusion pipeline also takes pndm and default (its own, the "
        "default).",
    )
    batch_size: int = option(250, BATCH_SIZE_HELP, min=1)
    # None: the adapter's (float32 unless loaded otherwise)
    dtype: str | None = option(None, "float32, bfloat16 or float16.")
    device: str | None = device_option(None)  # None: where the adapter's model is
    seed: int = seed_option()
    work_dir: Path | None = None  # finished batches are kept here; a rerun with the same settings resumes
    overwrite: bool = False  # clear batches of other settings in work_dir instead of refusing them
    progress: bool = True


@dataclass
class Conditions:
    """What a conditional model is sampled for: class labels ('0,1,2' or 'all'), or prompts (and a file of them),
    with a classifier-free guidance scale (None: the model kind's default). All None: an unconditional model."""

    classes: str | None = option(
        None, "Class-conditional models: comma-separated class labels, or 'all' (the default)."
    )
    prompts: list[str] | None = option(None, "Stable Diffusion pipelines: a prompt (repeatable).", flag="--prompt")
    prompts_file: Path | None = option(
        None, "Stable Diffusion pipelines: one prompt per line ('original<TAB>modified': both)."
    )
    cfg_scale: float | None = option(
        None, "Classifier-free guidance scale of a conditional model (default 3 for classes, 7.5 for prompts)."
    )


@dataclass
class SdOptions:
    """sample-sd's own settings beside a SampleConfig: the guard's knobs (None: the classifier's calibration, else
    the latent default), the image size (None: the pipeline's), what to measure against and the plain comparison."""

    cfg_scale: float = option(7.5, "Classifier-free guidance scale.")
    alpha: float | None = option(None, KNOB_HELP["alpha"])
    scale: float | None = option(None, KNOB_HELP["scale"])
    tau: float | None = option(None, KNOB_HELP["tau"])
    height: int | None = option(None, "Image height (default: the pipeline's native size).")
    width: int | None = option(None, "Image width (default: the pipeline's native size).")
    private: Path | None = option(None, "Private images to measure similarity against (default: the classifier's).")
    copy_threshold: float | None = option(None, NEAR_COPY_THRESHOLD_HELP, flag="--threshold")
    compare_plain: bool = option(False, "Also sample without CPSample from the same noise, into OUT/plain.")
