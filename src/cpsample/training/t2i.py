"""Train a small latent text-to-image model in the Stable Diffusion layout on captioned images.

This builds `bundled-t2i` and lets a user build the same kind of model on a captioned folder of their own: a model
that copies its training images when prompted with their captions, the setting CPSample's latent path protects.
Three parts, trained in two stages of one resumable run (one `train_state/`):

1. The VAE (AutoencoderKL, 32x32 -> 4x16x16) learns to reconstruct the member images (MSE + a small KL term, as
   Stable Diffusion's). At the end of the stage its EMA weights are frozen and the latents' scaling factor is set
   so they have unit variance (Stable Diffusion's 0.18215 plays the same role).
2. The UNet (UNet2DConditionModel) and the text encoder (a small CLIPTextModel) learn eps on the members' latents
   given their captions, with the caption dropped 10% of the time so classifier-free guidance works.

The tokenizer is a CLIP BPE vocabulary learned from the captions (the `tokenizers` trainer, on CLIP's own
normaliser and pre-tokenizer), so whole caption words are single tokens. The result loads with
`StableDiffusionPipeline.from_pretrained(out)`; nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cpsample.data import DataError, ImageSet, Split
from cpsample.data.captions import MODEL_CAPTIONS, MODEL_PROMPTS
from cpsample.training.loop import TrainConfig, Trainer, TrainingRun

logger = logging.getLogger(__name__)

CAPTION_DROPOUT = 0.1  # share of steps trained on the empty caption: the unconditional half of CFG
KL_WEIGHT = 1e-6  # Stable Diffusion's VAE weight on the KL term: a near-deterministic autoencoder
MAX_TOKENS = 32  # captions are short names; longer ones are cut (CLIP's own limit is 77)


def train_tokenizer(captions: list[str], folder: Path):
    """A CLIPTokenizer whose BPE merges are learned from the captions; vocab.json + merges.txt written to folder."""
    from tokenizers import pre_tokenizers
    from tokenizers.trainers import BpeTrainer
    from transformers import CLIPTokenizer

    specials = ["<|startoftext|>", "<|endoftext|>"]
    empty = CLIPTokenizer(vocab={token: i for i, token in enumerate(specials)}, merges=[])
    backend = empty.backend_tokenizer
    trainer = BpeTrainer(
        vocab_size=2048,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    backend.train_from_iterator(captions, trainer)
    folder.mkdir(parents=True, exist_ok=True)
    backend.model.save(str(folder))
    # Every byte symbol also as a word's end, as in CLIP's own vocabulary: a prompt may end a word on a character
    # no caption ended one with, which would otherwise become the unknown token.
    vocab = json.loads((folder / "vocab.json").read_text())
    for symbol in pre_tokenizers.ByteLevel.alphabet():
        for token in (symbol, symbol + "</w>"):
            vocab.setdefault(token, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True, model_max_length=77)


def token_ids(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(
        captions, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt"
    ).input_ids


class TextToImage(torch.nn.Module):
    """The three trained parts as one module, so one Trainer (optimizer, EMA, resume) holds them all."""

    def __init__(self, pipe):
        super().__init__()
        self.vae, self.unet, self.text_encoder = pipe.vae, pipe.unet, pipe.text_encoder


def vae_loss(model, images, _target, generator):
    posterior = model.vae.encode(images).latent_dist
    reconstruction = model.vae.decode(posterior.sample(generator=generator)).sample
    mse = F.mse_loss(reconstruction.float(), images)
    return mse + KL_WEIGHT * posterior.kl().mean(), {"mse": float(mse.detach())}


def denoiser_loss(schedule, empty_ids: torch.Tensor):
    def loss_fn(model, latents, ids, generator):
        dropped = torch.rand(len(ids), generator=generator) < CAPTION_DROPOUT
        ids = torch.where(dropped[:, None], empty_ids.to(ids.device), ids)
        noise = torch.randn(latents.shape, generator=generator).to(latents.device)
        t = torch.randint(0, schedule.config.num_train_timesteps, (len(latents),), generator=generator)
        noisy = schedule.add_noise(latents, noise, t.to(latents.device))
        context = model.text_encoder(ids)[0]
        return F.mse_loss(model.unet(noisy, t.to(latents.device), context).sample.float(), noise), {}

    return loss_fn


@torch.no_grad()
def member_latents(vae, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """The VAE posterior means of the images, unscaled."""
    vae.eval()
    parts = [vae.encode(images[i : i + batch_size]).latent_dist.mean for i in range(0, len(images), batch_size)]
    return torch.cat(parts)


def freeze_vae(trainer: Trainer) -> None:
    """Copy the VAE's EMA weights into the live VAE: the latents the UNet learns are then those of the exported
    VAE, and the VAE (no longer trained) keeps them."""
    names = [name for name, _ in trainer.unwrapped.named_parameters()]
    with torch.no_grad():
        for name, live, shadow in zip(names, trainer.unwrapped.parameters(), trainer.ema.shadow_params):
            if name.startswith("vae."):
                live.copy_(shadow)
        for parameter in trainer.unwrapped.vae.parameters():
            parameter.requires_grad_(False)


def train_t2i(
    members: ImageSet,
    captions: list[str],
    split: Split,
    out_dir: Path,
    config: TrainConfig,
    vae_steps: int,
    resume: bool = False,
    overwrite: bool = False,
    data_spec: str = "",
) -> dict:
    """Train (or resume) the VAE for vae_steps, then UNet + text encoder up to config.steps; export the pipeline
    (EMA weights, DDIM scheduler, safetensors) to out_dir; returns a summary."""
    from cpsample.sampling.latent import save_sd_pipeline, tiny_sd_pipeline

    if members.channels != 3 or members.size % 4:
        raise DataError(f"{data_spec}: the text-to-image model takes RGB images whose size is a multiple of 4")
    if not 0 < vae_steps < config.steps:
        raise ValueError(f"--vae-steps must lie between 0 and --steps ({config.steps}), got {vae_steps}")
    run = TrainingRun(out_dir, config, resume, overwrite)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = train_tokenizer(captions, Path(scratch))
        pipe = tiny_sd_pipeline(members.size, "ddim", tokenizer_dir=scratch)
    from diffusers import DDPMScheduler

    schedule = DDPMScheduler.from_config(pipe.scheduler.config, prediction_type="epsilon")
    ids = token_ids(tokenizer, captions)
    empty_ids = token_ids(tokenizer, [""])
    images = members.tensor()
    settings = {
        "data": data_spec,
        "split": split.fingerprint(),
        "image_size": members.size,
        "captions": captions,
        "vae_steps": vae_steps,
    }

    def stages(trainer: Trainer) -> None:
        if trainer.step < vae_steps:
            trainer.loss_fn = vae_loss
            trainer.run_until(vae_steps, description="train VAE")
        freeze_vae(trainer)
        latents = member_latents(trainer.unwrapped.vae, images)
        pipe.vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
        trainer.data = latents * pipe.vae.config.scaling_factor
        trainer.loss_fn = denoiser_loss(schedule, empty_ids)
        trainer.run_until(config.steps, description="train UNet + text encoder")

    model = TextToImage(pipe)
    trainer = run.train(model, images, vae_loss, split, settings, targets=ids, phases=stages)
    exported = trainer.ema_model()
    pipe.vae, pipe.unet, pipe.text_encoder = exported.vae, exported.unet, exported.text_encoder
    reconstruction = reconstruction_similarity(pipe.vae, images)

    def save(folder: Path) -> None:
        save_sd_pipeline(pipe, folder)
        lines = [f"{name}\t{caption}" for name, caption in zip(members.names, captions)]
        (folder / MODEL_CAPTIONS).write_text("\n".join(lines) + "\n", encoding="utf-8")
        (folder / MODEL_PROMPTS).write_text("\n".join(captions) + "\n", encoding="utf-8")

    return run.finish(
        trainer,
        "train-t2i",
        {"data": data_spec, "image_size": members.size, "vae_steps": vae_steps, "subset": len(split.members)},
        save,
        members=len(members),
        vae_scaling_factor=pipe.vae.config.scaling_factor,
        reconstruction_cosine_median=reconstruction,
    )


@torch.no_grad()
def reconstruction_similarity(vae, images: torch.Tensor) -> float:
    """Median cosine similarity (the near-copy yardstick's pixels) of the members to their VAE reconstructions: a
    decoded copy can score no higher, so this bounds what the near-copy test can see."""
    from cpsample.evaluation.nearcopy import find_near_copies

    latents = member_latents(vae, images)
    decoded = torch.cat([vae.decode(latents[i : i + 64]).sample for i in range(0, len(latents), 64)]).clamp(-1, 1)
    similarity = find_near_copies(decoded.numpy(), images.numpy(), "pixels").similarity
    return float(np.median(similarity))
