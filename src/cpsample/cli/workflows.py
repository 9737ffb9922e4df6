"""CLI commands for the end-to-end workflows: `cpsample demo` and `cpsample calibrate`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from cpsample.calibration import grid
from cpsample.cli import options as opt
from cpsample.cli.common import check_device_option, console, output, run_safely
from cpsample.runs import RunFolder

if TYPE_CHECKING:
    from cpsample.calibration import CalibrationResult


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
    app.command("calibrate")(calibrate_command)


@run_safely
def demo_command(
    out: Annotated[Path, typer.Option(help="Report folder: report.html/.md/.json, figures, samples.")] = Path(
        "demo_out"
    ),
    n_samples: Annotated[int, typer.Option(min=1, help="Images per method.")] = 500,
    alpha: opt.Alpha = None,
    scale: opt.Scale = None,
    tau: opt.Tau = None,
    steps: opt.SamplingSteps = 50,
    threshold: opt.NearCopyThreshold = None,
    mia_members: Annotated[int, typer.Option(help="Members attacked by membership inference (0 skips it).")] = 200,
    model: opt.Denoiser = "bundled",
    classifier: opt.Classifier = "bundled",
    one_stage_row: Annotated[
        bool,
        typer.Option(
            help="Where the classifier's calibration chose two stages, also sample the paper's one-stage rule."
        ),
    ] = True,
    batch_size: opt.BatchSize = 250,
    device: opt.Device = "cpu",
    overwrite: opt.Overwrite = False,
    seed: opt.Seed = 0,
):
    """Plain vs CPSample (as calibrated; and the paper's one-stage rule) vs rejection sampling on the bundled model:
    near-copies, quality, membership inference (white box: loss / PIA; black box: sample-only), cost, figures."""
    from cpsample.workflows.demo import DemoSettings, run_demo

    RunFolder(out, "demo", overwrite, inputs=(model, classifier)).prepare()
    check_device_option(device)
    settings = DemoSettings(
        model=model,
        classifier=classifier,
        n_samples=n_samples,
        steps=steps,
        alpha=alpha,
        scale=scale,
        tau=tau,
        threshold=threshold,
        mia_members=mia_members,
        batch_size=batch_size,
        device=device,
        seed=seed,
        one_stage_row=one_stage_row,
    )
    results = run_demo(out, settings)
    table = Table(
        title=f"demo: {n_samples} images per method, near-copy = cosine > {settings.threshold} ({settings.features})"
    )
    for column in ("method", "near-copies", "share (95% CI)", "FD", "s/image", "denoiser calls/image"):
        table.add_column(column, justify="right")
    for name, method in results["methods"].items():
        rep, cost = method["replication"], results["costs"][name]
        fd = method.get("quality", {}).get("value")
        table.add_row(
            name,
            f"{rep['count']}/{rep['n']}",
            f"{rep['share']:.1%} ({rep['ci_low']:.1%}-{rep['ci_high']:.1%})",
            "-" if fd is None else f"{fd:.2f}",
            f"{cost['seconds_per_image']:.3f}",
            f"{cost['denoiser_calls_per_image']:.0f}",
        )
    output.print(table)
    for comparison in results.get("comparisons", []):
        output.print(f"chi-square {comparison['baseline']} vs {comparison['method']}: p = {comparison['p_value']:.3g}")
    membership = results.get("membership_inference")
    if membership:
        mia = Table(title="membership inference per threat model (AUC 0.5 = no leak)")
        for column in ("threat model", "defence", "attack", "AUC", "TPR@1%FPR"):
            mia.add_column(column, justify="right")
        for row in membership["rows"]:
            mia.add_row(
                row["threat model"], row["defence"], row["attack"], f"{row['AUC']:.3f}", f"{row['TPR@1%FPR']:.1%}"
            )
        output.print(mia)
    output.print(f"report: {Path(out) / 'report.html'}  ({results['seconds_total']:.0f}s)")


@run_safely
def calibrate_command(
    out: Annotated[
        Path, typer.Option(help="Folder for calibration_run.json, calibration.csv/.png and cpsample.json.")
    ],
    reduction: Annotated[
        Optional[float],
        typer.Option(help="Cut near-copies by at least this share relative to plain sampling (0.9: to a tenth)."),
    ] = 0.9,
    target: Annotated[
        Optional[float], typer.Option(help="Also keep the near-copy share at most this, e.g. 0.01.")
    ] = None,
    n_samples: Annotated[
        int, typer.Option(min=1, help="Calibration batch size per setting (same noise for every setting).")
    ] = 300,
    alphas: Annotated[str, typer.Option(help="Comma-separated alpha values to try.")] = grid.as_option(grid.ALPHAS),
    scales: Annotated[str, typer.Option(help="Comma-separated guidance scales to try.")] = grid.as_option(grid.SCALES),
    tau: opt.Tau = None,
    steps: opt.SamplingSteps = 50,
    threshold: opt.NearCopyThreshold = None,
    model: Annotated[
        Optional[str],
        typer.Option(
            help="Denoiser folder, 'bundled', or a Stable Diffusion pipeline folder (then --classifier is a "
            "`train-latent-classifier` folder). Default: the pipeline a latent --classifier was trained for, else "
            "'bundled'."
        ),
    ] = None,
    classifier: opt.Classifier = "bundled",
    quality_net: Annotated[
        str,
        typer.Option(
            help="Feature net for the quality (FD) column: 'bundled' (the shipped net for the model's channels: MNIST "
            "digitnet for grey, Twemoji emojinet for RGB), a shipped net's name, or a `cpsample train-feature-net` "
            "folder trained on images like yours. Not used for a Stable Diffusion pipeline (no held-out images there)."
        ),
    ] = "bundled",
    prompt: Annotated[
        Optional[list[str]],
        typer.Option(
            help="Stable Diffusion: a prompt to sample (repeatable). Default: the latent classifier's captions."
        ),
    ] = None,
    prompts_file: Annotated[
        Optional[Path],
        typer.Option(
            help="Stable Diffusion: one prompt per line (as sample-sd reads it; both captions of a pair are sampled)."
        ),
    ] = None,
    cfg_scale: Annotated[float, typer.Option(help="Stable Diffusion: classifier-free guidance scale.")] = 7.5,
    private: Annotated[
        Optional[Path],
        typer.Option(
            help="Stable Diffusion: private images near-copies are counted against (default: the classifier's)."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch (Stable Diffusion: per prompt).")] = 250,
    early_classifier: Annotated[
        Optional[str],
        typer.Option(
            help="A selective classifier of the same members (`train-classifier --negatives samples`): CPSample in "
            "two stages (cpsample-staged) then competes, and becomes `--guard cpsample`'s default if it wins."
        ),
    ] = None,
    early_scales: Annotated[str, typer.Option(help="Two stages: early-stage scales to try.")] = grid.as_option(
        grid.EARLY_SCALES
    ),
    staged_scales: Annotated[
        str,
        typer.Option(
            help="Two stages: late-stage scales to try (alpha 0.1), the main classifier judging x_t; 'none': skip."
        ),
    ] = grid.as_option(grid.STAGED_SCALES),
    denoised_late_scales: Annotated[
        str,
        typer.Option(
            help="Two stages: late-stage scales to try (alpha 0.3) with the early classifier judging x0_hat late too "
            "(a selective late stage); 'none': skip."
        ),
    ] = grid.as_option(grid.DENOISED_LATE_SCALES),
    push_caps: Annotated[
        str,
        typer.Option(
            help="Two stages: caps on each sample's push to try (RMS in units of eps; 'none': uncapped, the paper's "
            "push)."
        ),
    ] = grid.as_option(grid.PUSH_CAPS),
    late_classifier: Annotated[
        Optional[list[str]],
        typer.Option(
            help="Two stages: another classifier of the same members (e.g. `train-classifier --channels 16,32,32`) "
            "tried as the late stage on x_t beside --classifier, with the same scales and caps; repeatable. The width "
            "that costs least depends on the model. When one wins, calibration.json (next to --classifier) records "
            "its folder."
        ),
    ] = None,
    finalists: Annotated[
        int,
        typer.Option(
            min=0,
            help="Below 2,000 images the grid is a screen: its best feasible settings (this many, by FD) and plain "
            "are sampled again on fresh noise, and the choice is made on the pooled near-copies and that round's FD. "
            "0: choose on the screen alone.",
        ),
    ] = 4,
    confirm_samples: Annotated[
        Optional[int],
        typer.Option(min=1, help="Images per setting in the confirmation round (default: twice --n-samples)."),
    ] = None,
    allow_vacuous: Annotated[
        bool,
        typer.Option(
            help="Save the choice even when plain sampling made no near-copies (a cut of nothing, which proves no "
            "protection)."
        ),
    ] = False,
    device: opt.Device = "cpu",
    overwrite: opt.Overwrite = False,
    seed: opt.Seed = 0,
):
    """Search (alpha, s) for the best-quality CPSample setting that cuts near-copies enough; the choice is saved
    next to the classifier (calibration.json), where every guarded command finds it. With --early-classifier the
    two-stage guard competes as well."""
    from cpsample.calibration import Calibrator, Goal, GridSettings
    from cpsample.calibration.search import model_for, parse_caps
    from cpsample.sampling.guards.cpsample import UNCALIBRATED
    from cpsample.sampling.latent import read_prompts

    goal = Goal(reduction=reduction, target=target)
    tau = UNCALIBRATED["tau"] if tau is None else tau
    model = model_for(classifier, model)
    prompts = list(prompt or []) + ([entry.text for entry in read_prompts(prompts_file)] if prompts_file else [])
    grid = GridSettings(
        model=model,
        classifier=classifier,
        prompts=tuple(prompts),
        cfg_scale=cfg_scale,
        private=None if private is None else str(private),
        batch_size=batch_size,
        n_samples=n_samples,
        steps=steps,
        alphas=_floats(alphas, "--alphas"),
        scales=_floats(scales, "--scales"),
        tau=tau,
        threshold=threshold,
        quality_net=quality_net,
        device=device,
        seed=seed,
        early_classifier=early_classifier,
        early_scales=_floats(early_scales, "--early-scales"),
        staged_scales=_floats(staged_scales, "--staged-scales", allow_none=True),
        denoised_late_scales=_floats(denoised_late_scales, "--denoised-late-scales", allow_none=True),
        push_caps=parse_caps(push_caps),
        late_classifiers=tuple(late_classifier or ()),
    )
    calibrator = Calibrator(
        grid, goal, finalists=finalists, confirm_samples=confirm_samples, allow_vacuous=allow_vacuous
    )
    # after the options are read (a typo fails first), before any writing
    inputs = (model, classifier, quality_net, prompts_file, private, early_classifier, *(late_classifier or ()))
    RunFolder(out, "calibrate", overwrite, inputs=inputs).prepare()
    check_device_option(device)
    result = calibrator.fit(report=_PrintedReport())
    record = result.save(out)
    _print_choice(result, out, record)


class _PrintedReport:
    """Prints what Calibrator.fit() reports as it goes: the screen's table before the confirmation round starts."""

    def warning(self, text: str) -> None:
        console.print(f"[bold red]warning:[/] {text}")

    def screened(self, rows: list[dict], n_samples: int) -> None:
        output.print(_grid_table(rows, f"calibration on {n_samples} images per setting"))

    def confirming(self, finalists: int, n_samples: int, seed: int) -> None:
        console.print(
            f"confirmation round: plain and the {finalists} best feasible settings again on {n_samples} fresh "
            f"images (seed {seed})"
        )

    def confirmed(self, rows: list[dict], screen_n: int, confirm_n: int) -> None:
        pooled = f"near-copies pooled over {screen_n} + {confirm_n} images"
        output.print(_grid_table(rows, f"confirmation: {pooled}, FD and time on the {confirm_n}"))


def _print_choice(result: CalibrationResult, out: Path, record: Path) -> None:
    """The choice, its warnings and where it was saved; exit 1 when no setting met the goal, and a refusal (nothing
    saved next to the classifier) when the cut was vacuous without --allow-vacuous."""
    from cpsample.models.bundle import is_bundled

    if result.chosen is None:
        console.print(
            f"[bold red]no setting met {result.goal.describe()}[/]: try larger --alphas or --scales; nothing was "
            "saved next to the classifier"
        )
        raise typer.Exit(code=1)
    if result.vacuous_refused:
        raise ValueError(
            f"{result.vacuous}. Nothing was saved next to the classifier (the measurements are in {out}); pass "
            "--allow-vacuous to save this choice anyway"
        )
    output.print(result.summary)
    for warning in ([result.missed] if result.missed else []) + result.warnings:
        console.print(f"[bold red]warning:[/] {warning}")
    for warning in result.cost_warnings:
        console.print(f"[yellow]cost:[/] {warning}")
    if result.close_call_note:
        console.print(f"[yellow]note:[/] {result.close_call_note}")
    classifier = result.grid.classifier
    if is_bundled(classifier):
        output.print(
            f"the bundled classifier ships its own calibration, which stays as it is; this one is in {record}"
        )
    else:
        path = result.save_pretrained()
        command = "sample-sd" if result.grid.latent else "sample --guard cpsample"
        output.print(f"saved to {path}: `cpsample {command} --classifier {classifier}` now uses it")


def _grid_table(rows: list[dict], title: str) -> Table:
    from cpsample.calibration.search import ONE_STAGE, PLAIN, TWO_STAGE, late_judges

    table = Table(title=title)
    for column in (
        "guard",
        "late judges",
        "alpha",
        "s",
        "early s",
        "cap",
        "near-copies",
        "share (95% CI)",
        "steps guided",
        "last t guided",
        "FD",
        "time vs plain",
    ):
        table.add_column(column, justify="right")
    for row in rows:
        early = row.get("early_scale")
        late = late_judges(row) if row["guard"] == TWO_STAGE else "-"
        table.add_row(
            {PLAIN: "plain", ONE_STAGE: "1 stage", TWO_STAGE: "2 stages"}.get(row["guard"], row["guard"]),
            late,
            "-" if row["alpha"] is None else f"{row['alpha']:g}",
            "-" if row["scale"] is None else f"{row['scale']:g}",
            "-" if early is None else f"{early:g}",
            "-" if row.get("max_push") is None else f"{row['max_push']:g}",
            str(row["near_copies"]),
            f"{row['near_copy_share']:.1%} ({row['ci_low']:.1%}-{row['ci_high']:.1%})",
            "-" if row["steps_guided"] is None else f"{row['steps_guided']:.1%}",
            "-" if row["last_fired_t"] is None else str(row["last_fired_t"]),
            "-" if row["frechet_distance"] is None else f"{row['frechet_distance']:.2f}",
            f"{row['time_vs_plain']:.2f}x",
        )
    return table


def _floats(text: str, option: str, allow_none: bool = False) -> tuple[float, ...]:
    """Comma-separated numbers; with allow_none, 'none' means no value (that part of the grid is skipped)."""
    if allow_none and text.strip().lower() == "none":
        return ()
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"{option} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise ValueError(f"{option} is empty")
    return values
