"""Text-to-image Stable Diffusion pipelines, sampled in their VAE's latent space (paper section 4.2, Fig. 7, Table 2).

The pipeline's own components run through cpsample's one denoising loop, so any guard that needs no gradient through
the UNet works here: text encoder -> UNet on [x_t, x_t] -> guard.correct on both halves (CPSample's push on the
latent x_t) -> guard.combine (CFG) -> guard.adjust -> the pipeline's scheduler -> VAE decoder. A guard's classifier
is a TimeClassifier on latents (4 channels) trained by `cpsample train-latent-classifier` on the VAE latents of a
private image set, so only that subset is protected.

Each prompt's images come in chunks of at most batch_size; chunk k of every prompt starts from the noise of
seed + k * CHUNK_SEED_STRIDE, so the images of two prompts, or of a plain and a protected run, differ only through
the prompt and the guard. Everything loads from local folders (`local_files_only=True`). Needs `transformers` (the
`latent` extra).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from cpsample.models.bundle import resolve_model_dir
from cpsample.models.denoiser import DDPM_PIPELINE, PIPELINE_INDEX, is_sd_pipeline, pipeline_class
from cpsample.sampling.adapters.base import guard_name, needs_classifier, repeat_each
from cpsample.sampling.checks import check_same_schedule, check_scheduler
from cpsample.sampling.guards import CPSampleGuard, Guard, GuardContext
from cpsample.sampling.guards.base import CFGPrediction
from cpsample.sampling.latent_pairing import check_latent_pairing
from cpsample.sampling.protect import protection_of
from cpsample.sampling.sampler import DTYPES, Batch, Denoise, weights_digest, without_x0_clipping
from cpsample.sampling.spec import resolve_guard

SD_SCHEDULERS = ("default", "ddim", "pndm", "ddpm", "dpm++")
DEFAULT_SD_CFG_SCALE = 7.5
# Chunk k of a prompt's images starts from the noise of seed + k * CHUNK_SEED_STRIDE: chunk 0 is the noise of `seed`
# itself, and no chunk meets another run's (calibrate's confirmation round: seed + 1000).
CHUNK_SEED_STRIDE = 100_003
RETRAIN = "train it with `cpsample train-latent-classifier --model` on this pipeline"


def load_sd_pipeline(folder: str | Path, scheduler: str = "default", device: str = "cpu", dtype: str = "float32"):
    """A StableDiffusionPipeline from a local folder only (never the hub), without the safety checker."""
    folder = Path(folder)
    if not (folder / PIPELINE_INDEX).is_file():
        raise FileNotFoundError(
            f"{folder}: no diffusers pipeline here (expected {PIPELINE_INDEX}, as written by "
            "save_pretrained or `cpsample make-tiny-sd`)"
        )
    if not is_sd_pipeline(folder):
        raise ValueError(
            f"{folder}: cannot load the Stable Diffusion pipeline: {PIPELINE_INDEX} names a "
            f"{pipeline_class(folder)}, not a Stable Diffusion pipeline"
            + (
                "; it is a pixel-space denoiser: sample it with `cpsample sample --model`"
                if pipeline_class(folder) == DDPM_PIPELINE
                else ""
            )
        )
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    from diffusers import StableDiffusionPipeline

    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            folder,
            local_files_only=True,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            use_safetensors=True,
        )
    except Exception as error:  # bad model_index.json, pickled .bin only, truncated weights: a damaged pipeline
        detail = " ".join(str(error).split())[:160]
        raise ValueError(
            f"{folder}: cannot load the Stable Diffusion pipeline ({type(error).__name__}: {detail}); it "
            f"needs a valid {PIPELINE_INDEX} and .safetensors weights in each part (pickled .bin weights "
            "are never loaded)"
        ) from None
    check_scheduler(pipe.scheduler, f"{folder}'s scheduler predicts")
    pipe.scheduler = swap_scheduler(pipe.scheduler, scheduler)
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device)
    if pipe.unet.dtype != DTYPES[dtype]:
        # .to(dtype) rather than from_pretrained's dtype keyword, whose name changed across diffusers versions.
        pipe = pipe.to(dtype=DTYPES[dtype])
    return pipe


def swap_scheduler(current, name: str):
    """The pipeline's own scheduler ('default') or another one sharing its noise schedule, without x0 clipping."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, PNDMScheduler

    choices = {
        "ddim": DDIMScheduler,
        "pndm": PNDMScheduler,
        "ddpm": DDPMScheduler,
        "dpm++": DPMSolverMultistepScheduler,
    }
    if name == "default":
        return type(current).from_config(without_x0_clipping(current.config))
    if name not in choices:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SD_SCHEDULERS)}")
    extra = {"algorithm_type": "dpmsolver++"} if name == "dpm++" else {}
    return choices[name].from_config(without_x0_clipping(current.config), **extra)


def latent_shape(pipe, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
    """(channels, h, w) of the latents for an image of height x width (default: the UNet's native size)."""
    factor = pipe.vae_scale_factor
    height = height or pipe.unet.config.sample_size * factor
    width = width or pipe.unet.config.sample_size * factor
    if height % factor or width % factor:
        raise ValueError(
            f"height and width must be multiples of {factor} (the VAE's downscaling), got {height}x{width}"
        )
    return pipe.unet.config.in_channels, height // factor, width // factor


def build_latent_guard(
    classifier_dir: str | Path,
    pipe,
    alpha: float | None = None,
    scale: float | None = None,
    tau: float | None = None,
    height: int | None = None,
    width: int | None = None,
) -> CPSampleGuard:
    """CPSample with a latent classifier, after checking that it was trained for this pipeline's latents and schedule.

    Knobs left as None come from the classifier's calibration (see `GuardSpec`)."""
    from cpsample.sampling.guards import GuardContext
    from cpsample.sampling.spec import build_guard

    check_latent_pairing(classifier_dir, pipe)
    guard = build_guard(
        "cpsample",
        GuardContext(model=None, classifier=classifier_dir, device=str(pipe.device)),
        alpha=alpha,
        scale=scale,
        tau=tau,
    )
    check_latent_classifier(guard.classifier, pipe, height, width)
    check_same_schedule(
        Path(classifier_dir),
        pipe.scheduler,
        "train it with `cpsample train-latent-classifier --model` on this pipeline",
        "this pipeline's",
    )
    return guard


def check_latent_classifier(classifier, pipe, height: int | None = None, width: int | None = None) -> None:
    channels, h, w = latent_shape(pipe, height, width)
    found = classifier.config.in_channels
    if found != channels:
        raise ValueError(
            f"the classifier takes {found}-channel inputs but this pipeline's latents have {channels} channels; "
            "train it on VAE latents with `cpsample train-latent-classifier`"
        )
    size = classifier.config.sample_size
    if (h, w) != (size, size):
        raise ValueError(
            f"the classifier was trained on {size}x{size} latents but these are {h}x{w}; sample at "
            f"{size * pipe.vae_scale_factor}x{size * pipe.vae_scale_factor} pixels (--height/--width)"
        )


def sd_denoiser(pipe, cond: torch.Tensor, uncond: torch.Tensor, guidance_scale: float):
    """The UNet on [x_t, x_t] with [negative, prompt] text embeddings: both halves of classifier-free guidance."""
    text = torch.cat([uncond, cond])

    def denoise(x, t):
        # One timestep for the batch, as the pipeline passes it (the UNet broadcasts it).
        eps_uncond, eps_cond = pipe.unet(torch.cat([x, x]), t[0], encoder_hidden_states=text).sample.chunk(2)
        return CFGPrediction(eps_cond, eps_uncond, guidance_scale)

    return denoise


def empty_prompt_denoiser(pipe) -> Denoise:
    """The UNet conditioned on the empty prompt alone: the model as an attacker without its captions samples it."""
    empty, _ = pipe.encode_prompt("", pipe.device, 1, False)

    def denoise(x, t):
        return pipe.unet(x, t, encoder_hidden_states=empty.expand(len(x), -1, -1)).sample

    return denoise


@torch.no_grad()
def decode_latents(pipe, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> images in [-1, 1] (float32, CPU) with the pipeline's VAE."""
    images = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
    return images.float().clamp(-1.0, 1.0).cpu()


@dataclass(eq=False)
class LatentAdapter:
    """A Stable Diffusion pipeline: x is the VAE latent, each image is conditioned on a prompt (with CFG against the
    negative prompt), and decoding runs the VAE."""

    kind: ClassVar[str] = "latent"
    description: ClassVar[str] = "a Stable Diffusion pipeline"
    conditioning: ClassVar[str] = "prompts"
    calls_per_image_step: ClassVar[int] = 2  # the UNet on [x_t, x_t]: the negative and the prompt's eps
    keeps_latents: ClassVar[bool] = True

    pipe: object
    prompts: tuple[str, ...] = ()  # each sampled n times
    guidance_scale: float = DEFAULT_SD_CFG_SCALE
    height: int | None = None  # image size (None: the pipeline's native one)
    width: int | None = None
    negative_prompt: str = ""
    scheduler_name: str = "default"  # the pipeline's scheduler as loaded

    def __post_init__(self):
        if protection_of(self.pipe) is not None:
            raise ValueError(
                "this pipeline was protected with cpsample.protect; sample it with pipe(...), or call "
                "cpsample.unprotect(pipe) before sampling it with generate (its own guard would push a second time)"
            )
        latent_shape(self.pipe, self.height, self.width)  # sizes the VAE cannot make: refused now

    @classmethod
    def claims(cls, folder: Path) -> bool:
        # Denoiser folders carry a DDPMPipeline index too; any other (or an unreadable) one is a pipeline of ours to
        # load, or to refuse with load_sd_pipeline's reason.
        return (Path(folder) / PIPELINE_INDEX).is_file() and pipeline_class(folder) != DDPM_PIPELINE

    @classmethod
    def from_pretrained(cls, folder, device: str = "cpu", dtype: str = "float32", scheduler: str | None = None):
        scheduler = scheduler or "default"
        pipe = load_sd_pipeline(resolve_model_dir(folder, "denoiser"), scheduler, device, dtype)
        return cls(pipe, scheduler_name=scheduler)

    @property
    def folder(self) -> Path | None:
        name = getattr(self.pipe, "name_or_path", None)
        return Path(name) if name else None

    @property
    def device(self) -> torch.device:
        return self.pipe.device

    @property
    def dtype(self) -> str:
        return next(name for name, value in DTYPES.items() if value == self.pipe.unet.dtype)

    @property
    def network(self) -> torch.nn.Module:
        return self.pipe.unet

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return latent_shape(self.pipe, self.height, self.width)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        _, h, w = self.sample_shape
        factor = self.pipe.vae_scale_factor
        return (self.pipe.vae.config.out_channels, h * factor, w * factor)

    def scheduler(self, name: str, steps: int):
        scheduler = self.pipe.scheduler if name == self.scheduler_name else swap_scheduler(self.pipe.scheduler, name)
        scheduler.set_timesteps(steps, device=self.pipe.device)  # also clears multistep schedulers' history
        return scheduler

    def denoiser(self, conditions: list | None) -> Denoise:
        # A batch holds one prompt's images (see batches): its text is encoded once, for all of them.
        cond, uncond = self.pipe.encode_prompt(
            conditions[0], self.pipe.device, len(conditions), True, self.negative_prompt
        )
        return sd_denoiser(self.pipe, cond, uncond, self.guidance_scale)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return decode_latents(self.pipe, x)

    def context(self, device: str, classifier=None) -> GuardContext:
        # model=None: a guard here cannot follow gradients through the pipeline's UNet (jacobian=true); AMG searches
        # the member latents instead, encoded when it asks.
        return GuardContext(
            model=None, classifier=classifier, device=str(self.pipe.device), members=self.member_latents
        )

    def member_latents(self) -> torch.Tensor:
        """The VAE latents of the members of a pipeline `train-t2i` made (its split.json), as the UNet sees them."""
        from cpsample.models.bundle import model_members
        from cpsample.sampling.latent_pairing import encode_latents

        members = None if self.folder is None else model_members(self.folder)
        if members is None:
            raise ValueError(
                f"{self.folder}: AMG searches the training images at every step, and this pipeline does not say "
                "which they are (a `cpsample train-t2i` folder has a split.json); use --guard cpsample"
            )
        return encode_latents(self.pipe, members, progress=False).to(self.pipe.device)

    def guard(self, spec, classifier=None, device: str = "cpu", **options) -> Guard:
        name = guard_name(spec)
        if needs_classifier(spec) and classifier is None:
            raise ValueError(
                f"--guard {guard_name(spec)} needs --classifier (train one with `cpsample train-latent-classifier`)"
            )
        folder = classifier if isinstance(classifier, (str, Path)) else getattr(classifier, "folder", None)
        if name is not None and folder is not None:
            check_latent_pairing(folder, self.pipe)  # its VAE: a classifier of other latents fires at every step
        built = resolve_guard(spec, self.context(device, classifier), **options)
        for member in getattr(built, "guards", [built]):
            self._check_classifier(member)
        return built

    def _check_classifier(self, guard: Guard) -> None:
        """The classifier a guard holds takes these latents and learned this pipeline's noise schedule."""
        classifier = getattr(guard, "classifier", None)
        if classifier is None:
            return
        check_latent_classifier(classifier, self.pipe, self.height, self.width)
        folder = getattr(guard, "folder", None)
        if folder is not None:
            check_same_schedule(Path(folder), self.pipe.scheduler, RETRAIN, "this pipeline's")

    def conditioned(self, conditions, guidance_scale: float | None = None) -> "LatentAdapter":
        prompts = [str(prompt) for prompt in conditions]
        if not prompts or any(not prompt.strip() for prompt in prompts):
            raise ValueError("give at least one prompt, and no empty ones")
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        return replace(self, prompts=tuple(prompts), guidance_scale=scale)

    def conditions_per_image(self, n: int) -> list:
        if not self.prompts:
            raise ValueError("give at least one prompt, and no empty ones")
        return repeat_each(self.prompts, n)

    def batches(self, n: int, batch_size: int, seed: int) -> list[Batch]:
        """Prompt by prompt, each prompt's n images in chunks of at most batch_size; chunk k of every prompt from
        the same noise (see CHUNK_SEED_STRIDE)."""
        plan = []
        for prompt in range(len(self.prompts)):
            for chunk, first in enumerate(range(0, n, batch_size)):
                size = min(batch_size, n - first)
                plan.append(Batch(len(plan), prompt * n + first, size, seed + chunk * CHUNK_SEED_STRIDE))
        return plan

    def key_settings(self, n: int, conditions: list | None) -> dict:
        return {
            "prompts": list(self.prompts),
            "n_per_prompt": n,
            "cfg": self.guidance_scale,
            "negative_prompt": self.negative_prompt,
            "latent_shape": list(self.sample_shape),
            "vae_sha256": weights_digest(self.pipe.vae),
            "text_encoder_sha256": weights_digest(self.pipe.text_encoder),
        }

    def result_fields(self, n: int, conditions: list | None) -> dict:
        return {"prompts": list(self.prompts), "prompt_index": np.repeat(np.arange(len(self.prompts)), n)}

    def cast(self, dtype: torch.dtype) -> None:
        if self.pipe.unet.dtype != dtype:
            # .to(dtype) rather than from_pretrained's dtype keyword, whose name changed across diffusers versions.
            self.pipe.to(dtype=dtype)
