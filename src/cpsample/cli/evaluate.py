"""CLI commands `evaluate` (replication, quality and permutation test -> report) and `train-feature-net`.

main.py calls `register(app)` to add them.
"""

from __future__ import annotations

import shlex
import zipfile
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from rich.table import Table

from cpsample.cli.common import (
    NearCopyThreshold,
    Overwrite,
    Seed,
    check_device_option,
    console,
    parse_widths,
    prepare_out,
    run_safely,
    say_warnings,
)
from cpsample.data import DataError, ImageSet, load_dataset


def register(app: typer.Typer) -> None:
    app.command("evaluate")(run_safely(evaluate_command))
    app.command("train-feature-net")(run_safely(train_feature_net_command))


def evaluate_command(
    samples: Annotated[
        list[str], typer.Option(help="name=path/samples.npz; repeat for each method. The first is the baseline.")
    ],
    out: Annotated[
        Path, typer.Option(help="Output folder: report.html, report.md, report.json, figures, cpsample.json.")
    ],
    model: Annotated[
        str, typer.Option(help="Denoiser folder (or 'bundled') whose training members / non-members to compare with.")
    ] = "bundled",
    features: Annotated[
        str, typer.Option(help="pixels, dino:PATH (local DINO/DINOv2 ViT weights) or sscd:PATH (TorchScript).")
    ] = "pixels",
    threshold: NearCopyThreshold = None,
    quality_net: Annotated[
        str,
        typer.Option(
            help="Feature net for FD and class checks: 'bundled' (the shipped net for the images' channels: digitnet "
            "for grey, emojinet for RGB), 'digitnet', 'emojinet', a folder, or 'none'."
        ),
    ] = "bundled",
    inception: Annotated[
        Optional[Path],
        typer.Option(help="Local Inception-v3 FID weights: adds real FID (needs torchmetrics + torch-fidelity)."),
    ] = None,
    permutation_rounds: Annotated[int, typer.Option(min=1, help="Null draws for the App. E permutation test.")] = 1000,
    relative_metric: Annotated[str, typer.Option(help="Carlini ratio distance: l2 or tiled.")] = "l2",
    top_k: Annotated[int, typer.Option(min=1, help="Most similar pairs shown per method.")] = 4,
    trust_torchscript: Annotated[
        bool, typer.Option(help="Allow loading an SSCD TorchScript file (it runs code from the file).")
    ] = False,
    overwrite: Overwrite = False,
    seed: Seed = 0,
):
    """Measure how much each sample set copies the training images; write an HTML/Markdown/JSON report."""
    from cpsample.evaluation import evaluate, write_report
    from cpsample.evaluation.honesty import vacuous_baseline
    from cpsample.models.bundle import resolve_model_dir, training_data
    from cpsample.provenance import seed_everything, write_record

    prepare_out(out, "evaluate", overwrite, inputs=(*sample_paths(samples), model, features, quality_net, inception))
    seed_everything(seed)
    named = parse_named_paths(samples)
    sets = {name: load_samples(path) for name, path in named.items()}
    dataset, split = training_data(resolve_model_dir(model, "denoiser"))
    members = dataset.take(split.members)
    nonmembers = dataset.take(split.nonmembers) if split.nonmembers else None
    labels = {name: s.labels for name, s in sets.items() if s.labels is not None}
    results = evaluate(
        {name: s.images for name, s in sets.items()},
        members,
        nonmembers,
        features=features,
        threshold=threshold,
        quality_net=None if quality_net == "none" else quality_net,
        sample_labels=labels or None,
        relative_metric=relative_metric,
        permutation_rounds=permutation_rounds,
        top_k=top_k,
        figures_dir=out,
        trust_torchscript=trust_torchscript,
        inception_weights=inception,
        seed=seed,
    )
    paths = write_report(out, results)
    settings = {
        "samples": {k: str(v) for k, v in named.items()},
        "model": model,
        "features": features,
        "threshold": results["settings"]["threshold"],
        "quality_net": quality_net,
        "inception": inception,
        "permutation_rounds": permutation_rounds,
        "relative_metric": relative_metric,
        "top_k": top_k,
        "trust_torchscript": trust_torchscript,
        "seed": seed,
    }
    baseline = results["settings"]["baseline"]
    counted = results["methods"][baseline]["replication"]
    vacuous = (
        vacuous_baseline(f"the baseline {baseline!r}", counted["count"], counted["n"]) if len(named) > 1 else None
    )
    write_record(
        out,
        "evaluate",
        settings,
        {
            "report": {k: str(v) for k, v in paths.items()},
            "headline": headline(results),
            **({"warnings": [vacuous]} if vacuous else {}),
        },
    )
    console.print(summary_table(results))
    say_warnings([vacuous] if vacuous else [])
    console.print(f"report: {paths['html']}")


def train_feature_net_command(
    out: Annotated[Path, typer.Option(help="Output folder: config.json, model.safetensors, cpsample.json.")],
    data: Annotated[
        str,
        typer.Option(
            help="'mnist', 'digits', 'twemoji' (six categories), or an .npz with 'labels' (real class labels needed)."
        ),
    ] = "mnist",
    image_size: Annotated[
        Optional[int], typer.Option(help="Resize images to this square size (match your samples).")
    ] = 16,
    epochs: Annotated[int, typer.Option(min=1)] = 15,
    batch_size: Annotated[int, typer.Option(min=1)] = 128,
    lr: float = 3e-3,
    held_out: Annotated[float, typer.Option(help="Share of images kept aside to measure accuracy.")] = 0.2,
    name: Annotated[str, typer.Option(help="Name used in the metric, e.g. FD_digitnet.")] = "digitnet",
    widths: Annotated[
        str, typer.Option(help="Channels of the conv stages, comma-separated (max-pool between).")
    ] = "32,64,128",
    flip: Annotated[
        bool, typer.Option(help="Also mirror half the training images left-right (for pictures; not digits).")
    ] = False,
    device: Annotated[str, typer.Option(help="torch device: cpu, cuda ...")] = "cpu",
    overwrite: Overwrite = False,
    seed: Seed = 0,
):
    """Train the small classifier whose features give the offline Frechet distance (FD_<name>, not FID)."""
    from cpsample.evaluation.feature_net import FeatureNetTraining, train_feature_net
    from cpsample.provenance import seed_everything, write_record

    if image_size is not None and image_size < 1:
        raise ValueError(f"--image-size must be at least 1, got {image_size}")
    check_device_option(device)
    prepare_out(out, "train-feature-net", overwrite, inputs=(data,))
    seed_everything(seed)
    dataset = load_dataset(data, image_size=image_size)
    training = FeatureNetTraining(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        held_out=held_out,
        seed=seed,
        flip=flip,
        widths=tuple(parse_widths(widths)),
    )
    net, summary = train_feature_net(dataset, training, name=name, device=device)
    net.save(out)
    settings = {
        "data": data,
        "image_size": image_size,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "held_out": held_out,
        "name": name,
        "widths": widths,
        "flip": flip,
        "device": device,
        "seed": seed,
    }
    summary["command_line"] = command_line("train-feature-net", {"out": out, **settings})
    write_record(out, "train-feature-net", settings, summary)
    accuracy = summary["held_out_accuracy"]
    console.print(
        f"{name}: held-out accuracy {'-' if accuracy is None else f'{accuracy:.4f}'} on "
        f"{summary['held_out_images']} images, train accuracy {summary['train_accuracy']:.4f} "
        f"({summary['parameters']} parameters, {summary['seconds']}s); saved to {out}"
    )


def sample_paths(specs: list[str] | None) -> list[str]:
    """The paths of --samples specs (what prepare_out must keep outside --out)."""
    return [split_sample_spec(spec)[1] for spec in specs or []]


def split_sample_spec(spec: str) -> tuple[str, str]:
    """'plain=a/samples.npz' -> ('plain', 'a/samples.npz'); a bare path has no name ('')."""
    name, separator, path = spec.partition("=")
    return (name, path) if separator else ("", spec)


def parse_named_paths(values: list[str]) -> dict[str, Path]:
    """['plain=a/samples.npz', ...] -> {'plain': Path(...)}; names must be unique and files must exist."""
    if not values:
        raise ValueError("give at least one --samples name=path/samples.npz")
    named = {}
    for value in values:
        name, path = split_sample_spec(value)
        if not name or not path:
            raise ValueError(f"--samples expects name=path, got {value!r}")
        if name in named:
            raise ValueError(f"--samples name {name!r} given twice")
        named[name] = check_samples_path(Path(path), f"--samples {name}")
    return named


def check_samples_path(path: Path, what: str) -> Path:
    """A --samples path must be a file: a folder or a missing path is refused with what is expected instead."""
    if path.is_dir():
        inside = path / "samples.npz"
        hint = f"pass {inside}" if inside.is_file() else "pass the samples.npz that `cpsample sample` wrote into it"
        raise DataError(
            f"{what}: {path} is a folder; expected a samples file (.npz, or an .npy array of images): {hint}"
        )
    if path.is_symlink() and not path.exists():
        raise FileNotFoundError(f"{what}: {path} is a symbolic link to nothing (or a loop of links); fix the link")
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} does not exist")
    return path


def load_samples(path: Path) -> ImageSet:
    """samples.npz from `cpsample sample` holds float images in [-1, 1] under 'images': take them as they are
    (the generic loader would read an all-non-negative float set as [0, 1]); other files go through load_dataset.
    A plain .npy array of images (np.save) is read the same way."""
    from cpsample.data.sources import array_file_kind

    if array_file_kind(path) == "npy":
        return _load_npy_samples(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "images" in archive and np.issubdtype(archive["images"].dtype, np.floating):
                images = archive["images"].astype(np.float32)
                if images.ndim == 4 and np.isfinite(images).all() and images.min() >= -1.0 and images.max() <= 1.0:
                    labels = next(
                        (archive[k].astype(np.int64).reshape(-1) for k in ("labels", "y") if k in archive), None
                    )
                    return ImageSet(
                        images=images,
                        names=[f"{path.name}:{i}" for i in range(len(images))],
                        labels=labels,
                        source=str(path),
                    )
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        pass  # the generic loader names what is wrong (empty file, pickled objects, no images ...)
    return load_dataset(str(path))


def _load_npy_samples(path: Path) -> ImageSet:
    """An .npy file holding one array of images: float in [-1, 1] as it is, anything else as load_dataset reads it."""
    from cpsample.data.sources import _to_nchw

    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as error:
        pickled = "allow_pickle" in str(error)
        reason = "it holds pickled Python objects, which cpsample never loads" if pickled else error
        raise DataError(
            f"{path}: cannot read the .npy array ({reason}); save plain numeric images with np.save"
        ) from None
    except (OSError, EOFError) as error:
        raise DataError(f"{path}: damaged .npy file ({type(error).__name__}: {error})") from None
    as_is = (
        array.ndim == 4
        and np.issubdtype(array.dtype, np.floating)
        and len(array)
        and array.shape[1] in (1, 3)
        and np.isfinite(array).all()
        and array.min() >= -1.0
        and array.max() <= 1.0
    )
    images = array.astype(np.float32) if as_is else _to_nchw(array, str(path))
    return ImageSet(images=images, names=[f"{path.name}:{i}" for i in range(len(images))], source=str(path))


def headline(results: dict) -> dict:
    """The few numbers worth a glance, per method."""
    out = {}
    for name, method in results["methods"].items():
        out[name] = {
            "near_copy_share": method["replication"]["share"],
            "max_similarity": method["similarity"]["max"],
            "relative_share": method["relative"]["share"],
        }
        if "quality" in method:
            out[name][method["quality"]["metric"]] = method["quality"]["value"]
        if "permutation" in method:
            out[name]["permutation_p"] = method["permutation"]["p_value"]
    return out


def summary_table(results: dict) -> Table:
    threshold = results["settings"]["threshold"]
    table = Table(title=f"near-copies (cosine > {threshold}, {results['settings']['features']})")
    for column in ("method", "n", "near-copy share [95% CI]", "max sim", "Carlini flagged", "quality", "perm. p"):
        table.add_column(column, justify="right")
    for name, m in results["methods"].items():
        r = m["replication"]
        quality = f"{m['quality']['metric']} {m['quality']['value']:.2f}" if "quality" in m else "-"
        table.add_row(
            name,
            str(m["n"]),
            f"{100 * r['share']:.2f}% [{100 * r['ci_low']:.2f}, {100 * r['ci_high']:.2f}]",
            f"{m['similarity']['max']:.4f}",
            f"{100 * m['relative']['share']:.2f}%",
            quality,
            f"{m['permutation']['p_value']:.4f}" if "permutation" in m else "-",
        )
    return table


def command_line(command: str, options: dict) -> str:
    """The exact `cpsample ...` invocation that reproduces a run, for the provenance record."""
    parts = ["cpsample", command]
    for key, value in options.items():
        if value is None:
            continue
        parts += [f"--{key.replace('_', '-')}", shlex.quote(str(value))]
    return " ".join(parts)
