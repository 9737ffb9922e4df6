"""Commands for guided models: class-conditional denoisers with classifier-free guidance (paper App. B) and
Stable Diffusion pipelines protected in latent space (paper section 4.2, Table 2).

    cpsample train-conditional --data mnist --subset 200 --steps 4000 --out runs/cond
    cpsample train-classifier --model runs/cond --out runs/cond-clf
    cpsample sample --model runs/cond --classes 0,1,2 -n 8 --guard cpsample --classifier runs/cond-clf --out runs/s

    cpsample make-tiny-sd --out runs/tiny-sd
    cpsample train-latent-classifier --model runs/tiny-sd --data private/ --captions captions.txt --out
    runs/latent-clf
    cpsample sample --model runs/tiny-sd --prompts-file prompts.txt --guard cpsample --classifier runs/latent-clf \
        --compare-plain --out runs/sd
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cpsample.cli import options as opt
from cpsample.cli.common import (
    call_with,
    check_device_option,
    require_transformers,
    run_safely,
    say_trained,
    say_warnings,
    show,
    show_loss_table,
)
from cpsample.runs import RunFolder
from cpsample.sampling.settings import TinySd
from cpsample.settings import parse_widths
from cpsample.training.settings import TrainConfig


def register(app: typer.Typer) -> None:
    """Add the conditional and latent (Stable Diffusion) commands to the app."""
    app.command("train-conditional")(run_safely(train_conditional_command))
    app.command("make-tiny-sd")(run_safely(make_tiny_sd_command))
    app.command("train-t2i")(run_safely(train_t2i_command))
    app.command("train-latent-classifier")(run_safely(train_latent_classifier_command))


# --- class-conditional ---------------------------------------------------------------------------------------


@opt.with_settings(TrainConfig, "train", steps=10000)
def train_conditional_command(
    out: Annotated[
        Path, typer.Option(help="Output folder (diffusers layout: unet/, scheduler/, split.json, cpsample.json).")
    ],
    data: Annotated[str, typer.Option(help="'mnist', 'digits', or an .npz file with 'images' and 'labels'.")],
    image_size: opt.ImageSize = 16,
    subset: opt.Subset = None,
    train: dict = None,
    label_dropout: Annotated[
        float, typer.Option(help="Probability of training a step with the null label (CFG).")
    ] = 0.1,
    channels: opt.Channels = "32,64,64",
    resume: opt.Resume = False,
    overwrite: opt.Overwrite = False,
):
    """Train a class-conditional UNet2DModel with label dropout, for classifier-free guidance."""
    from cpsample.training.conditional import train_conditional
    from cpsample.training.members import prepare_training

    config = TrainConfig(**train)  # bad loop settings fail before anything is written or loaded
    RunFolder(out, "train-conditional", overwrite, resume, inputs=(data,)).prepare()
    members, split = prepare_training(data, image_size, subset, config)
    widths = parse_widths(channels)
    summary = train_conditional(
        members, split, out, config, label_dropout, None, resume, widths, split.source, overwrite
    )
    say_trained(summary, out, f"images of {summary['num_classes']} classes")


# --- Stable Diffusion (latent space) -------------------------------------------------------------------------


@opt.with_settings(TinySd, "tiny")
def make_tiny_sd_command(
    out: Annotated[
        Path, typer.Option(help="Folder for the pipeline (model_index.json, unet/, vae/, text_encoder/, ...).")
    ],
    tiny: dict = None,
    overwrite: opt.Overwrite = False,
):
    """Write a tiny random-weight Stable Diffusion pipeline, to try the latent workflow offline."""
    require_transformers()
    settings = TinySd(**tiny)  # a size the VAE cannot make fails before anything is written
    RunFolder(out, "make-tiny-sd", overwrite).prepare()
    from cpsample.sampling.latent import build_tiny_sd_pipeline

    folder = build_tiny_sd_pipeline(out, settings.image_size, settings.seed, settings.scheduler)
    size = f"{settings.image_size}x{settings.image_size}"
    show("pipeline", f"tiny Stable Diffusion pipeline ({size}, random weights) written to {folder}", str(folder))


@opt.with_settings(TrainConfig, "train", skip=("mixed_precision",), steps=12000, batch_size=32, save_every=250)
def train_t2i_command(
    data: Annotated[
        str, typer.Option(help="The captioned images: 'twemoji' (captioned by their names), or a folder / .npz.")
    ],
    out: Annotated[Path, typer.Option(help="Folder for the pipeline (model_index.json, unet/, vae/, ...).")],
    captions: Annotated[
        Optional[Path], typer.Option(help="'image file<TAB>caption' lines (or JSON); not needed for 'twemoji'.")
    ] = None,
    subset: opt.Subset = None,
    image_size: opt.ImageSize = 32,
    train: dict = None,
    vae_steps: Annotated[int, typer.Option(min=1, help="Of --steps, how many train the VAE first.")] = 3000,
    resume: opt.Resume = False,
    overwrite: opt.Overwrite = False,
):
    """Train a small latent text-to-image model (Stable Diffusion layout) on captioned images: VAE, then UNet and
    text encoder; a killed run resumes."""
    require_transformers()
    config = TrainConfig(**train)
    RunFolder(out, "train-t2i", overwrite, resume, inputs=(data, captions)).prepare()
    from cpsample.data.captions import captions_for
    from cpsample.training.members import prepare_training
    from cpsample.training.t2i import train_t2i

    members, split = prepare_training(data, image_size, subset, config)
    summary = train_t2i(
        members, captions_for(members, data, captions), split, out, config, vae_steps, resume, overwrite, split.source
    )
    cosine = summary["reconstruction_cosine_median"]
    say_trained(summary, out, "captioned images", f"; VAE reconstructions score {cosine:.3f} (median cosine)")


@opt.with_settings(TrainConfig, "train", skip=("mixed_precision",), steps=6000)
def train_latent_classifier_command(
    model: Annotated[Path, typer.Option(help="Local Stable Diffusion pipeline folder (model_index.json).")],
    out: Annotated[Path, typer.Option(help="Output folder for the latent classifier.")],
    data: Annotated[
        Optional[Path],
        typer.Option(
            help="Folder of the private images to protect (resized to the pipeline's resolution); default: the "
            "images a `train-t2i` model was trained on."
        ),
    ] = None,
    captions: Annotated[
        Optional[Path],
        typer.Option(
            help="Optional 'image file<TAB>caption' lines (or JSON), kept with the classifier (calibrate prompts "
            "with them); default: a `train-t2i` model's own."
        ),
    ] = None,
    train: dict = None,
    relabel_after: Annotated[
        int, typer.Option(help="Step at which latents still not fitted get a common label.")
    ] = 4000,
    channels: opt.Channels = "32,64,64",
    label_seed: opt.LabelSeed = None,
    resume: opt.Resume = False,
    overwrite: opt.Overwrite = False,
    device: opt.Device = "cpu",
):
    """Train CPSample's random-label classifier on the VAE latents of a private image set."""
    require_transformers()
    config = TrainConfig(**train)
    RunFolder(out, "train-latent-classifier", overwrite, resume, inputs=(model, data, captions)).prepare()
    check_device_option(device)
    from cpsample.training.latent_classifier import train_latent_classifier
    from cpsample.workflows.classifier import ClassifierRun

    summary = call_with(
        train_latent_classifier, locals(), pipeline_dir=model, images_dir=data, out_dir=out,
        captions_file=captions, block_out_channels=parse_widths(channels),
    )  # fmt: skip
    show_loss_table("latent classifier on the private latents (EMA weights)", summary)
    fix = None if summary["reached_paper_loss"] else "train longer (--steps, with --resume) or wider (--channels)"
    run = ClassifierRun(summary, fix)
    latents = f"{summary['members']} private images as {tuple(summary['latent_shape'])} latents"
    show("summary", f"{latents}; {run.verdict(out)}", summary)
    say_warnings([run.not_fitted] if run.not_fitted else [])
