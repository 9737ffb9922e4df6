"""The `cpsample` command line. Each command takes --seed and writes a cpsample.json recording its settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cpsample.cli.common import (
    Alpha,
    BatchSize,
    Channels,
    Device,
    GuardOption,
    ImageSize,
    MixedPrecision,
    Overwrite,
    Resume,
    Scale,
    Seed,
    Steps,
    Subset,
    Tau,
    Trace,
    check_device_option,
    console,
    guard_stats,
    parse_widths,
    prepare_out,
    run_safely,
    say_warnings,
)
from cpsample.runs import RunFolder

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Classifier-protected sampling: sample diffusion models without reproducing their training images.",
)


@app.command("train-denoiser")
@run_safely
def train_denoiser_command(
    out: Annotated[Path, typer.Option(help="Output folder (diffusers layout: unet/, scheduler/).")],
    data: Annotated[
        str, typer.Option(help="'mnist', 'digits', 'twemoji' (32x32 RGB), a folder of PNG/JPG, or an .npz file.")
    ] = "mnist",
    image_size: ImageSize = 16,
    subset: Subset = None,
    steps: Steps = 10000,
    batch_size: BatchSize = 64,
    lr: float = 1e-3,
    ema_decay: float = 0.999,
    channels: Channels = "32,64,64",
    save_every: int = 500,
    mixed_precision: MixedPrecision = "no",
    init: Annotated[
        Optional[Path],
        typer.Option(
            help="Fine-tune this eps-predicting diffusers UNet2DModel folder (unet/, scheduler/) instead of starting "
            "from random weights; --channels is then taken from it."
        ),
    ] = None,
    resume: Resume = False,
    overwrite: Overwrite = False,
    seed: Seed = 0,
):
    """Train an eps-predicting UNet2DModel (accelerate, EMA, safetensors checkpoints), from scratch or from --init."""
    from cpsample.training.denoiser import train_denoiser
    from cpsample.training.members import prepare_training

    RunFolder(out, "train-denoiser", overwrite, resume, inputs=(data, init)).prepare()
    members, split, config = prepare_training(
        data,
        image_size,
        subset,
        seed,
        init=None if init is None else str(init),
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        ema_decay=ema_decay,
        save_every=save_every,
        mixed_precision=mixed_precision,
    )
    summary = train_denoiser(
        members,
        split,
        out,
        config,
        resume=resume,
        overwrite=overwrite,
        block_out_channels=parse_widths(channels),
        data_spec=split.source,
        init=init,
    )
    console.print(
        f"trained {summary['steps']} steps on {summary['members']} images "
        f"({summary['parameters'] / 1e6:.2f}M parameters, {summary['seconds_this_run']:.0f}s); saved to {out}"
    )


@app.command("train-classifier")
@run_safely
def train_classifier_command(
    out: Annotated[Path, typer.Option(help="Output folder for the classifier.")],
    denoiser: Annotated[
        str, typer.Option(help="Denoiser folder whose training data and noise schedule to use, or 'bundled'.")
    ] = "bundled",
    recipe: Annotated[
        str,
        typer.Option(
            help="Training recipe: 'paper' (every noise level, 6,000 steps: fits about 200 members), 'scaled' (t <= "
            "500, higher decaying LR, steps growing with the members: fits 1,000 and more) or 'auto' (paper up to 200 "
            "members, scaled above). Options below given explicitly override the recipe's."
        ),
    ] = "auto",
    steps: Annotated[Optional[int], typer.Option(min=1, help="Optimizer steps in all (default: the recipe's).")] = (
        None
    ),
    relabel_after: Annotated[
        Optional[int], typer.Option(help="Step at which images still not fitted get a common label.")
    ] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1)] = None,
    lr: Optional[float] = None,
    ema_decay: float = 0.999,
    channels: Annotated[Optional[str], typer.Option(help="Block widths, comma-separated.")] = None,
    label_seed: Annotated[Optional[int], typer.Option(help="Seed of the random labels (default: --seed).")] = None,
    negatives: Annotated[
        str,
        typer.Option(
            help="Non-member images trained towards p = 0.5, so the guard acts only near members: 'none' (the paper's "
            "classifier), 'samples' (the denoiser's own non-copy samples) or a data spec (folder, .npz, 'mnist')."
        ),
    ] = "none",
    negatives_count: Annotated[
        Optional[int], typer.Option(help="How many negatives (default: as many as members).")
    ] = None,
    max_t: Annotated[
        Optional[int],
        typer.Option(
            help="Train only at noise levels t <= MAX_T (e.g. 100 for a classifier that only judges denoised "
            "estimates: the early stage of two-stage CPSample). Default: the recipe's (paper: every t)."
        ),
    ] = None,
    save_every: int = 500,
    resume: Resume = False,
    overwrite: Overwrite = False,
    seed: Seed = 0,
):
    """Train the random-label classifier p(y | x_t, t) that CPSample guides with."""
    from cpsample.provenance import seed_everything
    from cpsample.training.classifier import PAPER_LOSS, denoiser_training_set, train_classifier
    from cpsample.training.loop import TrainConfig
    from cpsample.training.recipes import not_fitted_advice, plan_line, recipe_settings

    RunFolder(out, "train-classifier", overwrite, resume, inputs=(denoiser,)).prepare()
    seed_everything(seed)
    folder, schedule, members, split = denoiser_training_set(denoiser)
    widths = None if channels is None else parse_widths(channels)
    chosen, settings = recipe_settings(
        recipe, len(members), steps=steps, relabel_after=relabel_after, batch_size=batch_size, lr=lr,
        channels=widths, max_t=max_t,
    )  # fmt: skip
    config = TrainConfig(
        steps=settings["steps"],
        batch_size=settings["batch_size"],
        lr=settings["lr"],
        ema_decay=ema_decay,
        seed=seed,
        save_every=save_every,
    )
    console.print(plan_line(chosen, settings, members))
    negative_images = None
    if negatives != "none":
        from cpsample.workflows.negatives import load_negatives

        negative_images = load_negatives(
            negatives, members.images, negatives_count or len(members), str(folder), members.size, seed=seed
        )
    summary = train_classifier(
        members,
        split,
        schedule,
        out,
        config,
        label_seed=seed if label_seed is None else label_seed,
        relabel_after=settings["relabel_after"],
        block_out_channels=settings["channels"],
        resume=resume,
        denoiser_path=str(folder),
        overwrite=overwrite,
        negatives=negative_images,
        negatives_source=negatives,
        max_t=settings["max_t"],
        lr_decay=settings["lr_decay"],
        recorded={"recipe": chosen.name},
    )
    console.print(classifier_table(summary))
    verdict = "reached" if summary["reached_paper_loss"] else "did NOT reach"
    console.print(
        f"relabelled {summary['relabelled']} images; low-noise loss {summary['low_noise_loss']:.4f} "
        f"{verdict} the paper's < {PAPER_LOSS}; saved to {out}"
    )
    if not summary["reached_paper_loss"]:
        console.print(
            f"[bold red]the {summary['members']} members were NOT fitted[/]: CPSample is not confident on all of "
            f"them, so it cannot keep samples away from those. To fix: {not_fitted_advice(summary, settings, chosen)}"
        )


def classifier_table(summary: dict) -> Table:
    """The trained classifier's loss and accuracy on its training images at each reported noise level."""
    table = Table(title="classifier on its training images (EMA weights)")
    for column in ("t", "loss", "accuracy"):
        table.add_column(column, justify="right")
    for row in summary["per_timestep"]:
        table.add_row(str(row["t"]), f"{row['loss']:.4f}", f"{row['accuracy']:.3f}")
    return table


@app.command("sample")
@run_safely
def sample_command(
    out: Annotated[
        Path,
        typer.Option(
            help="Output folder: grid.png, samples.npz, cpsample.json (+ trace.npz, trace.png with --trace)."
        ),
    ],
    model: Annotated[str, typer.Option(help="Denoiser folder, or 'bundled'.")] = "bundled",
    n: Annotated[int, typer.Option("--n", "-n", min=1, help="Number of images.")] = 64,
    steps: Annotated[int, typer.Option(min=1, help="Denoising steps.")] = 50,
    scheduler: Annotated[str, typer.Option(help="ddim, ddpm or dpm++.")] = "ddim",
    guard: Annotated[
        str,
        typer.Option(
            help="Guidance strategy: none, cpsample, cpsample-staged or amg (delayed-cfg / opposite-cfg: see "
            "sample-conditional); `cpsample guards` lists their options."
        ),
    ] = "none",
    classifier: Annotated[
        str,
        typer.Option(help="Classifier folder for --guard cpsample (cpsample-staged: its late stage), or 'bundled'."),
    ] = "bundled",
    alpha: Alpha = None,
    scale: Scale = None,
    tau: Tau = None,
    option: GuardOption = None,
    batch_size: BatchSize = 250,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
    device: Device = "cpu",
    trace: Trace = False,
    overwrite: Overwrite = False,
    seed: Seed = 0,
):
    """Sample images, plainly or with a guidance strategy."""
    from cpsample.evaluation.honesty import protection_warnings
    from cpsample.provenance import write_record
    from cpsample.sampling.outputs import save_samples, save_trace
    from cpsample.sampling.pipeline import generate
    from cpsample.sampling.spec import parse_option_strings

    prepare_out(out, "sample", overwrite, inputs=(model, classifier))
    check_device_option(device)

    guard_options = parse_option_strings(guard, option, alpha=alpha, scale=scale, tau=tau)
    settings = {
        "model": model,
        "n": n,
        "steps": steps,
        "scheduler": scheduler,
        "guard": guard,
        "classifier": classifier,
        "batch_size": batch_size,
        "dtype": dtype,
        "device": device,
        "seed": seed,
    }
    result = generate(**settings, work_dir=out, overwrite=overwrite, **guard_options)
    paths = {
        **save_samples(out, result.images),
        **save_trace(out, result.trace, result.timesteps, result.guard_settings.get("alpha"), keep=trace),
    }
    stats = {
        "seconds": round(result.seconds, 2),
        "denoiser_calls": result.denoiser_calls,
        **guard_stats(result.trace),
        **paths,
        **say_warnings(protection_warnings(result.trace, guard, classifier)),
    }
    write_record(out, "sample", {**settings, **guard_options, "guard_settings": result.guard_settings}, stats)
    console.print(json.dumps(stats, indent=2))


@app.command("guards")
@run_safely
def guards_command():
    """List the guidance strategies and every option each one takes, with its default (set them with --option)."""
    from cpsample.sampling.guards import available_guards, option_rows

    table = Table(title="guards (cpsample sample --guard NAME --option OPTION=VALUE)")
    for column in ("guard", "option", "default", "meaning"):
        table.add_column(column)
    for row in option_rows(available_guards()):
        table.add_row(*row)
    console.print(table)


def _register_command_modules() -> None:
    """Commands that live in their own modules (one module per area of the tool)."""
    from cpsample.cli import attack, conditional, evaluate, workflows

    attack.register(app)
    conditional.register(app)
    evaluate.register(app)
    workflows.register(app)


_register_command_modules()

if __name__ == "__main__":
    app()
