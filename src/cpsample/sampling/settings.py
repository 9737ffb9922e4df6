"""How to sample: `SampleConfig`, `Conditions` and `Comparison`, whose documented fields are also `cpsample sample`'s
options. Light on purpose, so the command line can build its --help from them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cpsample.settings import (
    BATCH_SIZE_HELP,
    DENOISING_STEPS_HELP,
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
    height: int | None = option(None, "Stable Diffusion pipelines: image height (default: the pipeline's own).")
    width: int | None = option(None, "Stable Diffusion pipelines: image width (default: the pipeline's own).")


@dataclass
class Comparison:
    """What `sample` sets its samples against: plain sampling from the same noise (OUT/plain), and, on a Stable
    Diffusion pipeline, the private images each prompt's samples are measured against (private.json, never the
    shareable cpsample.json; default: the latent classifier's)."""

    compare_plain: bool = option(False, "Also sample without the guard from the same noise, into OUT/plain.")
    private: Path | None = option(
        None,
        "Stable Diffusion pipelines: the private images to measure each prompt's samples against (default: the "
        "latent classifier's); the similarities go to private.json, never cpsample.json.",
    )
    copy_threshold: float | None = option(None, NEAR_COPY_THRESHOLD_HELP, flag="--threshold")


@dataclass(frozen=True)
class TinySd:
    """A tiny random-weight Stable Diffusion pipeline, to try the latent workflow offline (`cpsample make-tiny-sd`)."""

    image_size: int = option(32, "Image resolution; latents are half of it.")
    scheduler: str = option("pndm", "pndm (as Stable Diffusion v1) or ddim.")
    seed: int = seed_option()

    def __post_init__(self):
        if self.image_size < 4 or self.image_size % 4:
            raise ValueError(
                "--image-size must be a positive multiple of 4 (the VAE halves it, the UNet halves it again), got "
                f"{self.image_size}"
            )
