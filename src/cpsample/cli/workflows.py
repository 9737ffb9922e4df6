"""CLI commands for the end-to-end workflows: `cpsample demo` and `cpsample calibrate`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from cpsample.calibration.goal import Goal
from cpsample.calibration.report import FitReport
from cpsample.calibration.settings import GridSettings, SearchSettings
from cpsample.cli import options as opt
from cpsample.cli.common import check_device_option, log, run_safely, say_warnings, show, show_table
from cpsample.runs import RunFolder
from cpsample.workflows.settings import DemoSettings

if TYPE_CHECKING:
    from cpsample.calibration import CalibrationResult


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
    app.command("calibrate")(calibrate_command)


@run_safely
@opt.with_settings(DemoSettings, "demo_options")
def demo_command(
    out: Annotated[Path, typer.Option(help="Report folder: report.html/.md/.json, figures, samples.")] = Path(
        "demo_out"
    ),
    demo_options: dict = None,
    overwrite: opt.Overwrite = False,
):
    """Plain vs CPSample (as calibrated; and the paper's one-stage rule) vs rejection sampling on the bundled model:
    near-copies, quality, membership inference (white box: loss / PIA; black box: sample-only), cost, figures.

    On a text-to-image model (--model bundled-t2i --classifier bundled-t2i), every training caption is a prompt,
    --n-samples is shared out over them, and the table adds prompt agreement."""
    from cpsample.workflows.demo import run_demo

    settings = DemoSettings(**demo_options)
    RunFolder(out, "demo", overwrite, inputs=(settings.model, settings.classifier)).prepare()
    check_device_option(settings.device)
    results = run_demo(out, settings)
    drawn = next(iter(results["methods"].values()))["replication"]["n"]  # (a text-to-image demo rounds up per caption)
    title = f"demo: {drawn} images per method, near-copy = cosine > {settings.threshold} ({settings.features})"
    rows = [{"method": name, **method, "cost": results["costs"][name]} for name, method in results["methods"].items()]
    for row in rows:
        row["copies"] = "{count}/{n}".format(**row["replication"])
    columns = "method | near-copies=copies | share=replication.share:.1%"
    columns += " | 95% CI from=replication.ci_low:.1% | to=replication.ci_high:.1% | FD=quality.value:.2f"
    columns += " | prompt agreement=quality.class_agreement.agreement:.1%"  # text-to-image models only
    columns += " | s/image=cost.seconds_per_image:.3f | denoiser calls/image=cost.denoiser_calls_per_image:.0f"
    show_table("methods", title, rows, columns, drop_empty=True)
    comparisons = results.get("comparisons", [])
    lines = [f"chi-square {row['baseline']} vs {row['method']}: p = {row['p_value']:.3g}" for row in comparisons]
    show("comparisons", "\n".join(lines), comparisons)
    if results.get("membership_inference"):
        title = "membership inference per threat model (AUC 0.5 = no leak)"
        columns = "threat model | defence | attack | AUC:.3f | TPR@1%FPR:.1%"
        show_table("membership_inference", title, results["membership_inference"]["rows"], columns)
    from cpsample.evaluation.report import verdict

    said = verdict(results, results.get("membership_inference"))
    show("verdict", "\n".join(["verdict:", *(f"  {line}" for line in said)]), said)
    report = Path(out) / "report.html"
    show("report", f"report: {report}  ({results['seconds_total']:.0f}s)", str(report))


@run_safely
@opt.with_settings(Goal, "goal")
@opt.with_settings(SearchSettings, "how")
@opt.with_settings(GridSettings, "grid_options", skip=("prompts",), required=("classifier",))
def calibrate_command(
    out: Annotated[
        Path, typer.Option(help="Folder for calibration_run.json, calibration.csv/.png and cpsample.json.")
    ],
    goal: dict = None,
    how: dict = None,
    grid_options: dict = None,
    prompt: Annotated[
        Optional[list[str]],
        typer.Option(
            help="Stable Diffusion: a prompt to sample (repeatable). Default: the latent classifier's captions."
        ),
    ] = None,
    prompts_file: Annotated[
        Optional[Path],
        typer.Option(help="Stable Diffusion: one prompt per line (both captions of an 'original<TAB>modified' pair)."),
    ] = None,
    overwrite: opt.Overwrite = False,
):
    """Search (alpha, s) for the best-quality CPSample setting that cuts near-copies enough; the choice is saved
    next to the classifier (calibration.json), where every guarded command finds it. With --early-classifier the
    two-stage guard competes as well."""
    from cpsample.calibration import Calibrator
    from cpsample.sampling.latent import read_prompts

    prompts = list(prompt or []) + ([entry.text for entry in read_prompts(prompts_file)] if prompts_file else [])
    settings = GridSettings(**grid_options, prompts=tuple(prompts))
    calibrator = Calibrator(settings, Goal(**goal), **how)
    # after the options are read (a typo fails first), before any writing
    given = settings.model, settings.classifier, settings.quality_net, prompts_file, settings.private
    RunFolder(
        out, "calibrate", overwrite, inputs=(*given, settings.early_classifier, *settings.late_classifiers)
    ).prepare()
    check_device_option(settings.device)
    result = calibrator.fit(report=_PrintedReport())
    record = result.save(out)
    _print_choice(result, out, record)


class _PrintedReport(FitReport):
    """Prints each round's table as Calibrator.fit() reports it: the screen's before the confirmation round starts."""

    def table(self, name: str, rows: list[dict], title: str) -> None:
        _show_grid(name, rows, title)


def _print_choice(result: CalibrationResult, out: Path, record: Path) -> None:
    """The choice, its warnings and where it was saved; exit 1 when no setting met the goal, and a refusal (nothing
    saved next to the classifier) when the cut was vacuous without --allow-vacuous."""
    from cpsample.models.bundle import is_bundled

    if result.chosen is None:
        why = result.missed or f"no setting met {result.goal.describe()}: try larger --alphas or --scales"
        log.error(f"{why}; nothing was saved next to the classifier")
        raise typer.Exit(code=1)
    if result.vacuous_refused:
        raise ValueError(
            f"{result.vacuous}. Nothing was saved next to the classifier (the measurements are in {out}); pass "
            "--allow-vacuous to save this choice anyway"
        )
    show("summary", result.summary)
    say_warnings(([result.missed] if result.missed else []) + result.warnings)
    for note in result.cost_warnings + ([result.close_call_note] if result.close_call_note else []):
        log.info(note)
    classifier = result.grid.classifier
    if is_bundled(classifier):
        text = f"the bundled classifier ships its own calibration, which stays as it is; this one is in {record}"
        show("saved", text, None)
    else:
        path = result.save_pretrained()
        show(
            "saved",
            f"saved to {path}: `cpsample sample --guard cpsample --classifier {classifier}` now uses it",
            str(path),
        )


def _show_grid(name: str, rows: list[dict], title: str) -> None:
    from cpsample.calibration.search import ONE_STAGE, PLAIN, TWO_STAGE, late_judges

    kinds = {PLAIN: "plain", ONE_STAGE: "1 stage", TWO_STAGE: "2 stages"}
    rows = [
        {
            **row,
            "kind": kinds.get(row["guard"], row["guard"]),
            "late": late_judges(row) if row["guard"] == TWO_STAGE else None,
            "share_ci": f"{row['near_copy_share']:.1%} ({row['ci_low']:.1%}-{row['ci_high']:.1%})",
        }
        for row in rows
    ]
    columns = "guard=kind | late judges=late | alpha=alpha:g | s=scale:g | early s=early_scale:g | cap=max_push:g"
    columns += " | near-copies=near_copies | share (95% CI)=share_ci | probed=probed | from t=from_t"
    columns += " | never flagged=unflagged"
    columns += " | steps guided=steps_guided:.1% | last t guided=last_fired_t | FD=frechet_distance:.2f"
    show_table(name, title, rows, columns + " | time vs plain=time_vs_plain:.2f", drop_empty=True)
