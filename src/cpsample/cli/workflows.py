"""CLI commands for the end-to-end workflows: `cpsample demo` and `cpsample calibrate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cpsample.cli.common import (DEFAULT_ALPHA, DEFAULT_SCALE, DEFAULT_TAU, Alpha, console, Device, run_safely,
                                 Scale, Seed, Tau)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
    app.command("calibrate")(calibrate_command)


@run_safely
def demo_command(
    out: Annotated[Path, typer.Option(help="Report folder: report.html/.md/.json, figures, samples.")] = Path("demo_out"),
    n_samples: Annotated[int, typer.Option(min=1, help="Images per method.")] = 500,
    alpha: Alpha = DEFAULT_ALPHA,
    scale: Scale = DEFAULT_SCALE,
    tau: Tau = DEFAULT_TAU,
    steps: Annotated[int, typer.Option(min=1, help="DDIM steps.")] = 50,
    threshold: Annotated[Optional[float], typer.Option(help="Near-copy cosine threshold (default: 0.98, pixels).")] = None,
    mia_members: Annotated[int, typer.Option(help="Members attacked by membership inference (0 skips it).")] = 200,
    model: Annotated[str, typer.Option(help="Denoiser folder, or 'bundled'.")] = "bundled",
    classifier: Annotated[str, typer.Option(help="CPSample classifier folder, or 'bundled'.")] = "bundled",
    batch_size: int = 250,
    device: Device = "cpu",
    seed: Seed = 0,
):
    """Plain vs CPSample vs rejection sampling on the bundled model: near-copies, quality, MIA, cost, figures."""
    from cpsample.workflows.demo import DemoSettings, run_demo

    settings = DemoSettings(model=model, classifier=classifier, n_samples=n_samples, steps=steps, alpha=alpha, scale=scale,
                            tau=tau, mia_members=mia_members, batch_size=batch_size, device=device, seed=seed)
    if threshold is not None:
        settings.threshold = threshold
    results = run_demo(out, settings)
    table = Table(title=f"demo: {n_samples} images per method, near-copy = cosine > {settings.threshold} ({settings.features})")
    for column in ("method", "near-copies", "share (95% CI)", "FD", "s/image", "denoiser calls/image"):
        table.add_column(column, justify="right")
    for name, method in results["methods"].items():
        rep, cost = method["replication"], results["costs"][name]
        fd = method.get("quality", {}).get("value")
        table.add_row(name, f"{rep['count']}/{rep['n']}", f"{rep['share']:.1%} ({rep['ci_low']:.1%}-{rep['ci_high']:.1%})",
                      "-" if fd is None else f"{fd:.2f}", f"{cost['seconds_per_image']:.3f}", f"{cost['denoiser_calls_per_image']:.0f}")
    console.print(table)
    for comparison in results.get("comparisons", []):
        console.print(f"chi-square {comparison['baseline']} vs {comparison['method']}: p = {comparison['p_value']:.3g}")
    console.print(f"report: {Path(out) / 'report.html'}  ({results['seconds_total']:.0f}s)")


@run_safely
def calibrate_command(
    out: Annotated[Path, typer.Option(help="Folder for calibration.json/.csv and cpsample.json.")],
    target: Annotated[float, typer.Option(help="Largest acceptable near-copy share, e.g. 0.01.")] = 0.01,
    n_samples: Annotated[int, typer.Option(min=1, help="Calibration batch size per setting.")] = 100,
    alphas: Annotated[str, typer.Option(help="Comma-separated alpha values to try.")] = "0.001,0.01,0.1",
    scales: Annotated[str, typer.Option(help="Comma-separated guidance scales to try.")] = "10,100,1000",
    tau: Tau = DEFAULT_TAU,
    steps: int = 50,
    threshold: Annotated[Optional[float], typer.Option(help="Near-copy cosine threshold (default 0.98, pixels).")] = None,
    model: str = "bundled",
    classifier: str = "bundled",
    device: Device = "cpu",
    seed: Seed = 0,
):
    """Search (alpha, s) for the least aggressive CPSample setting whose near-copy share stays under --target."""
    from cpsample.provenance import write_record
    from cpsample.workflows.calibrate import GridSettings, choose_setting, run_grid

    if not 0.0 <= target <= 1.0:
        raise ValueError(f"--target is a share in [0, 1], got {target}")
    settings = GridSettings(model=model, classifier=classifier, n_samples=n_samples, steps=steps, alphas=_floats(alphas, "--alphas"),
                            scales=_floats(scales, "--scales"), tau=tau, device=device, seed=seed)
    if threshold is not None:
        settings.threshold = threshold
    rows = run_grid(settings)
    chosen = choose_setting(rows, target)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "calibration.csv", rows)
    (out / "calibration.json").write_text(json.dumps({"target": target, "chosen": chosen, "rows": rows}, indent=2))
    write_record(out, "calibrate", {**settings.__dict__, "target": target}, {"chosen": chosen})
    table = Table(title=f"calibration on {n_samples} images per setting (target near-copy share <= {target:.1%})")
    for column in ("alpha", "s", "near-copies", "share (95% CI)", "steps guided", "FD", "time vs plain"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row("plain" if row["alpha"] is None else f"{row['alpha']:g}", "-" if row["scale"] is None else f"{row['scale']:g}",
                      str(row["near_copies"]), f"{row['near_copy_share']:.1%} ({row['ci_low']:.1%}-{row['ci_high']:.1%})",
                      "-" if row["steps_guided"] is None else f"{row['steps_guided']:.1%}",
                      "-" if row["frechet_distance"] is None else f"{row['frechet_distance']:.2f}", f"{row['time_vs_plain']:.2f}x")
    console.print(table)
    if chosen is None:
        console.print(f"[bold red]no setting met the target {target:.1%}[/]: try larger --alphas or --scales")
        raise typer.Exit(code=1)
    console.print(f"chosen: --alpha {chosen['alpha']:g} --scale {chosen['scale']:g} "
                  f"(near-copy share {chosen['near_copy_share']:.1%}, FD {chosen['frechet_distance']:.2f})")


def _floats(text: str, option: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"{option} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise ValueError(f"{option} is empty")
    return values


def _write_csv(path: Path, rows: list[dict]) -> None:
    import csv

    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
