"""Membership inference in one call: load a model, pick its members and as many held-out images, run the attacks of
`cpsample.attacks.mia`. A pixel denoiser is attacked on its images; a text-to-image pipeline that `cpsample train-t2i`
trained (bundled-t2i, or your own run with its split.json) in its VAE's latent space:

Each image is encoded to its latent (the VAE posterior mean, scaled as the UNet saw it in training) and scored with
the UNet conditioned on its own caption, which is how the model saw its members: a member's caption pulls the
prediction towards that member. Non-members are the pipeline's held-out images with their captions (the Twemoji names
for bundled data; else a captions file that covers them). With a guard, the UNet's eps goes through the guard's
adjustment on the latent, as when sampling, so the attack measures what CPSample hides from whoever holds the weights.

    results = run_mia(model="bundled", guard="cpsample")
    results["loss"].auc, results["pia"].auc
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from cpsample.attacks.mia import (
    DEFAULT_DRAWS,
    DEFAULT_LOSS_TIMESTEPS,
    DEFAULT_PIA_TIMESTEPS,
    PIA_NORM,
    AttackResult,
    check_timesteps,
    chosen_attacks,
    loss_attack,
    pia_attack,
    pick_images,
)
from cpsample.data import DataError, ImageSet
from cpsample.data.captions import MODEL_CAPTIONS, captions_for, read_captions
from cpsample.models.bundle import resolve_model_dir, training_data
from cpsample.models.pretrained import DiffusionModel
from cpsample.sampling.adapters import LatentAdapter, adapter_class
from cpsample.sampling.guards import Guard, is_plain
from cpsample.sampling.latent_pairing import encode_latents


def run_mia(
    model: str | Path | DiffusionModel = "bundled",
    guard: str | Guard = "none",
    classifier: str | Path = "bundled",
    attack: str = "both",
    timesteps: Sequence[int] | None = None,
    n_members: int | None = None,
    n_nonmembers: int | None = None,
    draws: int = DEFAULT_DRAWS,
    pia_norm: float = PIA_NORM,
    batch_size: int = 128,
    seed: int = 0,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    progress: bool = True,
    captions: str | Path | None = None,
    **guard_options,
) -> dict[str, AttackResult]:
    """Attack a trained denoiser ('bundled', a folder or a loaded DiffusionModel) on its own member / non-member split.
    A text-to-image pipeline from `train-t2i` is attacked in its latent space (run_latent_mia; captions: a captions
    file covering its held-out images, unless they are Twemoji).

    guard: a ready Guard, or a name built with `classifier` and guard_options (e.g. alpha=0.1; see `cpsample guards`).
    n_members: cap on members (default all); n_nonmembers: default as many as members (a balanced test), drawn at
    random with `seed`. timesteps: used by every chosen attack; by default loss uses (100, 200, 300) and PIA 200.
    Returns {attack name: AttackResult}; e.g. run_mia(guard="cpsample")["loss"].auc.
    """
    from cpsample.sampling.pipeline import guard_for_model

    if not isinstance(model, DiffusionModel) and adapter_class(model) is LatentAdapter:
        shared = dict(attack=attack, timesteps=timesteps, n_members=n_members, n_nonmembers=n_nonmembers)
        shared.update(draws=draws, pia_norm=pia_norm, batch_size=batch_size, seed=seed, device=device, dtype=dtype)
        shared.update(progress=progress, captions=captions)
        return run_latent_mia(model, guard, classifier, **shared, **guard_options)
    if captions is not None:
        raise ValueError("captions are for text-to-image pipelines; this model takes no prompts")
    attacks = chosen_attacks(attack)
    model = model if isinstance(model, DiffusionModel) else DiffusionModel.from_pretrained(model, device)
    unet, schedule = model.unet, model.schedule
    check_settings(attacks, timesteps, schedule, draws, pia_norm)  # before the slow part (data set, guard)
    dataset, split = model.dataset, model.split
    member_idx, nonmember_idx = pick_images(split.members, split.nonmembers, n_members, n_nonmembers, seed)
    guard = guard_for_model(model, guard, classifier, device, **guard_options)
    members, nonmembers = dataset.take(member_idx), dataset.take(nonmember_idx)
    common = dict(guard=guard, batch_size=batch_size, device=device, dtype=dtype, progress=progress)
    results = run_chosen(attacks, unet, schedule, members, nonmembers, timesteps, draws, pia_norm, seed, **common)
    for result in results.values():
        result.settings.update(model=str(model), member_indices=member_idx, nonmember_indices=nonmember_idx)
    return results


def check_settings(attacks: tuple[str, ...], timesteps, schedule, draws: int, pia_norm: float) -> None:
    """The attacks' settings, refused before anything slow is loaded."""
    check_timesteps(timesteps or DEFAULT_LOSS_TIMESTEPS, schedule, minimum=0 if attacks == ("loss",) else 1)
    if draws < 1 or pia_norm <= 0:
        raise ValueError(f"draws must be at least 1 and pia_norm positive, got draws={draws}, pia_norm={pia_norm}")


def run_chosen(attacks, unet, schedule, members, nonmembers, timesteps, draws, pia_norm, seed, **common) -> dict:
    """{attack name: AttackResult} for the chosen attacks, each at its default timesteps unless given."""
    results = {}
    if "loss" in attacks:
        steps = timesteps or DEFAULT_LOSS_TIMESTEPS
        results["loss"] = loss_attack(
            unet, schedule, members, nonmembers, timesteps=steps, draws=draws, seed=seed, **common
        )
    if "pia" in attacks:
        steps = timesteps or DEFAULT_PIA_TIMESTEPS
        results["pia"] = pia_attack(unet, schedule, members, nonmembers, timesteps=steps, norm=pia_norm, **common)
    return results


def run_latent_mia(
    model: str | Path,
    guard="none",
    classifier: str | Path | None = None,
    attack: str = "both",
    timesteps: Sequence[int] | None = None,
    n_members: int | None = None,
    n_nonmembers: int | None = None,
    draws: int = 4,
    pia_norm: float = 4.0,
    batch_size: int = 128,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
    progress: bool = True,
    captions: str | Path | None = None,
    **guard_options,
) -> dict[str, AttackResult]:
    """run_mia for a train-t2i pipeline (a folder or 'bundled-t2i'): the same attacks, images and statistics, on
    caption-conditioned latents. captions: a captions file covering the held-out images where they are not Twemoji."""
    attacks = chosen_attacks(attack)
    adapter = LatentAdapter.from_pretrained(model, device, dtype)
    pipe = adapter.pipe
    check_settings(attacks, timesteps, pipe.scheduler, draws, pia_norm)
    folder = resolve_model_dir(model, "denoiser")
    if not (folder / "split.json").is_file():
        raise DataError(
            f"{folder}: no split.json, so its members and held-out images are unknown; the weights attack runs on "
            "pipelines `cpsample train-t2i` trained (for another pipeline, `cpsample attack sample-nn` scores its "
            "samples)"
        )
    dataset, split = training_data(folder)
    member_idx, nonmember_idx = pick_images(split.members, split.nonmembers, n_members, n_nonmembers, seed)
    members, nonmembers = dataset.take(member_idx), dataset.take(nonmember_idx)
    built = None if is_plain(guard) else adapter.guard(guard, classifier, device, **guard_options)
    texts = (member_captions(folder, members), captions_for(nonmembers, dataset.source, captions))
    latents = [encode_latents(pipe, images, batch_size, progress) for images in (members, nonmembers)]
    contexts = tuple(caption_embeddings(pipe, caption_list, batch_size) for caption_list in texts)
    common = dict(guard=built, batch_size=batch_size, device=device, dtype=dtype, progress=progress, contexts=contexts)
    results = run_chosen(attacks, pipe.unet, pipe.scheduler, *latents, timesteps, draws, pia_norm, seed, **common)
    for result in results.values():
        result.settings.update(
            model=str(model),
            member_indices=member_idx,
            nonmember_indices=nonmember_idx,
            space="VAE latents, each image conditioned on its caption",
        )
    return results


def member_captions(folder: Path, members: ImageSet) -> list[str]:
    """Each member's training caption, as train-t2i kept it beside the pipeline (captions.txt)."""
    captions = read_captions(folder / MODEL_CAPTIONS, None)
    missing = [name for name in members.names if name not in captions]
    if missing:
        raise DataError(f"{folder / MODEL_CAPTIONS}: no caption for members {', '.join(missing[:5])}")
    return [captions[name] for name in members.names]


@torch.no_grad()
def caption_embeddings(pipe, captions: list[str], batch_size: int) -> torch.Tensor:
    """The text encoder's hidden states for each caption (CPU float32), as the pipeline encodes a prompt."""
    parts = [
        pipe.encode_prompt(captions[start : start + batch_size], pipe.device, 1, False)[0].float().cpu()
        for start in range(0, len(captions), batch_size)
    ]
    return torch.cat(parts)
