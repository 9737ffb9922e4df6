"""Train an eps-predicting UNet2DModel on an image set (the diffusers recipe: MSE between eps and its prediction)."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from cpsample.data import ImageSet, Split
from cpsample.models.denoiser import DEFAULT_CHANNELS, build_denoiser, build_noise_schedule, load_denoiser, save_denoiser
from cpsample.provenance import write_record
from cpsample.training.loop import TrainConfig, Trainer, prepare_run_folder


def eps_loss(schedule):
    num_steps = schedule.config.num_train_timesteps

    def loss_fn(model, x0, _target, generator):
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        t = torch.randint(0, num_steps, (x0.shape[0],), generator=generator).to(x0.device)
        noisy = schedule.add_noise(x0, noise, t)
        return F.mse_loss(model(noisy, t).sample.float(), noise), {}

    return loss_fn


def train_denoiser(members: ImageSet, split: Split, out_dir: Path, config: TrainConfig, resume: bool = False,
                   block_out_channels=DEFAULT_CHANNELS, data_spec: str = "", overwrite: bool = False,
                   init: Path | None = None) -> dict:
    """Train (or resume) and export the EMA model to out_dir as a diffusers folder; returns a summary.

    With `init` (a diffusers folder with unet/ and scheduler/), fine-tune that eps-predicting UNet2DModel with its own
    noise schedule instead of starting from random weights.
    """
    out_dir = Path(out_dir)
    prepare_run_folder(out_dir, resume, overwrite)
    torch.manual_seed(config.seed)
    if init is None:
        unet, schedule = build_denoiser(members.size, members.channels, block_out_channels), build_noise_schedule()
    else:
        unet, schedule = load_pretrained(init, members)
        block_out_channels = tuple(unet.config.block_out_channels)
    run_settings = {"data": data_spec, "split": split.fingerprint(), "image_size": members.size,
                    "image_channels": members.channels, "block_out_channels": list(block_out_channels),
                    "init": None if init is None else str(Path(init).resolve())}
    trainer = Trainer(unet, members.tensor(), eps_loss(schedule), config, out_dir, run_settings=run_settings)
    meta = trainer.load_state() if resume else None
    resumed_from = meta["step"] if meta else 0
    if meta is None:  # a resumed run keeps the split it started with
        out_dir.mkdir(parents=True, exist_ok=True)
        split.save(out_dir / "split.json")
    started = time.time()
    trainer.run_until(config.steps, description="train denoiser")
    seconds = time.time() - started
    summary = {"steps": trainer.step, "resumed_from": resumed_from, "seconds_this_run": round(seconds, 1), "train_seconds_total": round(trainer.train_seconds, 1),
               "parameters": sum(p.numel() for p in unet.parameters()), "final_loss": trainer.history[-1]["loss"] if trainer.history else None,
               "members": len(members), "image_size": members.size, "channels": members.channels}
    if trainer.accelerator.is_main_process:
        save_denoiser(out_dir, trainer.ema_model(), schedule)
        write_record(out_dir, "train-denoiser", {**asdict(config), "data": data_spec, "image_size": members.size,
                      "subset": len(split.members) if split.nonmembers else None, "block_out_channels": list(block_out_channels),
                      "init": None if init is None else str(Path(init).resolve())},
                     {**summary, "history": trainer.history})
    return summary


def load_pretrained(folder: Path, members: ImageSet):
    """A pretrained denoiser to fine-tune, checked against the images it will be fine-tuned on."""
    unet, schedule = load_denoiser(folder)
    if unet.config.num_class_embeds is not None:
        raise ValueError(f"{folder} is a class-conditional model; fine-tune it with `cpsample train-conditional`")
    if (unet.config.in_channels, unet.config.sample_size) != (members.channels, members.size):
        raise ValueError(f"{folder} takes {unet.config.in_channels}-channel {unet.config.sample_size}x{unet.config.sample_size} "
                         f"images but the data are {members.channels}-channel {members.size}x{members.size}; "
                         f"pass --image-size {unet.config.sample_size} or pick a matching model")
    return unet.train(), schedule
