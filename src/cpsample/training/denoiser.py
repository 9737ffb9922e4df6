"""Train an eps-predicting UNet2DModel on an image set (the diffusers recipe: MSE between eps and its prediction)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from cpsample.data import ImageSet, Split
from cpsample.models.denoiser import (
    DEFAULT_CHANNELS,
    build_denoiser,
    build_noise_schedule,
    load_denoiser,
    save_denoiser,
)
from cpsample.training.loop import TrainConfig, TrainingRun


def eps_loss(schedule):
    num_steps = schedule.config.num_train_timesteps

    def loss_fn(model, x0, _target, generator):
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        t = torch.randint(0, num_steps, (x0.shape[0],), generator=generator).to(x0.device)
        noisy = schedule.add_noise(x0, noise, t)
        return F.mse_loss(model(noisy, t).sample.float(), noise), {}

    return loss_fn


def train_denoiser(
    members: ImageSet,
    split: Split,
    out_dir: Path,
    config: TrainConfig,
    resume: bool = False,
    block_out_channels=DEFAULT_CHANNELS,
    data_spec: str = "",
    overwrite: bool = False,
    init: Path | None = None,
) -> dict:
    """Train (or resume) and export the EMA model to out_dir as a diffusers folder; returns a summary.

    With `init` (a diffusers folder with unet/ and scheduler/), fine-tune that eps-predicting UNet2DModel with its own
    noise schedule instead of starting from random weights.
    """
    run = TrainingRun(out_dir, config, resume, overwrite)
    if init is None:
        unet, schedule = build_denoiser(members.size, members.channels, block_out_channels), build_noise_schedule()
    else:
        unet, schedule = load_pretrained(init, members)
        block_out_channels = tuple(unet.config.block_out_channels)
    init = None if init is None else str(Path(init).resolve())
    run_settings = {**denoiser_run_settings(members, split, block_out_channels, data_spec), "init": init}
    trainer = run.train(unet, members.tensor(), eps_loss(schedule), split, run_settings, description="train denoiser")
    settings = {
        "data": data_spec,
        "image_size": members.size,
        "subset": len(split.members) if split.nonmembers else None,
        "block_out_channels": list(block_out_channels),
        "init": init,
    }
    return run.finish(
        trainer,
        "train-denoiser",
        settings,
        lambda folder: save_denoiser(folder, trainer.ema_model(), schedule),
        members=len(members),
        image_size=members.size,
        channels=members.channels,
    )


def denoiser_run_settings(members: ImageSet, split: Split, block_out_channels, data_spec: str) -> dict:
    """What a denoiser trains on and its shape: a resumed run must match them."""
    return {
        "data": data_spec,
        "split": split.fingerprint(),
        "image_size": members.size,
        "image_channels": members.channels,
        "block_out_channels": list(block_out_channels),
    }


def load_pretrained(folder: Path, members: ImageSet):
    """A pretrained denoiser to fine-tune, checked against the images it will be fine-tuned on."""
    unet, schedule = load_denoiser(folder)
    if unet.config.num_class_embeds is not None:
        raise ValueError(f"{folder} is a class-conditional model; fine-tune it with `cpsample train-conditional`")
    if unet.config.in_channels != members.channels:
        kinds = {1: "grey", 3: "RGB"}
        model_kind, data_kind = (kinds.get(n, f"{n}-channel") for n in (unet.config.in_channels, members.channels))
        count = {n: f"{n} channel{'s' if n != 1 else ''}" for n in (unet.config.in_channels, members.channels)}
        raise ValueError(
            f"{folder} takes {model_kind} images ({count[unet.config.in_channels]}) but the data are "
            f"{data_kind} ({count[members.channels]}); --image-size cannot change that: fine-tune a "
            f"{data_kind} model, or train on {model_kind} data"
        )
    if (unet.config.in_channels, unet.config.sample_size) != (members.channels, members.size):
        raise ValueError(
            f"{folder} takes {unet.config.in_channels}-channel {unet.config.sample_size}x{unet.config.sample_size} "
            f"images but the data are {members.channels}-channel {members.size}x{members.size}; "
            f"pass --image-size {unet.config.sample_size} or pick a matching model"
        )
    return unet.train(), schedule
