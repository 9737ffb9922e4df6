"""`cpsample attack ...`: attacks that measure what a model gives away (membership inference with the weights or the
samples alone; SIDE extraction, plain or against CPSample). `register(app)` adds them to the main CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cpsample.attacks.settings import Defence, MiaSettings, SampleAttackSettings, SideConfig
from cpsample.cli import options as opt
from cpsample.cli.common import check_device_option, run_safely, show_table
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
@opt.with_settings(Defence, "defence")
@opt.with_settings(MiaSettings, "mia")
def mia_command(
    out: opt.AttackOut,
    model: Annotated[
        str,
        typer.Option(
            help="Denoiser folder (with its split.json), a `train-t2i` pipeline (attacked in its latent space, each "
            "image conditioned on its caption), or a bundled name."
        ),
    ],
    defence: dict = None,
    mia: dict = None,
    overwrite: opt.Overwrite = False,
):
    """Membership inference with the weights (white box): do members get lower reconstruction errors? (AUC, TPR@1%FPR,
    Z-test)

    For an adversary who sees only the samples, see `cpsample attack sample-nn`."""
    from cpsample.attacks.records import guard_as_used, mia_into

    attack, defence = MiaSettings(**mia), Defence(**defence)
    RunFolder(out, "attack mia", overwrite, inputs=(model, defence.classifier, attack.captions)).prepare()
    check_device_option(attack.device)
    results = mia_into(out, model, defence, attack)
    first = next(iter(results.values()))
    title = f"membership inference (guard: {guard_as_used(results)}; {first.n_members} members vs "
    rows = [
        {"attack": name, "t": t, **stats.to_dict(), "best": t == result.best_t and len(result.per_t) > 1}
        for name, result in results.items()
        for t, stats in result.per_t.items()
    ]
    columns = "attack | t | AUC=auc:.3f | TPR@1%FPR=tpr_at_1pct_fpr:.1% | Z=z:.2f | p (one-sided)=p_value:.2g"
    columns += " | member mean=member_mean:.4g | non-member mean=nonmember_mean:.4g"
    title += f"{first.n_nonmembers} non-members)"
    show_table("membership_inference", title, rows, columns, bold="best")


@attack_app.command("sample-nn")
@run_safely
@opt.with_settings(SampleAttackSettings, "attack")
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
    model: opt.Denoiser,
    attack: dict = None,
    overwrite: opt.Overwrite = False,
):
    """Membership inference from samples alone (black box): are members nearer to a sample? (AUC, TPR@1%FPR,
    Mann-Whitney U)

    Score: cosine distance of each member / held-out image to its nearest generated sample, in the near-copy
    yardstick's feature space. Reads only samples.npz files, so it scores any defence's output without sampling
    again."""
    from cpsample.attacks.records import sample_attack_into
    from cpsample.data.samples import sample_paths

    attack = SampleAttackSettings(**attack)
    RunFolder(out, "attack sample-nn", overwrite, inputs=(*sample_paths(samples), model, attack.features)).prepare()
    results = sample_attack_into(out, samples, model, attack)
    first = next(iter(results.values()))
    title = f"sample-only membership inference ({first.n_members} members vs {first.n_nonmembers} non-members; "
    columns = "samples=name | n=n_samples | AUC=stats.auc:.3f | TPR@1%FPR=stats.tpr_at_1pct_fpr:.1%"
    columns += " | p (Mann-Whitney)=mann_whitney_p:.2g | members copied=member_copied_share:.1%"
    columns += " | non-members copied=nonmember_copied_share:.1% | member mean dist=stats.member_mean:.4g"
    columns += " | non-member mean dist=stats.nonmember_mean:.4g"
    title += f"{first.settings['features']} cosine to the nearest sample)"
    rows = [{"name": name, **result.to_dict()} for name, result in results.items()]
    show_table("sample_only_membership_inference", title, rows, columns)


@attack_app.command("side")
@run_safely
@opt.with_settings(Defence, "defence")
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
    defence: dict = None,
    side_options: dict = None,
    device: opt.Device = "cpu",
    overwrite: opt.Overwrite = False,
):
    """SIDE: cluster the model's samples into surrogate classes, guide towards each, count extracted training
    images."""
    from cpsample.attacks.records import side_into

    config, defence = SideConfig(**side_options), Defence(**defence)
    RunFolder(out, "attack side", overwrite, inputs=(model, defence.classifier)).prepare()
    check_device_option(device)
    result = side_into(out, config, model, defence, device)
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
    title = f"SIDE extraction (defence: {defence.guard}; near-copy: cosine > {result.attack['threshold']})"
    show_table("side", title, rows, columns + " | UMS=ums:.1%")


def register(app: typer.Typer) -> None:
    """Add the `attack` command group to the main `cpsample` app."""
    app.add_typer(attack_app, name="attack")
