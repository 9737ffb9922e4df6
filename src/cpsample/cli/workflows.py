"""CLI commands for the end-to-end workflows: `cpsample demo` and `cpsample calibrate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cpsample.cli.common import (
    Alpha,
    BatchSize,
    Device,
    NearCopyThreshold,
    Overwrite,
    Scale,
    Seed,
    Tau,
    check_device_option,
    console,
    prepare_out,
    run_safely,
)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
    app.command("calibrate")(calibrate_command)


@run_safely
def demo_command(
    out: Annotated[Path, typer.Option(help="Report folder: report.html/.md/.json, figures, samples.")] = Path(
        "demo_out"
    ),
    n_samples: Annotated[int, typer.Option(min=1, help="Images per method.")] = 500,
    alpha: Alpha = None,
    scale: Scale = None,
    tau: Tau = None,
    steps: Annotated[int, typer.Option(min=1, help="DDIM steps.")] = 50,
    threshold: NearCopyThreshold = None,
    mia_members: Annotated[int, typer.Option(help="Members attacked by membership inference (0 skips it).")] = 200,
    model: Annotated[str, typer.Option(help="Denoiser folder, or 'bundled'.")] = "bundled",
    classifier: Annotated[str, typer.Option(help="CPSample classifier folder, or 'bundled'.")] = "bundled",
    one_stage_row: Annotated[
        bool,
        typer.Option(
            help="Where the classifier's calibration chose two stages, also sample the paper's one-stage rule."
        ),
    ] = True,
    batch_size: BatchSize = 250,
    device: Device = "cpu",
    overwrite: Overwrite = False,
    seed: Seed = 0,
):
    """Plain vs CPSample (as calibrated; and the paper's one-stage rule) vs rejection sampling on the bundled model:
    near-copies, quality, membership inference (white box: loss / PIA; black box: sample-only), cost, figures."""
    from cpsample.workflows.demo import DemoSettings, run_demo

    prepare_out(out, "demo", overwrite, inputs=(model, classifier))
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
    console.print(table)
    for comparison in results.get("comparisons", []):
        console.print(
            f"chi-square {comparison['baseline']} vs {comparison['method']}: p = {comparison['p_value']:.3g}"
        )
    membership = results.get("membership_inference")
    if membership:
        mia = Table(title="membership inference per threat model (AUC 0.5 = no leak)")
        for column in ("threat model", "defence", "attack", "AUC", "TPR@1%FPR"):
            mia.add_column(column, justify="right")
        for row in membership["rows"]:
            mia.add_row(
                row["threat model"], row["defence"], row["attack"], f"{row['AUC']:.3f}", f"{row['TPR@1%FPR']:.1%}"
            )
        console.print(mia)
    console.print(f"report: {Path(out) / 'report.html'}  ({results['seconds_total']:.0f}s)")


@run_safely
def calibrate_command(
    out: Annotated[Path, typer.Option(help="Folder for calibration.json/.csv, calibration.png and cpsample.json.")],
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
    alphas: Annotated[str, typer.Option(help="Comma-separated alpha values to try.")] = "0.001,0.01,0.1",
    scales: Annotated[str, typer.Option(help="Comma-separated guidance scales to try.")] = "3,10,30,100",
    tau: Tau = None,
    steps: Annotated[int, typer.Option(min=1, help="Denoising steps.")] = 50,
    threshold: NearCopyThreshold = None,
    model: Annotated[
        Optional[str],
        typer.Option(
            help="Denoiser folder, 'bundled', or a Stable Diffusion pipeline folder (then --classifier is a "
            "`train-latent-classifier` folder). Default: the pipeline a latent --classifier was trained for, else "
            "'bundled'."
        ),
    ] = None,
    classifier: str = "bundled",
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
    early_scales: Annotated[str, typer.Option(help="Two stages: early-stage scales to try.")] = "3",
    staged_scales: Annotated[
        str,
        typer.Option(
            help="Two stages: late-stage scales to try (alpha 0.1), the main classifier judging x_t; 'none': skip."
        ),
    ] = "10,30",
    denoised_late_scales: Annotated[
        str,
        typer.Option(
            help="Two stages: late-stage scales to try (alpha 0.3) with the early classifier judging x0_hat late too "
            "(a selective late stage); 'none': skip."
        ),
    ] = "10,15",
    push_caps: Annotated[
        str,
        typer.Option(
            help="Two stages: caps on each sample's push to try (RMS in units of eps; 'none': uncapped, the paper's "
            "push)."
        ),
    ] = "none,1,1.25,1.5,2",
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
    device: Device = "cpu",
    overwrite: Overwrite = False,
    seed: Seed = 0,
):
    """Search (alpha, s) for the best-quality CPSample setting that cuts near-copies enough; the choice is saved
    next to the classifier (calibration.json), where every guarded command finds it. With --early-classifier the
    two-stage guard competes as well."""
    from cpsample.evaluation.honesty import unfit_classifier, vacuous_baseline
    from cpsample.models.bundle import BUNDLED, is_bundled, resolve_model_dir
    from cpsample.provenance import write_record
    from cpsample.sampling.guards.cpsample import UNCALIBRATED
    from cpsample.sampling.latent import read_prompts
    from cpsample.sampling.spec import write_calibration
    from cpsample.training.latent_classifier import pipeline_of
    from cpsample.workflows.calibrate import (
        CLOSE_FD,
        CONFIRM_SEED_OFFSET,
        RELIABLE_IMAGES,
        GridSettings,
        calibrated_settings,
        choose_confirmed,
        choose_setting,
        close_calls,
        confirm_finalists,
        cost_warnings,
        narrowed_grid_flags,
        one_stage_setting,
        parse_caps,
        plot_grid,
        run_grid,
        setting_label,
        share_limit,
        two_stage_calibration,
    )

    for name, value in (("--target", target), ("--reduction", reduction)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} is a share in [0, 1], got {value}")
    tau = UNCALIBRATED["tau"] if tau is None else tau
    model = model or pipeline_of(resolve_model_dir(classifier, "classifier")) or BUNDLED
    prompts = list(prompt or []) + ([entry.text for entry in read_prompts(prompts_file)] if prompts_file else [])
    settings = GridSettings(
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
    # after the options are read (a typo fails first), before any writing
    prepare_out(
        out,
        "calibrate",
        overwrite,
        inputs=(model, classifier, quality_net, prompts_file, private, early_classifier, *(late_classifier or ())),
    )
    check_device_option(device)
    unfit = unfit_classifier(resolve_model_dir(classifier, "classifier"))
    if unfit:
        console.print(f"[bold red]warning:[/] {unfit}")
    rows = run_grid(settings)
    screen_choice = choose_setting(rows, target, reduction)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "calibration.csv", rows)
    goal = {"reduction": reduction, "target": target}
    console.print(_grid_table(rows, f"calibration on {n_samples} images per setting"))
    wanted = (
        " and ".join(
            ([f"cut >= {reduction:.0%} vs plain"] if reduction is not None else [])
            + ([f"share <= {target:.1%}"] if target is not None else [])
        )
        or "any setting"
    )
    confirmed = []
    if screen_choice is not None and finalists and n_samples < RELIABLE_IMAGES:
        confirm_n = confirm_samples or 2 * n_samples
        console.print(
            f"confirmation round: plain and the {finalists} best feasible settings again on {confirm_n} fresh "
            f"images (seed {seed + CONFIRM_SEED_OFFSET})"
        )
        confirmed = confirm_finalists(rows, settings, target, reduction, finalists, confirm_n)
        _write_csv(out / "confirmation.csv", confirmed)
        console.print(
            _grid_table(
                confirmed,
                f"confirmation: near-copies pooled over {n_samples} + {confirm_n} images, "
                f"FD and time on the {confirm_n}",
            )
        )
    deciding = confirmed or rows
    chosen, missed = screen_choice, None
    if confirmed:
        chosen, kept_the_cut = choose_confirmed(confirmed, target, reduction)
        plot_grid(confirmed, out / "confirmation.png", chosen, share_limit(confirmed, target, reduction))
        if not kept_the_cut:
            missed = (
                f"no finalist kept {wanted} over {chosen['n']} images; kept the most protective, "
                f"{setting_label(chosen)} at {chosen['near_copy_share']:.1%} near-copies vs plain "
                f"{confirmed[0]['near_copy_share']:.1%}. Add larger --scales or --staged-scales, or more --finalists"
            )
    plot_grid(rows, out / "calibration.png", chosen, share_limit(rows, target, reduction))
    # The one-stage rule keeps a calibrated setting of its own (`--option one_stage=true`, or any knob given).
    one_stage = one_stage_setting(rows, chosen, target, reduction)
    confirmation = (
        {
            "n_samples": confirmed[0]["confirmation_n"],
            "seed": seed + CONFIRM_SEED_OFFSET,
            "finalists": [setting_label(row) for row in confirmed[1:]],
            "rows": confirmed,
        }
        if confirmed
        else None
    )
    (out / "calibration.json").write_text(
        json.dumps(
            {**goal, "chosen": chosen, "rows": rows, **({"confirmation": confirmation} if confirmation else {})},
            indent=2,
        )
    )
    write_record(
        out,
        "calibrate",
        {**settings.__dict__, **goal, "finalists": finalists, "confirm_samples": confirm_samples},
        {"chosen": chosen},
    )
    if chosen is None:
        console.print(
            f"[bold red]no setting met {wanted}[/]: try larger --alphas or --scales; nothing was saved "
            "next to the classifier"
        )
        raise typer.Exit(code=1)
    plain = deciding[0]
    vacuous = vacuous_baseline("plain sampling", plain["near_copies"], plain["n"])
    if vacuous and reduction and not allow_vacuous:  # a cut is the goal, and there was nothing to cut
        raise ValueError(
            f"{vacuous}. Nothing was saved next to the classifier (the measurements are in {out}); pass "
            "--allow-vacuous to save this choice anyway"
        )
    knobs = calibrated_settings(one_stage, tau)
    two_stage = two_stage_calibration(chosen, settings)
    details = {
        "model": str(resolve_model_dir(model, "denoiser").resolve()),
        "goal": goal,
        "measured": chosen,
        "measured_one_stage": one_stage,
        "plain": plain,
        "n_samples": n_samples,
        "steps": steps,
        "seed": seed,
        "threshold": settings.threshold,
        **({"two_stage": two_stage} if two_stage else {}),
        **(
            {"prompts": list(settings.prompts), "cfg_scale": cfg_scale, "scheduler": settings.scheduler}
            if settings.latent
            else {}
        ),
        **({"confirmation": {k: v for k, v in confirmation.items() if k != "rows"}} if confirmation else {}),
    }
    fd = chosen["frechet_distance"]
    window = (
        ""
        if two_stage
        else (" (checks at every step)" if knobs["max_t"] is None else f" (checks at t <= {knobs['max_t']})")
    )
    quality = "" if fd is None else f", FD {fd:.2f} vs {plain['frechet_distance']:.2f}"
    console.print(
        f"chosen: {setting_label(chosen)}{window}; near-copy share {chosen['near_copy_share']:.1%} vs plain "
        f"{plain['near_copy_share']:.1%} over {chosen['n']} images{quality}"
    )
    if missed:
        details["missed"] = missed
        console.print(f"[bold red]warning:[/] {missed}")
    honesty = [warning for warning in (vacuous, unfit) if warning]
    if chosen.get("steps_guided") == 0:
        honesty.append(f"the chosen setting never guided a step on {chosen['n']} images: its cut is chance")
    for warning in honesty:
        console.print(f"[bold red]warning:[/] {warning}")
    if honesty:
        details["warnings"] = honesty
    details["cost_warnings"] = cost_warnings(chosen, plain)
    for warning in details["cost_warnings"]:
        console.print(f"[yellow]cost:[/] {warning}")
    decided_on = chosen.get("confirmation_n", n_samples)
    close = close_calls(deciding, chosen, target, reduction) if decided_on < RELIABLE_IMAGES else []
    if close:
        candidates = [chosen, *close] + (
            [one_stage] if all(r["guard"] != "cpsample" for r in [chosen, *close]) else []
        )
        details["close_calls"] = [setting_label(row) for row in close]
        console.print(
            f"[yellow]note:[/] {', '.join(details['close_calls'])} came within {CLOSE_FD:.0%} of the "
            f"chosen FD on {decided_on} images, closer than FD's seed-to-seed noise at this size. To choose "
            f"between them, rerun the same command with --n-samples {RELIABLE_IMAGES} "
            f"{narrowed_grid_flags(candidates)}"
            + (
                " and without --early-classifier"
                if early_classifier and not any(r["guard"] == "cpsample-staged" for r in candidates)
                else ""
            )
        )
    if is_bundled(classifier):
        console.print(
            f"the bundled classifier ships its own calibration, which stays as it is; this one is in "
            f"{out / 'calibration.json'}"
        )
    else:
        path = write_calibration(resolve_model_dir(classifier, "classifier"), knobs, details)
        command = "sample-sd" if settings.latent else "sample --guard cpsample"
        console.print(f"saved to {path}: `cpsample {command} --classifier {classifier}` now uses it")


def _grid_table(rows: list[dict], title: str) -> Table:
    from cpsample.workflows.calibrate import late_judges

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
        late = late_judges(row) if row["guard"] == "cpsample-staged" else "-"
        table.add_row(
            {"none": "plain", "cpsample": "1 stage", "cpsample-staged": "2 stages"}.get(row["guard"], row["guard"]),
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


def _write_csv(path: Path, rows: list[dict]) -> None:
    import csv

    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
