"""The `cpsample` command line. Each command takes --seed and writes a cpsample.json recording its settings."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, Optional

import typer

from cpsample.cli import options as opt
from cpsample.cli.common import (
    Results,
    call_with,
    check_device_option,
    configure_logging,
    log,
    require_transformers,
    run_safely,
    say_trained,
    say_warnings,
    show,
    show_loss_table,
    show_table,
)
from cpsample.runs import RunFolder
from cpsample.sampling.settings import Comparison, Conditions, SampleConfig
from cpsample.settings import parse_widths
from cpsample.training.settings import ClassifierTraining, TrainConfig

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Classifier-protected sampling: sample diffusion models without reproducing their training images.",
)


@app.command("train-denoiser")
@run_safely
@opt.with_settings(TrainConfig, "train", steps=10000)
def train_denoiser_command(
    out: Annotated[Path, typer.Option(help="Output folder (diffusers layout: unet/, scheduler/).")],
    data: Annotated[
        str, typer.Option(help="'mnist', 'digits', 'twemoji' (32x32 RGB), a folder of PNG/JPG, or an .npz file.")
    ],
    image_size: opt.ImageSize = 16,
    subset: opt.Subset = None,
    train: dict = None,
    channels: opt.Channels = "32,64,64",
    init: Annotated[
        Optional[Path],
        typer.Option(
            help="Fine-tune this eps-predicting diffusers UNet2DModel folder (unet/, scheduler/) instead of starting "
            "from random weights; --channels is then taken from it."
        ),
    ] = None,
    resume: opt.Resume = False,
    overwrite: opt.Overwrite = False,
):
    """Train an eps-predicting UNet2DModel (accelerate, EMA, safetensors checkpoints), from scratch or from --init."""
    from cpsample.training.denoiser import train_denoiser
    from cpsample.training.members import prepare_training

    config = TrainConfig(**train)  # bad loop settings fail before anything is written or loaded
    RunFolder(out, "train-denoiser", overwrite, resume, inputs=(data, init)).prepare()
    members, split = prepare_training(data, image_size, subset, config, init=None if init is None else str(init))
    widths = parse_widths(channels)
    summary = call_with(train_denoiser, locals(), out_dir=out, block_out_channels=widths, data_spec=split.source)
    say_trained(summary, out)


@app.command("train-classifier")
@run_safely
@opt.with_settings(ClassifierTraining, "training")
def train_classifier_command(
    out: Annotated[Path, typer.Option(help="Output folder for the classifier.")],
    model: Annotated[
        str, typer.Option(help="Denoiser folder whose training data and noise schedule to use, or 'bundled'.")
    ],
    training: dict = None,
    resume: opt.Resume = False,
    overwrite: opt.Overwrite = False,
):
    """Train the random-label classifier p(y | x_t, t) that CPSample guides with."""
    from cpsample.workflows.classifier import train_classifier_run

    settings = ClassifierTraining(**training)
    RunFolder(out, "train-classifier", overwrite, resume, inputs=(model,)).prepare()
    run = train_classifier_run(out, model, settings, resume, overwrite, say=log.info)
    show_loss_table("classifier on its training images (EMA weights)", run.summary)
    show("summary", run.verdict(out), run.summary)
    say_warnings([run.not_fitted] if run.not_fitted else [])


@app.command("sample")
@run_safely
@opt.with_settings(
    SampleConfig, "config", skip=("work_dir", "overwrite", "progress"), n=None, dtype="float32", device="cpu"
)
@opt.with_settings(Conditions, "conditions")
@opt.with_settings(Comparison, "comparison")
def sample_command(
    out: Annotated[
        Path,
        typer.Option(
            help="Output folder: grid.png (one row per class or prompt), samples.npz, cpsample.json (+ trace.npz, "
            "trace.png with --trace; plain/ with --compare-plain; private.json where prompts are measured against "
            "the private images: do not share it)."
        ),
    ],
    model: Annotated[
        str,
        typer.Option(
            help="Denoiser folder or 'bundled'; a class-conditional model (from train-conditional, sampled with "
            "--classes) or a Stable Diffusion pipeline folder (model_index.json, sampled with --prompt)."
        ),
    ],
    config: dict = None,
    guard: Annotated[
        str,
        typer.Option(
            help="Guidance strategy: none, cpsample, cpsample-staged or amg (delayed-cfg / opposite-cfg: for "
            "conditional models); `cpsample guards` lists their options."
        ),
    ] = "none",
    classifier: Annotated[
        Optional[str],
        typer.Option(
            help="Classifier folder for a guard that uses one (cpsample; cpsample-staged: its late stage), trained on "
            "--model's members; 'bundled' for the bundled model."
        ),
    ] = None,
    alpha: opt.Alpha = None,
    scale: opt.Scale = None,
    tau: opt.Tau = None,
    option: opt.GuardOption = None,
    conditions: dict = None,
    comparison: dict = None,
    trace: opt.Trace = False,
    overwrite: opt.Overwrite = False,
):
    """Sample images from any model (pixel, class-conditional, Stable Diffusion), plainly or with a guidance
    strategy; a killed run resumes."""
    from cpsample.sampling.adapters import adapter_class
    from cpsample.sampling.run import sample_run
    from cpsample.sampling.spec import parse_option_strings

    config, conditions = SampleConfig(**config, overwrite=overwrite), Conditions(**conditions)
    comparison = Comparison(**comparison)
    given = (model, classifier, conditions.prompts_file, comparison.private)
    RunFolder(out, "sample", overwrite, inputs=given).prepare()
    check_device_option(config.device)
    guard_options = parse_option_strings(guard, option, alpha=alpha, scale=scale, tau=tau)
    if adapter_class(model).conditioning == "prompts":
        require_transformers()  # a text encoder and its tokenizer
    run = sample_run(out, model, guard, guard_options, config, conditions, classifier, trace, comparison)
    say_warnings(run.warnings)
    if run.per_prompt:
        show_prompt_table(run)
    show("sample", run.summary(out), run.stats)


def show_prompt_table(run) -> None:
    """Per prompt and run (the guard's, then plain's): similarity of its images to the nearest private image."""
    rows = [{"prompt": entry.text[:60], "role": entry.role} for entry in run.prompts]
    columns = "prompt | role"
    for name, measured in run.per_prompt.items():
        for row, prompt in zip(rows, measured["per_prompt"]):
            row[name] = prompt
        columns += f" | max sim ({name})={name}.max_similarity:.3f | near-copies ({name})={name}.near_copies"
        columns += f" | steps guided ({name})={name}.share_of_steps_guided:.0%"
    title = "similarity of the generated images to the nearest private image (pixel cosine)"
    show_table("per_prompt", title, rows, columns, drop_empty=True)


@app.command("guards")
@run_safely
def guards_command():
    """List the guidance strategies and every option each one takes, with its default (set them with --option)."""
    from cpsample.sampling.guards import available_guards, option_rows

    rows = [dict(zip(("guard", "option", "default", "meaning"), row)) for row in option_rows(available_guards())]
    title = "guards (cpsample sample --guard NAME --option OPTION=VALUE)"
    show_table("guards", title, rows, "guard | option | default | meaning")


@app.callback()
def main_options(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a command's results as one JSON object on stdout (for scripts).")
    ] = False,
):
    """cpsample [--json] COMMAND ..."""
    from cpsample.models.allocator import keep_freed_memory

    Results.start(as_json)
    configure_logging()
    keep_freed_memory()  # 13% faster sampling on a CPU (models/allocator.py)


# Commands that live in their own modules (one module per area of the tool) add themselves to the app.
for _area in ("attack", "conditional", "evaluate", "workflows"):
    importlib.import_module(f"cpsample.cli.{_area}").register(app)

if __name__ == "__main__":
    app()
