"""`cpsample attack ...`: attacks that measure what a model gives away. `register(app)` adds them to the main CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from rich.table import Table

from cpsample.cli.common import (
    Alpha,
    Device,
    NearCopyThreshold,
    Overwrite,
    Scale,
    Seed,
    Tau,
    check_device_option,
    console,
    run_safely,
)
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
    out: Annotated[Path, typer.Option(help="Output folder: result.json, roc.png, cpsample.json.")],
    model: Annotated[str, typer.Option(help="Denoiser folder (with its split.json), or 'bundled'.")] = "bundled",
    guard: Annotated[
        str, typer.Option(help="Attack the plain denoiser ('none') or the CPSample-guarded one ('cpsample').")
    ] = "none",
    classifier: Annotated[str, typer.Option(help="Classifier folder for --guard cpsample, or 'bundled'.")] = "bundled",
    alpha: Alpha = None,
    scale: Scale = None,
    tau: Tau = None,
    attack: Annotated[
        str, typer.Option(help="loss (paper Alg. 1 + Z-test), pia (Kong et al. 2024) or both.")
    ] = "both",
    t: Annotated[
        Optional[list[int]],
        typer.Option(
            "--t", help="Diffusion step(s) to attack at; repeat for several (default: loss 100, 200, 300; pia 200)."
        ),
    ] = None,
    members: Annotated[
        Optional[int],
        typer.Option("--members", help="Attack at most this many members, picked at random (default: all)."),
    ] = None,
    nonmembers: Annotated[
        Optional[int], typer.Option("--nonmembers", help="Number of random non-members (default: as many as members).")
    ] = None,
    draws: Annotated[int, typer.Option(min=1, help="Loss attack: noise draws averaged per image.")] = 4,
    pia_norm: Annotated[float, typer.Option(help="PIA: the p of the l_p norm.")] = 4.0,
    batch_size: Annotated[int, typer.Option(min=1)] = 128,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
    device: Device = "cpu",
    overwrite: Overwrite = False,
    seed: Seed = 0,
):
    """Membership inference with the weights (white box): do members get lower reconstruction errors? (AUC, TPR@1%FPR,
    Z-test)

    For an adversary who sees only the samples, see `cpsample attack sample-nn`."""
    from cpsample.attacks.mia import run_mia
    from cpsample.attacks.records import guard_as_used, save_mia
    from cpsample.provenance import seed_everything

    RunFolder(out, "attack mia", overwrite, inputs=(model, classifier)).prepare()
    check_device_option(device)
    seed_everything(seed)
    settings = {
        "model": model,
        "guard": guard,
        "classifier": classifier,
        "alpha": alpha,
        "scale": scale,
        "tau": tau,
        "attack": attack,
        "t": t,
        "members": members,
        "nonmembers": nonmembers,
        "draws": draws,
        "pia_norm": pia_norm,
        "batch_size": batch_size,
        "dtype": dtype,
        "device": device,
        "seed": seed,
    }
    results = run_mia(
        model=model,
        guard=guard,
        classifier=classifier,
        alpha=alpha,
        scale=scale,
        tau=tau,
        attack=attack,
        timesteps=t,
        n_members=members,
        n_nonmembers=nonmembers,
        draws=draws,
        pia_norm=pia_norm,
        batch_size=batch_size,
        seed=seed,
        device=device,
        dtype=dtype,
    )
    save_mia(out, results, settings)
    console.print(results_table(results, guard_as_used(results)))


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
    out: Annotated[Path, typer.Option(help="Output folder: result.json, roc.png, cpsample.json.")],
    model: Annotated[
        str, typer.Option(help="Denoiser folder (with its split.json), or 'bundled': whose members to look for.")
    ] = "bundled",
    members: Annotated[
        Optional[int], typer.Option("--members", help="At most this many members, picked at random (default: all).")
    ] = None,
    nonmembers: Annotated[
        Optional[int], typer.Option("--nonmembers", help="Number of random non-members (default: as many as members).")
    ] = None,
    features: Annotated[
        str, typer.Option(help="Feature space of the near-copy yardstick: pixels, dino:PATH or sscd:PATH.")
    ] = "pixels",
    threshold: NearCopyThreshold = None,
    trust_torchscript: Annotated[
        bool, typer.Option(help="Allow loading an SSCD TorchScript file (it runs code from the file).")
    ] = False,
    overwrite: Overwrite = False,
    seed: Seed = 0,
):
    """Membership inference from samples alone (black box): are members nearer to a sample? (AUC, TPR@1%FPR,
    Mann-Whitney U)

    Score: cosine distance of each member / held-out image to its nearest generated sample, in the near-copy
    yardstick's feature space. Reads only samples.npz files, so it scores any defence's output without sampling
    again."""
    from cpsample.attacks.records import save_sample_attack
    from cpsample.attacks.sample_nn import run_sample_attack
    from cpsample.cli.evaluate import sample_paths
    from cpsample.provenance import seed_everything

    RunFolder(out, "attack sample-nn", overwrite, inputs=(*sample_paths(samples), model, features)).prepare()
    seed_everything(seed)
    sets = read_sample_sets(samples)
    results = run_sample_attack(
        sets,
        model=model,
        n_members=members,
        n_nonmembers=nonmembers,
        features=features,
        threshold=threshold,
        seed=seed,
        trust_torchscript=trust_torchscript,
    )
    settings = {
        "samples": samples,
        "model": model,
        "members": members,
        "nonmembers": nonmembers,
        "features": features,
        "threshold": threshold,
        "seed": seed,
    }
    save_sample_attack(out, results, settings)
    console.print(sample_table(results))


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


def read_sample_sets(specs: list[str]) -> dict:
    """['plain=a/samples.npz', 'b/samples.npz', ...] -> {name: images}. A file's name defaults to its folder's name; an
    .npz without an 'images' array but with several image arrays (the demo's samples.npz) gives one set per array."""
    from cpsample.cli.evaluate import check_samples_path, load_samples, split_sample_spec

    sets = {}
    for spec in specs:
        name, path = split_sample_spec(spec)
        path = check_samples_path(Path(path), f"--samples {spec}")
        found = _named_arrays(path) or {"": load_samples(path).images}
        for key, images in found.items():
            label = "/".join(part for part in (name, key) if part) or (
                path.parent.name if path.stem == "samples" else path.stem
            )
            if label in sets:
                raise ValueError(f"--samples: two sets are named {label!r}; name them with NAME=PATH")
            sets[label] = images
    return sets


def _named_arrays(path: Path) -> dict:
    """The image arrays of an .npz with no 'images' key and several (N, C, H, W) float arrays in [-1, 1], by name."""
    from cpsample.data.sources import array_file_kind

    if path.suffix != ".npz" or array_file_kind(path) != "npz":
        return {}
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "images" in archive or len(archive.files) < 2:
                return {}
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError):
        return {}  # load_samples says what is wrong with the file
    images = {
        key: a.astype(np.float32)
        for key, a in arrays.items()
        if a.ndim == 4
        and a.shape[1] in (1, 3)
        and np.issubdtype(a.dtype, np.floating)
        and np.isfinite(a).all()
        and a.min() >= -1.0
        and a.max() <= 1.0
    }
    return images if len(images) == len(arrays) else {}


def register(app: typer.Typer) -> None:
    """Add the `attack` command group to the main `cpsample` app."""
    from cpsample.cli.peers import register_side

    register_side(attack_app)
    app.add_typer(attack_app, name="attack")
