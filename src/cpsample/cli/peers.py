"""CLI for peer methods: `cpsample attack side` (SIDE extraction, plain or against CPSample).

`register_side(attack_app)` adds the command to the `attack` group (cpsample.cli.attack).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cpsample.attacks.settings import SideConfig
from cpsample.cli import options as opt
from cpsample.cli.common import check_device_option, run_safely, show_table
from cpsample.runs import RunFolder


@opt.with_settings(SideConfig, "side_options")
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
    side_options: dict = None,
    device: opt.Device = "cpu",
    overwrite: opt.Overwrite = False,
):
    """SIDE: cluster the model's samples into surrogate classes, guide towards each, count extracted training
    images."""
    from cpsample.attacks.records import side_into

    config = SideConfig(**side_options)
    RunFolder(out, "attack side", overwrite, inputs=(model, classifier)).prepare()
    check_device_option(device)
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
