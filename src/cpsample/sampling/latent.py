"""CPSample in the latent space of a text-to-image Stable Diffusion pipeline (paper section 4.2, Fig. 7, Table 2).

`sample_sd` runs the pipeline's own components through cpsample's one denoising loop (`sample_batch`), so any guard
works here: text encoder -> UNet on [x_t, x_t] -> guard.correct on both halves (CPSample's push on the latent x_t)
-> guard.combine (CFG) -> guard.adjust -> the pipeline's scheduler -> VAE decoder. For CPSample alone,
`cpsample.protect(pipe, classifier)` gives the same latents from the pipeline's own `__call__`. The classifier is a
TimeClassifier on latents (4 channels) trained by `cpsample.training.latent_classifier` on the VAE latents of a
private image set, so only that subset is protected.

Everything loads from local folders (`local_files_only=True`); `build_tiny_sd_pipeline` writes a small random
pipeline (built from configs and a tiny local vocabulary) for tests and for trying the workflow offline.
Needs `transformers` (the `latent` extra).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cpsample.data import ImageSet, load_dataset
from cpsample.models.denoiser import DDPM_PIPELINE, PIPELINE_INDEX, is_sd_pipeline, pipeline_class
from cpsample.sampling.guards import CPSampleGuard, Guard, NoGuard
from cpsample.sampling.guards.base import CFGPrediction
from cpsample.sampling.latent_pairing import check_latent_pairing
from cpsample.sampling.pipeline import check_same_schedule, check_scheduler
from cpsample.sampling.protect import protection_of
from cpsample.sampling.sampler import DTYPES, sample_batch, without_x0_clipping

SD_SCHEDULERS = ("default", "ddim", "pndm", "ddpm", "dpm++")
DEFAULT_SD_CFG_SCALE = 7.5


# --- the tiny local pipeline ---------------------------------------------------------------------------------


def _byte_symbols() -> list[str]:
    """GPT-2 / CLIP byte-level alphabet: one printable unicode symbol for each of the 256 byte values."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for _, code in sorted(zip(printable, codes))]


def tiny_clip_vocab() -> dict[str, int]:
    """A character-level CLIP vocabulary (no merges): every byte symbol alone and at a word's end, plus BOS/EOS."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for symbol in _byte_symbols():
            vocab[symbol + suffix] = len(vocab)
    return vocab


def _write_tokenizer_files(folder: Path) -> None:
    # vocab.json + merges.txt is the format every transformers version's CLIPTokenizer reads.
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(tiny_clip_vocab()))
    (folder / "merges.txt").write_text("#version: 0.2\n")


def build_tiny_sd_pipeline(folder: str | Path, image_size: int = 32, seed: int = 0, scheduler: str = "pndm") -> Path:
    """Write a random-weight StableDiffusionPipeline (~1.2M parameters) to folder with save_pretrained (safetensors).

    The same layout as a real Stable Diffusion v1 folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/,
    model_index.json) with SD's scaled-linear noise schedule; the VAE halves the resolution (latents are
    4 x image_size/2 x image_size/2). Reload with `load_sd_pipeline(folder)`.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    if image_size % 4:
        raise ValueError(
            f"image size must be a multiple of 4 (the VAE halves it, the UNet halves it again), got {image_size}"
        )
    folder = Path(folder)
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as scratch:
        _write_tokenizer_files(Path(scratch))
        tokenizer = CLIPTokenizer.from_pretrained(scratch, local_files_only=True, model_max_length=77)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tiny_clip_vocab()),
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=image_size // 2,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8,
        sample_size=image_size,
    )
    schedule = dict(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", set_alpha_to_one=False, steps_offset=1
    )
    if scheduler == "pndm":
        noise_scheduler = PNDMScheduler(skip_prk_steps=True, **schedule)
    elif scheduler == "ddim":
        noise_scheduler = DDIMScheduler(clip_sample=False, **schedule)
    else:
        raise ValueError(f"the tiny pipeline ships a pndm or ddim scheduler, not {scheduler!r}")
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=noise_scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    _write_tokenizer_files(folder / "tokenizer")  # also readable by transformers versions without tokenizer.json
    return folder


# --- loading --------------------------------------------------------------------------------------------------


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
        "train it with `cpsample train-latent-classifier --pipeline` on this pipeline",
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


# --- sampling -------------------------------------------------------------------------------------------------


@dataclass
class LatentSampleResult:
    images: torch.Tensor  # (N, 3, H, W) float32 in [-1, 1], decoded
    latents: torch.Tensor  # (N, 4, h, w) final latents (unscaled, as the UNet sees them)
    prompts: list[str]  # one per prompt, in order
    prompt_index: np.ndarray  # (N,) which prompt each image came from
    trace: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (steps, N): p1, fired
    timesteps: np.ndarray | None = None
    seconds: float = 0.0


def sample_sd(
    pipe,
    prompts: list[str],
    guard: Guard | None = None,
    images_per_prompt: int = 1,
    steps: int = 50,
    guidance_scale: float = DEFAULT_SD_CFG_SCALE,
    height: int | None = None,
    width: int | None = None,
    seed: int = 0,
    negative_prompt: str = "",
    progress: bool = True,
) -> LatentSampleResult:
    """Generate images_per_prompt images for each prompt with CFG and the guard (None: plain sampling).

    Every prompt starts from the same noise latents (seeded by `seed`), so images of two prompts, or of a plain
    and a protected run, differ only through the prompt and the guard.
    """
    if not prompts or any(not str(p).strip() for p in prompts):
        raise ValueError("give at least one prompt, and no empty ones")
    if images_per_prompt < 1 or steps < 1:
        raise ValueError(f"images per prompt and steps must be positive, got {images_per_prompt} and {steps}")
    if protection_of(pipe) is not None:
        raise ValueError(
            "this pipeline was protected with cpsample.protect; sample it with pipe(...), or call "
            "cpsample.unprotect(pipe) before sample_sd (its own guard would push a second time)"
        )
    guard = guard or NoGuard()
    device, dtype = pipe.device, pipe.unet.dtype
    guard.to(device, dtype)
    shape = (images_per_prompt, *latent_shape(pipe, height, width))
    started = time.time()
    images, latents, traces = [], [], []
    for prompt in tqdm(prompts, desc=f"sampling prompts ({guard.name})", disable=not progress, dynamic_ncols=True):
        cond, uncond = pipe.encode_prompt(prompt, device, images_per_prompt, True, negative_prompt)
        final, trace = denoise_latents(pipe, cond, uncond, guard, steps, guidance_scale, shape, seed)
        latents.append(final.float().cpu())
        images.append(decode_latents(pipe, final))
        traces.append(trace)
    merged = {key: np.concatenate([t[key] for t in traces], axis=1) for key in traces[0]}
    return LatentSampleResult(
        images=torch.cat(images),
        latents=torch.cat(latents),
        prompts=list(prompts),
        prompt_index=np.repeat(np.arange(len(prompts)), images_per_prompt),
        trace=merged,
        timesteps=pipe.scheduler.timesteps.cpu().numpy(),
        seconds=time.time() - started,
    )


# Chunk k of a run drawn in chunks (sample_sd_batches) starts from the noise of seed + k * CHUNK_SEED_STRIDE: chunk 0
# is sample_sd's own noise for `seed`, and no chunk meets another run's (calibrate's confirmation round: seed + 1000).
CHUNK_SEED_STRIDE = 100_003


def sample_sd_batches(
    pipe,
    prompts: list[str],
    guard: Guard | None,
    images_per_prompt: int,
    batch_size: int,
    steps: int = 50,
    guidance_scale: float = DEFAULT_SD_CFG_SCALE,
    seed: int = 0,
    progress: bool = False,
) -> LatentSampleResult:
    """`sample_sd` with at most batch_size images of a prompt per UNet batch: images_per_prompt images of each prompt,
    drawn in chunks (see CHUNK_SEED_STRIDE) and returned as one result (trace: steps x all images)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    results = [
        sample_sd(
            pipe,
            prompts,
            guard,
            min(batch_size, images_per_prompt - start),
            steps,
            guidance_scale,
            seed=seed + chunk * CHUNK_SEED_STRIDE,
            progress=progress,
        )
        for chunk, start in enumerate(range(0, images_per_prompt, batch_size))
    ]
    if len(results) == 1:
        return results[0]
    return LatentSampleResult(
        images=torch.cat([r.images for r in results]),
        latents=torch.cat([r.latents for r in results]),
        prompts=list(prompts),
        prompt_index=np.concatenate([r.prompt_index for r in results]),
        trace={key: np.concatenate([r.trace[key] for r in results], axis=1) for key in results[0].trace},
        timesteps=results[0].timesteps,
        seconds=sum(r.seconds for r in results),
    )


def denoise_latents(
    pipe,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    guard: Guard,
    steps: int,
    guidance_scale: float,
    shape: tuple,
    seed: int,
) -> tuple[torch.Tensor, dict]:
    """The shared denoising loop (`sample_batch`) on the pipeline's latents, its UNet called as the pipeline does."""
    pipe.scheduler.set_timesteps(steps, device=pipe.device)  # also clears multistep schedulers' history
    generator = torch.Generator().manual_seed(seed)
    return sample_batch(
        sd_denoiser(pipe, cond, uncond, guidance_scale),
        pipe.scheduler,
        shape,
        guard,
        generator,
        pipe.device,
        pipe.unet.dtype,
        raw=True,
    )


def sd_denoiser(pipe, cond: torch.Tensor, uncond: torch.Tensor, guidance_scale: float):
    """The UNet on [x_t, x_t] with [negative, prompt] text embeddings: both halves of classifier-free guidance."""
    text = torch.cat([uncond, cond])

    def denoise(x, t):
        # One timestep for the batch, as the pipeline passes it (the UNet broadcasts it).
        eps_uncond, eps_cond = pipe.unet(torch.cat([x, x]), t[0], encoder_hidden_states=text).sample.chunk(2)
        return CFGPrediction(eps_cond, eps_uncond, guidance_scale)

    return denoise


@torch.no_grad()
def decode_latents(pipe, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> images in [-1, 1] (float32, CPU) with the pipeline's VAE."""
    images = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
    return images.float().clamp(-1.0, 1.0).cpu()


# --- prompts and the modified-caption comparison (Table 2) -------------------------------------------------


@dataclass
class PromptEntry:
    text: str
    role: str  # "prompt", or "original" / "modified" for a caption pair
    pair: int | None = None  # pairs share a number


def read_prompts(path: str | Path) -> list[PromptEntry]:
    """One prompt per line; 'original caption<TAB>modified caption' makes a pair. Blank lines and '#' lines are
    skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such prompts file")
    entries, pairs = [], 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = [part.strip() for part in line.split("\t")]
        if len(parts) == 1:
            entries.append(PromptEntry(parts[0], "prompt"))
        elif len(parts) == 2 and all(parts):
            entries += [PromptEntry(parts[0], "original", pairs), PromptEntry(parts[1], "modified", pairs)]
            pairs += 1
        else:
            raise ValueError(
                f"{path}:{number}: expected 'prompt' or 'original<TAB>modified', got {len(parts)} tab-separated fields"
            )
    if not entries:
        raise ValueError(f"{path}: holds no prompts")
    return entries


def load_private_images(folder: str | Path, image_size: int) -> ImageSet:
    """The private image set as RGB at the pipeline's resolution, in [-1, 1]."""
    images = load_dataset(str(folder), image_size=image_size)
    if images.channels == 1:
        images.images = np.repeat(images.images, 3, axis=1)
    return images


def nearest_private(
    images: torch.Tensor | np.ndarray, private: ImageSet, threshold: float | None = None, progress: bool = False
):
    """The near-copy yardstick in pixel space (mean-centred pixels): each decoded image's nearest private image."""
    from cpsample.evaluation.inputs import same_image_shape
    from cpsample.evaluation.nearcopy import find_near_copies

    samples = images.numpy() if isinstance(images, torch.Tensor) else images
    same_image_shape(samples, private.images, "generated images", "private images")
    return find_near_copies(samples, private.images, "pixels", threshold, progress)


def per_prompt_similarity(
    result: LatentSampleResult,
    private: ImageSet,
    threshold: float | None = None,
    entries: list[PromptEntry] | None = None,
) -> list[dict]:
    """For each prompt: nearest-private similarity of its images (max, mean), near-copies above threshold
    (None: the yardstick's pixel default)."""
    found = nearest_private(result.images, private, threshold)
    scores, nearest, copies = found.similarity, found.nearest, found.copies
    fired = result.trace.get("fired")
    rows = []
    for index, prompt in enumerate(result.prompts):
        mine = np.flatnonzero(result.prompt_index == index)
        best = mine[np.argmax(scores[mine])]
        entry = entries[index] if entries else PromptEntry(prompt, "prompt")
        rows.append(
            {
                "prompt": prompt,
                "role": entry.role,
                "pair": entry.pair,
                "max_similarity": float(scores[mine].max()),
                "mean_similarity": float(scores[mine].mean()),
                "near_copies": int(copies[mine].sum()),
                "images": len(mine),
                "nearest_private": private.names[int(nearest[best])],
                "share_of_steps_guided": None if fired is None else float(fired[:, mine].mean()),
            }
        )
    return rows
