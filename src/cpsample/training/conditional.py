"""Train a class-conditional denoiser for classifier-free guidance (paper App. B).

The UNet2DModel gets num_classes + 1 class embeddings: the last one is the null label that stands for "no
class". During training each label is replaced by the null label with probability `label_dropout`, so the one
network learns both eps(x_t, t, y) and eps(x_t, t, null), which is what classifier-free guidance mixes.
The export is the same diffusers folder as `train_denoiser` (unet/, scheduler/, split.json, cpsample.json), with
num_classes and null_label recorded, so `train_classifier` can train CPSample's random-label classifier on it.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cpsample.data import DataError, ImageSet, Split
from cpsample.models.denoiser import DEFAULT_CHANNELS, ClassInfo, build_denoiser, build_noise_schedule, save_denoiser
from cpsample.training.denoiser import denoiser_run_settings
from cpsample.training.loop import TrainConfig, TrainingRun

DEFAULT_LABEL_DROPOUT = 0.1


def drop_labels(labels: torch.Tensor, probability: float, null_label: int, generator: torch.Generator) -> torch.Tensor:
    """Replace each label by the null label with the given probability (teaches the unconditional eps)."""
    drop = torch.rand(labels.shape, generator=generator) < probability
    return torch.where(drop.to(labels.device), torch.full_like(labels, null_label), labels)


def conditional_eps_loss(schedule, null_label: int, label_dropout: float):
    """eps-MSE like `eps_loss`, with the class label (or, with probability label_dropout, the null label) given."""
    num_steps = schedule.config.num_train_timesteps

    def loss_fn(model, x0, labels, generator):
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        t = torch.randint(0, num_steps, (x0.shape[0],), generator=generator).to(x0.device)
        labels = drop_labels(labels, label_dropout, null_label, generator)
        prediction = model(schedule.add_noise(x0, noise, t), t, class_labels=labels).sample
        dropped = (labels == null_label).float().mean().item()
        return F.mse_loss(prediction.float(), noise), {"dropped": dropped}

    return loss_fn


def class_labels_of(members: ImageSet, num_classes: int | None = None) -> tuple[np.ndarray, int]:
    """The members' class labels and the class count (largest label + 1 unless given)."""
    if members.labels is None:
        raise DataError(
            f"{members.source}: these images carry no class labels; a class-conditional model needs them "
            "('mnist', 'digits', 'twemoji', or an .npz file with a 'labels' array)"
        )
    labels = np.asarray(members.labels, dtype=np.int64)
    if labels.min() < 0:
        raise DataError(f"{members.source}: class labels must be non-negative, found {labels.min()}")
    found = int(labels.max()) + 1
    if num_classes is None:
        return labels, found
    if found > num_classes:
        raise DataError(f"{members.source}: label {found - 1} found but num_classes is {num_classes}")
    return labels, num_classes


def train_conditional(
    members: ImageSet,
    split: Split,
    out_dir: Path,
    config: TrainConfig,
    label_dropout: float = DEFAULT_LABEL_DROPOUT,
    num_classes: int | None = None,
    resume: bool = False,
    block_out_channels=DEFAULT_CHANNELS,
    data_spec: str = "",
    overwrite: bool = False,
) -> dict:
    """Train (or resume) and export the EMA class-conditional model to out_dir; returns a summary."""
    if not 0.0 < label_dropout < 1.0:
        raise ValueError(
            f"label dropout must lie strictly between 0 and 1 (CFG needs both halves), got {label_dropout}"
        )
    run = TrainingRun(out_dir, config, resume, overwrite)
    labels, num_classes = class_labels_of(members, num_classes)
    info = ClassInfo(num_classes=num_classes, null_label=num_classes)
    unet = build_denoiser(members.size, members.channels, block_out_channels, num_class_embeds=num_classes + 1)
    schedule = build_noise_schedule()
    run_settings = {
        **denoiser_run_settings(members, split, block_out_channels, data_spec),
        "label_dropout": label_dropout,
        **asdict(info),
    }
    trainer = run.train(
        unet,
        members.tensor(),
        conditional_eps_loss(schedule, info.null_label, label_dropout),
        split,
        run_settings,
        targets=torch.from_numpy(labels),
        description="train conditional denoiser",
    )
    # data and image_size let `training_data` (and so train-classifier) find the members again.
    settings = {
        "data": data_spec,
        "image_size": members.size,
        "block_out_channels": list(block_out_channels),
        "label_dropout": label_dropout,
        "conditional": True,
        **asdict(info),
    }
    return run.finish(
        trainer,
        "train-conditional",
        settings,
        lambda folder: save_denoiser(folder, trainer.ema_model(), schedule),
        members=len(members),
        image_size=members.size,
        channels=members.channels,
        **asdict(info),
        images_per_class=np.bincount(labels, minlength=num_classes).tolist(),
    )
