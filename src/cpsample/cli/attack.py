"""`cpsample attack ...`: attacks that measure what a model gives away. `register(app)` adds them to the main CLI."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from cpsample.cli import options as opt
from cpsample.cli.common import check_device_option, output, run_safely
from cpsample.runs import RunFolder

attack_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Attack a model: how well can an adversary tell its training images from unseen ones? "
    "mia: with the weights (white box); sample-nn: from its samples alone (black box).",
)


@attack_app.command("mia")
@run_safely
def mia_command(
    out: opt.AttackOut,
    model: opt.Denoiser = "bundled",
    guard: Annotated[
        str, typer.Option(help="Attack the plain denoiser ('none') or the CPSample-guarded one ('cpsample').")
    ] = "none",
    classifier: Annotated[str, typer.Option(help="Classifier folder for --guard cpsample, or 'bundled'.")] = "bundled",
    alpha: opt.Alpha = None,
    scale: opt.Scale = None,
    tau: opt.Tau = None,
    attack: Annotated[
        str, typer.Option(help="loss (paper Alg. 1 + Z-test), pia (Kong et al. 2024) or both.")
    ] = "both",
    t: Annotated[
        Optional[list[int]],
        typer.Option(
            "--t", help="Diffusion step(s) to attack at; repeat for several (default: loss 100, 200, 300; pia 200)."
        ),
    ] = None,
    members: opt.Members = None,
    nonmembers: opt.Nonmembers = None,
    draws: Annotated[int, typer.Option(min=1, help="Loss attack: noise draws averaged per image.")] = 4,
    pia_norm: Annotated[float, typer.Option(help="PIA: the p of the l_p norm.")] = 4.0,
    batch_size: opt.BatchSize = 128,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
    device: opt.Device = "cpu",
    overwrite: opt.Overwrite = False,
    seed: opt.Seed = 0,
):
    """Membership inference with the weights (white box): do members get lower reconstruction errors? (AUC, TPR@1%FPR,
    Z-test)

    For an adversary who sees only the samples, see `cpsample attack sample-nn`."""
    from cpsample.attacks.records import guard_as_used, mia_into

    RunFolder(out, "attack mia", overwrite, inputs=(model, classifier)).prepare()
    check_device_option(device)
    results = mia_into(
        out,
        model=model,
        guard=guard,
        classifier=classifier,
        alpha=alpha,
        scale=scale,
        tau=tau,
        attack=attack,
        t=t,
        members=members,
        nonmembers=nonmembers,
        draws=draws,
        pia_norm=pia_norm,
        batch_size=batch_size,
        dtype=dtype,
        device=device,
        seed=seed,
    )
    output.print(results_table(results, guard_as_used(results)))


def results_table(results: dict, guard: str) -> Table:
    first = next(iter(results.values()))
    table = Table(
        title=f"membership inference (guard: {guard}; {first.n_members} members vs {first.n_nonmembers} non-members)"
    )
    for column in ("attack", "t", "AUC", "TPR@1%FPR", "Z", "p (one-sided)", "member mean", "non-member mean"):
        table.add_column(column, justify="right")
    for name, result in results.items():
        for t, stats in result.per_t.items():
            style = "bold" if t == result.best_t and len(result.per_t) > 1 else None
            table.add_row(
                name,
                str(t),
                f"{stats.auc:.3f}",
                f"{stats.tpr_at_1pct_fpr:.1%}",
                f"{stats.z:.2f}",
                f"{stats.p_value:.2g}",
                f"{stats.member_mean:.4g}",
                f"{stats.nonmember_mean:.4g}",
                style=style,
            )
    return table


@attack_app.command("sample-nn")
@run_safely
def sample_nn_command(
    samples: Annotated[
        list[str],
        typer.Option(
            help="[NAME=]PATH to a samples.npz, any defence's; repeat for several. "
            "A .npz holding several image arrays (the demo's samples.npz) "
            "gives one set per array."
        ),
    ],
    out: opt.AttackOut,
    model: opt.Denoiser = "bundled",
    members: opt.Members = None,
    nonmembers: opt.Nonmembers = None,
    features: opt.Features = "pixels",
    threshold: opt.NearCopyThreshold = None,
    trust_torchscript: opt.TrustTorchscript = False,
    overwrite: opt.Overwrite = False,
    seed: opt.Seed = 0,
):
    """Membership inference from samples alone (black box): are members nearer to a sample? (AUC, TPR@1%FPR,
    Mann-Whitney U)

    Score: cosine distance of each member / held-out image to its nearest generated sample, in the near-copy
    yardstick's feature space. Reads only samples.npz files, so it scores any defence's output without sampling
    again."""
    from cpsample.attacks.records import sample_attack_into
    from cpsample.data.samples import sample_paths

    RunFolder(out, "attack sample-nn", overwrite, inputs=(*sample_paths(samples), model, features)).prepare()
    results = sample_attack_into(
        out,
        samples,
        model=model,
        members=members,
        nonmembers=nonmembers,
        features=features,
        threshold=threshold,
        trust_torchscript=trust_torchscript,
        seed=seed,
    )
    output.print(sample_table(results))


def sample_table(results: dict) -> Table:
    first = next(iter(results.values()))
    table = Table(
        title=f"sample-only membership inference ({first.n_members} members vs {first.n_nonmembers} "
        f"non-members; {first.settings['features']} cosine to the nearest sample)"
    )
    for column in (
        "samples",
        "n",
        "AUC",
        "TPR@1%FPR",
        "p (Mann-Whitney)",
        "members copied",
        "non-members copied",
        "member mean dist",
        "non-member mean dist",
    ):
        table.add_column(column, justify="right")
    for name, r in results.items():
        table.add_row(
            name,
            str(r.n_samples),
            f"{r.auc:.3f}",
            f"{r.stats.tpr_at_1pct_fpr:.1%}",
            f"{r.mann_whitney_p:.2g}",
            f"{r.member_copied_share:.1%}",
            f"{r.nonmember_copied_share:.1%}",
            f"{r.stats.member_mean:.4g}",
            f"{r.stats.nonmember_mean:.4g}",
        )
    return table


def register(app: typer.Typer) -> None:
    """Add the `attack` command group to the main `cpsample` app."""
    from cpsample.cli.peers import register_side

    register_side(attack_app)
    app.add_typer(attack_app, name="attack")
