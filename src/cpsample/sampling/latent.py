"""CPSample in the latent space of a text-to-image Stable Diffusion pipeline (paper section 4.2, Fig. 7, Table 2).

The model kind itself (loading a pipeline, its denoiser, its VAE decoder, the checks its guards pass) is
adapters/latent.py (LatentAdapter), sampled by `generate` like every kind; for CPSample alone,
`cpsample.protect(pipe, classifier)` gives the same latents from the pipeline's own `__call__`. This module keeps the
tiny local pipeline, the prompts file and the per-prompt similarity to the private images (Table 2).

`build_tiny_sd_pipeline` writes a small random pipeline (built from configs and a tiny local vocabulary) for tests
and for trying the workflow offline. Needs `transformers` (the `latent` extra).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cpsample.data import ImageSet, load_dataset
from cpsample.data.sources import resize_set
from cpsample.sampling.adapters.latent import (  # noqa: F401 (their old home: callers import them from here)
    CHUNK_SEED_STRIDE,
    DEFAULT_SD_CFG_SCALE,
    SD_SCHEDULERS,
    LatentAdapter,
    build_latent_guard,
    check_latent_classifier,
    decode_latents,
    latent_shape,
    load_sd_pipeline,
    sd_denoiser,
    swap_scheduler,
)
from cpsample.sampling.sampler import SampleResult

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
    """Write a random-weight StableDiffusionPipeline (~1.2M parameters) to folder with save_pretrained (safetensors),
    and its cpsample.json (how it was made).

    The same layout as a real Stable Diffusion v1 folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/,
    model_index.json) with SD's scaled-linear noise schedule; the VAE halves the resolution (latents are
    4 x image_size/2 x image_size/2). Reload with `load_sd_pipeline(folder)`.
    """
    from cpsample.provenance import write_record
    from cpsample.sampling.settings import TinySd

    settings = TinySd(image_size, scheduler, seed)  # checks the size
    folder = Path(folder)
    torch.manual_seed(seed)
    pipe = tiny_sd_pipeline(image_size, scheduler)
    save_sd_pipeline(pipe, folder)
    write_record(folder, "make-tiny-sd", dataclasses.asdict(settings))
    return folder


def tiny_sd_pipeline(image_size: int = 32, scheduler: str = "pndm", tokenizer_dir: str | Path | None = None):
    """A StableDiffusionPipeline of tiny random parts (VAE, UNet, text encoder); its tokenizer is read from
    tokenizer_dir (vocab.json + merges.txt), else the character-level `tiny_clip_vocab`."""
    from diffusers import AutoencoderKL, DDIMScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with tempfile.TemporaryDirectory() as scratch:
        if tokenizer_dir is None:
            tokenizer_dir = scratch
            _write_tokenizer_files(Path(scratch))
        tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True, model_max_length=77)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer.get_vocab()),
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
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
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=noise_scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_sd_pipeline(pipe, folder: str | Path) -> None:
    """save_pretrained (safetensors), with the tokenizer also as vocab.json + merges.txt: the files every
    transformers version's CLIPTokenizer reads."""
    pipe.save_pretrained(folder, safe_serialization=True)
    pipe.tokenizer.backend_tokenizer.model.save(str(Path(folder) / "tokenizer"))


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
    """The private image set as RGB at the pipeline's resolution, in [-1, 1]: a folder or .npz of images, or a model
    trained by cpsample (a pipeline folder from `train-t2i`, or a bundled name), meaning the images it trained on."""
    from cpsample.models.bundle import model_members

    members = model_members(folder)
    images = members if members is not None else load_dataset(str(folder), image_size=image_size)
    resize_set(images, image_size)
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
    result: SampleResult,
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
