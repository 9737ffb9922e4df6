"""CLI commands `evaluate` (replication, quality and permutation test -> report) and `train-feature-net`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cpsample.cli import options as opt
from cpsample.cli.common import (
    check_device_option,
    run_safely,
    say_warnings,
    show,
    show_table,
)
from cpsample.evaluation.settings import EvaluateSettings, FeatureNetTraining
from cpsample.runs import RunFolder


def register(app: typer.Typer) -> None:
    app.command("evaluate")(run_safely(evaluate_command))
    app.command("train-feature-net")(run_safely(train_feature_net_command))


@opt.with_settings(EvaluateSettings, "measure", required=("model",))
def evaluate_command(
    samples: Annotated[
        list[str],
        typer.Option(
            help="[NAME=]PATH of a samples.npz (NAME defaults to its folder's name); repeat for each method. The "
            "first is the baseline."
        ),
    ],
    out: Annotated[
        Path, typer.Option(help="Output folder: report.html, report.md, report.json, figures, cpsample.json.")
    ],
    measure: dict = None,
    overwrite: opt.Overwrite = False,
):
    """Measure how much each sample set copies the training images; write an HTML/Markdown/JSON report."""
    from cpsample.data.samples import sample_paths
    from cpsample.evaluation.run import evaluate_run

    settings = EvaluateSettings(**measure)
    given = settings.model, settings.data, settings.features, settings.quality_net, settings.inception
    RunFolder(out, "evaluate", overwrite, inputs=(*sample_paths(samples), *given)).prepare()
    run = evaluate_run(out, samples, settings)
    settings = run.results["settings"]
    rows = [{"method": name, **measured} for name, measured in run.results["methods"].items()]
    columns = "method | n | near-copy share=replication.share:.2% | 95% CI from=replication.ci_low:.2%"
    columns += " | to=replication.ci_high:.2% | max sim=similarity.max:.4f | Carlini flagged=relative.share:.2%"
    columns += " | quality=quality.metric | value=quality.value:.2f | perm. p=permutation.p_value:.4f"
    columns += " | class agreement=quality.class_agreement.agreement:.1%"
    title = f"near-copies (cosine > {settings['threshold']}, {settings['features']})"
    show_table("near_copies", title, rows, columns, drop_empty=True)
    from cpsample.evaluation.report import verdict

    said = verdict(run.results)
    show("verdict", "\n".join(["verdict:", *(f"  {line}" for line in said)]), said)
    say_warnings(run.warnings)
    show("report", f"report: {run.report['html']}", str(run.report["html"]))


@opt.with_settings(FeatureNetTraining, "training", epochs=15)
def train_feature_net_command(
    out: Annotated[Path, typer.Option(help="Output folder: config.json, model.safetensors, cpsample.json.")],
    data: Annotated[
        str,
        typer.Option(
            help="'mnist', 'digits', 'twemoji' (six categories), or an .npz with 'labels' (real class labels needed)."
        ),
    ],
    image_size: Annotated[
        Optional[int], typer.Option(help="Resize images to this square size (match your samples).")
    ] = 16,
    training: dict = None,
    name: Annotated[str, typer.Option(help="Name used in the metric, e.g. FD_digitnet.")] = "digitnet",
    device: opt.Device = "cpu",
    overwrite: opt.Overwrite = False,
):
    """Train the small classifier whose features give the offline Frechet distance (FD_<name>, not FID)."""
    from cpsample.evaluation.feature_net import train_feature_net_into

    if image_size is not None and image_size < 1:
        raise ValueError(f"--image-size must be at least 1, got {image_size}")
    check_device_option(device)
    training = FeatureNetTraining(**training)
    RunFolder(out, "train-feature-net", overwrite, inputs=(data,)).prepare()
    summary = train_feature_net_into(out, data, training, image_size, name, device)
    accuracy = summary["held_out_accuracy"]
    text = f"{name}: held-out accuracy {'-' if accuracy is None else f'{accuracy:.4f}'} on "
    text += f"{summary['held_out_images']} images, train accuracy {summary['train_accuracy']:.4f} "
    show("trained", text + f"({summary['parameters']} parameters, {summary['seconds']}s); saved to {out}", summary)
