"""Train the CPSample classifier: memorise random Bernoulli(0.5) labels of the training images at every noise level.

Phase 1 fits the random labels on x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps with the denoiser's own schedule.
Images the classifier still cannot fit at low noise (duplicates or near-duplicates of an image with the other
label) then get one common label, and phase 2 continues with the same optimizer (paper section 3.1).

Optional negatives make the classifier selective: images that are not members (the denoiser's own non-copy samples,
or public images) are trained towards p = 0.5 for both labels, so the classifier is over-confident only near the
members and CPSample leaves samples far from them untouched. Their target is the label UNSURE.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cpsample.data import ImageSet, Split
from cpsample.models.bundle import resolve_model_dir, training_data
from cpsample.models.classifier import TimeClassifier
from cpsample.models.denoiser import load_noise_schedule
from cpsample.training.loop import TrainConfig, Trainer, TrainingRun
from cpsample.training.recipes import lr_warmup_cosine

REPORT_TIMESTEPS = (0, 50, 100, 250, 500, 750, 999)
LOW_NOISE = (0, 50, 100)  # where the bench and hard-example sampling judge a member fitted
HARD_EVERY = 2000  # steps between hard-example re-weighings (bench_members.py measured this spacing)
PAPER_LOSS = 0.05
UNSURE = -1  # target of a negative image: no label, trained towards p(y=0) = p(y=1) = 0.5 (-1: never a class)


def random_labels(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, size=count).astype(np.int64)


def noisy_ce_loss(schedule, max_t: int | None = None, low_noise_bias: float = 1.0):
    """Cross-entropy on x_t at uniform t; with max_t only t <= max_t (a classifier that will only judge the
    denoised estimate, at t = 0, spends no capacity on noise levels it never sees). With low_noise_bias b > 1, t is
    drawn as u**b * steps: low noise more often (density ~ t**(1/b - 1)), where members differ and labels are fitted
    first, while every level up to max_t is still trained."""
    num_steps = schedule.config.num_train_timesteps if max_t is None else max_t + 1

    def draw_timesteps(count: int, generator) -> torch.Tensor:
        if low_noise_bias == 1.0:
            return torch.randint(0, num_steps, (count,), generator=generator)
        u = torch.rand(count, generator=generator)
        return (u**low_noise_bias * num_steps).long().clamp(max=num_steps - 1)

    def loss_fn(model, x0, labels, generator):
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        t = draw_timesteps(x0.shape[0], generator).to(x0.device)
        logits = model(schedule.add_noise(x0, noise, t), t).float()
        labelled = labels != UNSURE
        if bool(labelled.all()):  # the paper's classifier: plain cross-entropy
            return F.cross_entropy(logits, labels), {"acc": (logits.argmax(-1) == labels).float().mean().item()}
        # Cross-entropy with the random label for members; with the uniform distribution for negatives.
        log_p = logits.log_softmax(-1)
        per_image = torch.where(labelled, -log_p.gather(1, labels.clamp(min=0)[:, None]).squeeze(1), -log_p.mean(-1))
        accuracy = (
            (logits.argmax(-1) == labels)[labelled].float().mean().item() if bool(labelled.any()) else float("nan")
        )
        return per_image.mean(), {"acc": accuracy}

    return loss_fn


@torch.no_grad()
def per_image_loss(
    model,
    images: torch.Tensor,
    labels: torch.Tensor,
    schedule,
    timesteps,
    draws: int = 4,
    seed: int = 0,
    batch_size: int = 500,
) -> np.ndarray:
    """Cross-entropy per image and timestep, averaged over `draws` noise draws: shape (len(timesteps), N)."""
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    losses = np.zeros((len(timesteps), len(images)))
    for row, step in enumerate(timesteps):
        for _ in range(draws):
            for start in range(0, len(images), batch_size):
                x0 = images[start : start + batch_size].to(device)
                y = labels[start : start + batch_size].to(device)
                noise = torch.randn(x0.shape, generator=generator).to(device)
                t = torch.full((len(x0),), int(step), device=device, dtype=torch.long)
                logits = model(schedule.add_noise(x0, noise, t), t).float()
                losses[row, start : start + len(x0)] += (
                    F.cross_entropy(logits, y, reduction="none").cpu().numpy() / draws
                )
    return losses


def hard_example_weights(model, images, labels, schedule, total: int, seed: int) -> torch.Tensor:
    """Odds of drawing each of `total` training items (the members first, then any negatives): the members' share
    goes half uniformly, half in proportion to each member's low-noise loss, so members still misfit are drawn more
    often; negatives keep their uniform share."""
    loss = per_image_loss(model, images, labels, schedule, LOW_NOISE, draws=1, seed=seed)
    loss = torch.from_numpy(loss.mean(0)).float()
    weights = torch.full((total,), 1.0 / total)
    weights[: len(images)] = 0.5 / total + 0.5 * (len(images) / total) * loss / loss.sum().clamp(min=1e-12)
    return weights


def train_in_parts(trainer: Trainer, last_step: int, description: str, weigh=None) -> None:
    """trainer.run_until(last_step); with weigh (EMA model -> odds of drawing each item), the odds are drawn anew
    every HARD_EVERY steps (hard-example sampling). A resumed run re-weighs at the same steps as an uninterrupted one
    (the odds in use are part of the saved state)."""
    every = HARD_EVERY
    while trainer.step < last_step:
        if weigh is not None and trainer.step and trainer.step % every == 0:
            trainer.sample_weights = weigh(trainer.ema_model())
        stop = last_step if weigh is None else min(last_step, (trainer.step // every + 1) * every)
        trainer.run_until(stop, description, bar_total=last_step)


@torch.no_grad()
def per_timestep_report(model, images, labels, schedule, timesteps=REPORT_TIMESTEPS, seed: int = 0) -> list[dict]:
    """Accuracy and mean loss of the classifier at fixed timesteps, on the training images with their labels."""
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for step in timesteps:
        noise = torch.randn(images.shape, generator=generator)
        t = torch.full((len(images),), int(step), dtype=torch.long)
        logits = torch.cat(
            [
                model(schedule.add_noise(x, n, tt).to(device), tt.to(device)).float().cpu()
                for x, n, tt in zip(images.split(500), noise.split(500), t.split(500))
            ]
        )
        rows.append(
            {
                "t": int(step),
                "loss": F.cross_entropy(logits, labels).item(),
                "accuracy": (logits.argmax(-1) == labels).float().mean().item(),
            }
        )
    return rows


def denoiser_training_set(denoiser: str | Path) -> tuple[Path, object, ImageSet, Split]:
    """What a classifier protecting `denoiser` ('bundled' or a folder) trains on: the folder (absolute, so the record
    finds it from any directory), its noise schedule, its members and their split."""
    folder = resolve_model_dir(denoiser, "denoiser").resolve()
    schedule = load_noise_schedule(folder)
    dataset, split = training_data(folder)
    return folder, schedule, dataset.take(split.members), split


def train_classifier(
    members: ImageSet,
    split: Split,
    schedule,
    out_dir: Path,
    config: TrainConfig,
    label_seed: int,
    relabel_after: int,
    relabel_max_t: int = 100,
    relabel_threshold: float = 0.6931,
    block_out_channels=(32, 64, 64),
    resume: bool = False,
    denoiser_path: str = "",
    overwrite: bool = False,
    negatives: np.ndarray | None = None,
    negatives_source: str = "none",
    command: str = "train-classifier",
    recorded: dict | None = None,
    max_t: int | None = None,
    run_extra: dict | None = None,
    lr_decay: bool = False,
    low_noise_bias: float = 1.0,
    hard_examples: bool = False,
) -> dict:
    """Train (or resume), export the EMA classifier to out_dir/classifier, write labels.json; returns a summary.

    negatives: (M, C, H, W) non-member images in [-1, 1] trained towards p = 0.5 (see the module's docstring).
    max_t: train at noise levels t <= max_t only (None: all of them, as the paper does).
    lr_decay: warm the LR up, then decay it (cosine) to 5% at the last step (the scaled recipe; None: constant).
    low_noise_bias: draw t as u**bias * (max_t + 1), low noise more often (1: uniform; see noisy_ce_loss).
    hard_examples: every 2,000 steps, draw members still misfit at low noise more often (hard_example_weights).
    command and recorded: the provenance record's command and settings beyond the classifier's own.
    run_extra: more of what the run trains on (e.g. the latents' VAE), which a --resume must match."""
    if max_t is not None and not relabel_max_t <= max_t < schedule.config.num_train_timesteps:
        raise ValueError(
            f"max_t must lie between relabel_max_t ({relabel_max_t}) and "
            f"{schedule.config.num_train_timesteps - 1}, got {max_t}"
        )
    run = TrainingRun(out_dir, config, resume, overwrite)
    initial = random_labels(len(members), label_seed)
    model = TimeClassifier(
        sample_size=members.size,
        in_channels=members.channels,
        block_out_channels=tuple(block_out_channels),
        norm_num_groups=min(16, min(block_out_channels)),
    )
    images = members.tensor()
    data, targets = _with_negatives(images, torch.from_numpy(initial), negatives)
    negatives_count = len(data) - len(images)
    labelling = {
        "label_seed": label_seed,
        "relabel_after": relabel_after,
        "relabel_max_t": relabel_max_t,
        "relabel_threshold": relabel_threshold,
        **({"max_t": max_t} if max_t is not None else {}),
        **({"lr_decay": True} if lr_decay else {}),
        **({"low_noise_bias": low_noise_bias} if low_noise_bias != 1.0 else {}),
        **({"hard_examples": True} if hard_examples else {}),
    }
    run_settings = {
        "split": split.fingerprint(),
        "image_size": members.size,
        "image_channels": members.channels,
        "block_out_channels": list(block_out_channels),
        **labelling,
        "negatives": negatives_source,
        "noise_schedule": schedule.alphas_cumprod.tolist()[::100],
        "negatives_count": negatives_count,
        **(run_extra or {}),
    }
    relabelled: list[int] = []

    def relabel_midway(trainer: Trainer) -> None:
        nonlocal relabelled
        relabelled = run.state.get("relabelled", [])

        def weigh(model) -> torch.Tensor:  # the members' labels as they stand (after any relabelling)
            labels = trainer.targets[: len(images)]
            return hard_example_weights(model, images, labels, schedule, len(data), config.seed + 1)

        hard = weigh if hard_examples else None
        if trainer.step < relabel_after < config.steps:
            train_in_parts(trainer, relabel_after, "train classifier (phase 1)", hard)
            relabelled = _relabel_unfit(trainer, images, schedule, relabel_max_t, relabel_threshold, config.seed)
            trainer.save_state(extra={"relabelled": relabelled})
        phase = " (phase 2)" if relabel_after < config.steps else ""
        train_in_parts(trainer, config.steps, "train classifier" + phase, hard)
        trainer.save_state(extra={"relabelled": relabelled})

    trainer = run.train(
        model,
        data,
        noisy_ce_loss(schedule, max_t, low_noise_bias),
        split,
        run_settings,
        targets=targets,
        phases=relabel_midway,
        lr_factor=lr_warmup_cosine(config.steps) if lr_decay else None,
    )
    final = trainer.ema_model()
    labels = trainer.targets.cpu()[: len(images)]
    report = per_timestep_report(final, images, labels, schedule, seed=config.seed)
    low_noise_loss = float(np.mean([r["loss"] for r in report if r["t"] <= relabel_max_t]))

    def save(folder: Path) -> None:
        final.save_pretrained(folder / "classifier", safe_serialization=True)
        schedule.save_pretrained(folder / "scheduler")
        (folder / "labels.json").write_text(
            json.dumps(
                {
                    "label_seed": label_seed,
                    "member_indices": split.members,
                    "initial_labels": initial.tolist(),
                    "labels": labels.tolist(),
                    "relabelled_positions": relabelled,
                }
            )
        )

    settings = {
        **labelling,
        "denoiser": denoiser_path,
        "block_out_channels": list(block_out_channels),
        **(recorded or {}),
    }
    return run.finish(
        trainer,
        command,
        settings,
        save,
        members=len(members),
        relabelled=len(relabelled),
        per_timestep=report,
        low_noise_loss=low_noise_loss,
        reached_paper_loss=low_noise_loss < PAPER_LOSS,
        negatives=negatives_count,
        negatives_source=negatives_source,
    )


def _with_negatives(images: torch.Tensor, labels: torch.Tensor, negatives: np.ndarray | None):
    """The members with their labels, then the negatives (if any) with the target UNSURE."""
    if negatives is None or not len(negatives):
        return images, labels
    return (
        torch.cat([images, torch.as_tensor(negatives, dtype=images.dtype)]),
        torch.cat([labels, torch.full((len(negatives),), UNSURE, dtype=labels.dtype)]),
    )


def _relabel_unfit(trainer: Trainer, images, schedule, max_t: int, threshold: float, seed: int) -> list[int]:
    """Give one common label (0) to images whose low-noise loss is still above threshold; returns their positions."""
    model = trainer.ema_model()
    timesteps = np.linspace(0, max_t, 5).astype(int)
    losses = per_image_loss(model, images, trainer.targets[: len(images)], schedule, timesteps, seed=seed).mean(axis=0)
    unfit = np.flatnonzero(losses > threshold)  # positions among the members (negatives come after them)
    trainer.targets = trainer.targets.clone()
    trainer.targets[torch.from_numpy(unfit)] = 0
    return unfit.tolist()
