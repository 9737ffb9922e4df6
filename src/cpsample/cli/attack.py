"""`cpsample attack ...`: attacks that measure what a model gives away. `register(app)` adds them to the main CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cpsample.cli.common import Alpha, Device, Overwrite, Scale, Seed, Tau, check_device_option, console, prepare_out, run_safely

attack_app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                         help="Attack a model: how well can an adversary tell its training images from unseen ones?")


@attack_app.command("mia")
@run_safely
def mia_command(
    out: Annotated[Path, typer.Option(help="Output folder: result.json, roc.png, cpsample.json.")],
    model: Annotated[str, typer.Option(help="Denoiser folder (with its split.json), or 'bundled'.")] = "bundled",
    guard: Annotated[str, typer.Option(help="Attack the plain denoiser ('none') or the CPSample-guarded one ('cpsample').")] = "none",
    classifier: Annotated[str, typer.Option(help="Classifier folder for --guard cpsample, or 'bundled'.")] = "bundled",
    alpha: Alpha = None,
    scale: Scale = None,
    tau: Tau = None,
    attack: Annotated[str, typer.Option(help="loss (paper Alg. 1 + Z-test), pia (Kong et al. 2024) or both.")] = "both",
    t: Annotated[Optional[list[int]], typer.Option("--t", help="Diffusion step(s) to attack at; repeat for several "
                                                         "(default: loss 100, 200, 300; pia 200).")] = None,
    members: Annotated[Optional[int], typer.Option("--members", help="Attack at most this many members, picked at random (default: all).")] = None,
    nonmembers: Annotated[Optional[int], typer.Option("--nonmembers", help="Number of random non-members (default: as many as members).")] = None,
    draws: Annotated[int, typer.Option(min=1, help="Loss attack: noise draws averaged per image.")] = 4,
    pia_norm: Annotated[float, typer.Option(help="PIA: the p of the l_p norm.")] = 4.0,
    batch_size: Annotated[int, typer.Option(min=1)] = 128,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
    device: Device = "cpu",
    overwrite: Overwrite = False,
    seed: Seed = 0,
):
    """Membership inference: do members get lower reconstruction errors than non-members? (AUC, TPR@1%FPR, Z-test)"""
    from cpsample.attacks.mia import run_mia
    from cpsample.attacks.plots import plot_attacks
    from cpsample.provenance import seed_everything, write_record
    from cpsample.sampling.guards import describe_settings

    prepare_out(out, "attack mia", overwrite)
    check_device_option(device)
    seed_everything(seed)
    settings = {"model": model, "guard": guard, "classifier": classifier, "alpha": alpha, "scale": scale, "tau": tau,
                "attack": attack, "t": t, "members": members, "nonmembers": nonmembers, "draws": draws,
                "pia_norm": pia_norm, "batch_size": batch_size, "dtype": dtype, "device": device, "seed": seed}
    results = run_mia(model=model, guard=guard, classifier=classifier, alpha=alpha, scale=scale, tau=tau, attack=attack,
                      timesteps=t, n_members=members, n_nonmembers=nonmembers, draws=draws, pia_norm=pia_norm,
                      batch_size=batch_size, seed=seed, device=device, dtype=dtype)
    out.mkdir(parents=True, exist_ok=True)
    summary = {name: result.to_dict(with_scores=True) for name, result in results.items()}
    (out / "result.json").write_text(json.dumps(summary, indent=2))
    used = next(iter(results.values())).settings["guard"]  # the knobs as used (calibrated ones resolved)
    guard_text = describe_settings(used)
    plot_attacks(results, out / "roc.png", title=f"membership inference on {model} (guard: {guard_text})")
    headline = {name: {"auc": r.auc, "best_t": r.best_t, "tpr_at_1pct_fpr": r.best.tpr_at_1pct_fpr,
                       "z": r.best.z, "p_value": r.best.p_value} for name, r in results.items()}
    write_record(out, "attack mia", settings, {**headline, "result": str(out / "result.json"), "roc": str(out / "roc.png")})
    console.print(results_table(results, guard_text))


def results_table(results: dict, guard: str) -> Table:
    first = next(iter(results.values()))
    table = Table(title=f"membership inference (guard: {guard}; {first.n_members} members vs {first.n_nonmembers} non-members)")
    for column in ("attack", "t", "AUC", "TPR@1%FPR", "Z", "p (one-sided)", "member mean", "non-member mean"):
        table.add_column(column, justify="right")
    for name, result in results.items():
        for t, stats in result.per_t.items():
            style = "bold" if t == result.best_t and len(result.per_t) > 1 else None
            table.add_row(name, str(t), f"{stats.auc:.3f}", f"{stats.tpr_at_1pct_fpr:.1%}", f"{stats.z:.2f}",
                          f"{stats.p_value:.2g}", f"{stats.member_mean:.4g}", f"{stats.nonmember_mean:.4g}", style=style)
    return table


def register(app: typer.Typer) -> None:
    """Add the `attack` command group to the main `cpsample` app."""
    from cpsample.cli.peers import register_side

    register_side(attack_app)
    app.add_typer(attack_app, name="attack")
