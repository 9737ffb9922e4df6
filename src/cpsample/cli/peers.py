"""CLI for peer methods: `cpsample attack side` (SIDE extraction, plain or against CPSample).

`register_side(attack_app)` adds the command to the `attack` group (cpsample.cli.attack).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cpsample.cli import options as opt
from cpsample.cli.common import call_with, check_device_option, run_safely, show_table
from cpsample.runs import RunFolder


def side_command(
    out: Annotated[
        Path, typer.Option(help="Output folder: result.json, pool.png, attack.png, pairs.png, cpsample.json.")
    ],
    model: Annotated[
        str,
        typer.Option(
            help="Unconditional denoiser folder (with split.json), 'bundled', or a `train-t2i` pipeline (attacked "
            "through its empty prompt, as by someone without its captions)."
        ),
    ],
    guard: Annotated[
        str, typer.Option(help="Attack the plain sampler ('none') or the CPSample-protected one ('cpsample').")
    ] = "none",
    classifier: Annotated[
        Optional[str],
        typer.Option(help="CPSample classifier folder for --guard cpsample ('bundled' for the bundled model)."),
    ] = None,
    alpha: opt.Alpha = None,
    scale: opt.Scale = None,
    tau: opt.Tau = None,
    clusters: Annotated[int, typer.Option(min=1, help="k-means clusters K over the sample pool (paper: 100).")] = 20,
    n_samples: Annotated[int, typer.Option(min=1, help="Size of the sample pool that is clustered.")] = 500,
    min_cohesion: Annotated[
        float, typer.Option(help="Keep clusters whose mean cosine to their centroid is at least this.")
    ] = 0.5,
    attack_steps: Annotated[
        int, typer.Option(min=1, help="Denoising steps for the pool and the guided samples.")
    ] = 50,
    attack_scale: Annotated[
        float, typer.Option(min=0.0, help="Attacker's classifier-guidance scale lambda (paper sweeps 0-50).")
    ] = 1.0,
    per_class: Annotated[int, typer.Option(min=1, help="Guided samples per surrogate class.")] = 10,
    train_steps: Annotated[
        int, typer.Option(min=1, help="Training steps of the surrogate time-dependent classifier.")
    ] = 600,
    threshold: opt.NearCopyThreshold = None,
    batch_size: opt.BatchSize = 250,
    device: opt.Device = "cpu",
    overwrite: opt.Overwrite = False,
    seed: opt.Seed = 0,
):
    """SIDE: cluster the model's samples into surrogate classes, guide towards each, count extracted training
    images."""
    from cpsample.attacks.records import side_into
    from cpsample.attacks.side import SideConfig

    RunFolder(out, "attack side", overwrite, inputs=(model, classifier)).prepare()
    check_device_option(device)
    config = call_with(SideConfig, locals(), samples=n_samples)
    result = side_into(out, config, model, guard, classifier, alpha, scale, tau, device)
    rows = [
        {"samples": name, **summary}
        for name, summary in (
            ("unguided pool", result.pool),
            ("unguided, attack's budget", result.pool_same_budget),
            (f"SIDE (lambda={result.config['attack_scale']:g})", result.attack),
        )
        if summary is not None
    ]
    columns = "samples | n | near-copies=near_copies | AMS=ams:.1% | distinct training images=distinct_extracted"
    title = f"SIDE extraction (defence: {guard}; near-copy: cosine > {result.attack['threshold']})"
    show_table("side", title, rows, columns + " | UMS=ums:.1%")


def register_side(attack_app: typer.Typer) -> None:
    """Add `side` to the `cpsample attack` group."""
    attack_app.command("side")(run_safely(side_command))
