"""Commands for guided models: class-conditional denoisers with classifier-free guidance (paper App. B) and
Stable Diffusion pipelines protected in latent space (paper section 4.2, Table 2).

    cpsample train-conditional --data mnist --subset 200 --steps 4000 --out runs/cond
    cpsample train-classifier --denoiser runs/cond --out runs/cond-clf
    cpsample sample-conditional --model runs/cond --classes 0,1,2 -n 8 --guard cpsample --classifier runs/cond-clf
    --out runs/s

    cpsample make-tiny-sd --out runs/tiny-sd
    cpsample train-latent-classifier --pipeline runs/tiny-sd --images private/ --captions captions.txt --out
    runs/latent-clf
    cpsample sample-sd --pipeline runs/tiny-sd --prompts-file prompts.txt --guard cpsample --classifier runs/latent-clf
    \
        --compare-plain --out runs/sd
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from rich.table import Table

from cpsample.cli.common import (
    Alpha,
    BatchSize,
    Channels,
    Device,
    GuardOption,
    ImageSize,
    MixedPrecision,
    NearCopyThreshold,
    Overwrite,
    Resume,
    Scale,
    Seed,
    Steps,
    Subset,
    Tau,
    Trace,
    check_device_option,
    console,
    fail,
    guard_stats,
    parse_widths,
    prepare_out,
    prepare_training,
    run_safely,
    say_warnings,
)


def register(app: typer.Typer) -> None:
    """Add the conditional and latent (Stable Diffusion) commands to the app."""
    app.command("train-conditional")(run_safely(train_conditional_command))
    app.command("sample-conditional")(run_safely(sample_conditional_command))
    app.command("make-tiny-sd")(run_safely(make_tiny_sd_command))
    app.command("train-latent-classifier")(run_safely(train_latent_classifier_command))
    app.command("sample-sd")(run_safely(sample_sd_command))


# --- class-conditional ---------------------------------------------------------------------------------------


def train_conditional_command(
    out: Annotated[
        Path, typer.Option(help="Output folder (diffusers layout: unet/, scheduler/, split.json, cpsample.json).")
    ],
    data: Annotated[
        str, typer.Option(help="'mnist', 'digits', or an .npz file with 'images' and 'labels'.")
    ] = "mnist",
    image_size: ImageSize = 16,
    subset: Subset = None,
    steps: Steps = 10000,
    batch_size: BatchSize = 64,
    lr: float = 1e-3,
    ema_decay: float = 0.999,
    label_dropout: Annotated[
        float, typer.Option(help="Probability of training a step with the null label (CFG).")
    ] = 0.1,
    channels: Channels = "32,64,64",
    save_every: int = 500,
    mixed_precision: MixedPrecision = "no",
    resume: Resume = False,
    overwrite: Overwrite = False,
    seed: Seed = 0,
):
    """Train a class-conditional UNet2DModel with label dropout, for classifier-free guidance."""
    from cpsample.training.conditional import train_conditional

    prepare_out(out, "train-conditional", overwrite, resume, inputs=(data,))
    members, split, config = prepare_training(
        data,
        image_size,
        subset,
        seed,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        ema_decay=ema_decay,
        save_every=save_every,
        mixed_precision=mixed_precision,
    )
    summary = train_conditional(
        members,
        split,
        out,
        config,
        label_dropout=label_dropout,
        resume=resume,
        overwrite=overwrite,
        block_out_channels=parse_widths(channels),
        data_spec=split.source,
    )
    console.print(
        f"trained {summary['steps']} steps on {summary['members']} images of {summary['num_classes']} classes "
        f"({summary['parameters'] / 1e6:.2f}M parameters, {summary['seconds_this_run']:.0f}s); saved to {out}"
    )


def sample_conditional_command(
    model: Annotated[str, typer.Option(help="Class-conditional model folder (from train-conditional).")],
    out: Annotated[
        Path,
        typer.Option(
            help="Output folder: grid.png (one row per class), samples.npz, cpsample.json, "
            "private.json (similarity to the members: do not share), batches/ (+ trace "
            "files with --trace)."
        ),
    ],
    classes: Annotated[Optional[str], typer.Option(help="Comma-separated class labels, or 'all' (default).")] = None,
    n: Annotated[int, typer.Option("--n", "-n", min=1, help="Images per class.")] = 8,
    cfg_scale: Annotated[float, typer.Option(help="Classifier-free guidance scale (1 = purely conditional).")] = 3.0,
    guard: Annotated[
        str,
        typer.Option(help="none, cpsample, amg, delayed-cfg or opposite-cfg; `cpsample guards` lists their options."),
    ] = "none",
    classifier: Annotated[
        Optional[str], typer.Option(help="Random-label classifier folder for --guard cpsample.")
    ] = None,
    alpha: Alpha = None,
    scale: Scale = None,
    tau: Tau = None,
    option: GuardOption = None,
    scheduler: Annotated[str, typer.Option(help="ddim, ddpm or dpm++.")] = "ddim",
    steps: Annotated[int, typer.Option(min=1)] = 50,
    batch_size: BatchSize = 250,
    feature_net: Annotated[
        Optional[str],
        typer.Option(
            help="'bundled' (MNIST digitnet for grey images, Twemoji emojinet for RGB) or a folder: report how many "
            "samples keep their class."
        ),
    ] = None,
    copy_threshold: NearCopyThreshold = None,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
    device: Device = "cpu",
    trace: Trace = False,
    overwrite: Overwrite = False,
    seed: Seed = 0,
):
    """Sample a class-conditional model with classifier-free guidance, optionally protected by CPSample (`cpsample
    sample` does this too)."""
    from cpsample.evaluation.honesty import protection_warnings
    from cpsample.evaluation.nearcopy import resolve_threshold
    from cpsample.provenance import write_record
    from cpsample.sampling.adapters import ConditionalAdapter
    from cpsample.sampling.conditional import parse_classes
    from cpsample.sampling.generate import SampleConfig, generate
    from cpsample.sampling.guards import guard_class
    from cpsample.sampling.outputs import save_private, save_samples, save_trace
    from cpsample.sampling.spec import GuardSpec, parse_option_strings

    say_alias("sample-conditional", "--model MODEL --classes ...")
    prepare_out(out, "sample-conditional", overwrite, inputs=(model, classifier, feature_net))
    check_device_option(device)
    copy_threshold = resolve_threshold(copy_threshold, "pixels")
    adapter = ConditionalAdapter.from_pretrained(model, device, dtype, scheduler)
    wanted = parse_classes(classes, adapter.class_info)
    guard_options = parse_option_strings(guard, option, alpha=alpha, scale=scale, tau=tau)
    settings = {
        "model": model,
        "classes": wanted,
        "n_per_class": n,
        "cfg_scale": cfg_scale,
        "guard": guard,
        "classifier": classifier,
        **guard_options,
        "scheduler": scheduler,
        "steps": steps,
        "batch_size": batch_size,
        "dtype": dtype,
        "device": device,
        "seed": seed,
        "copy_threshold": copy_threshold,
    }
    config = SampleConfig(
        n=n,
        steps=steps,
        scheduler=scheduler,
        batch_size=batch_size,
        dtype=dtype,
        device=device,
        seed=seed,
        work_dir=out,
        overwrite=overwrite,
    )
    spec = GuardSpec.create(guard, **guard_options)
    result = generate(adapter.conditioned(wanted, cfg_scale), spec, config, classifier)
    labels = result.labels
    paths = {
        **save_samples(out, result.images, grid_count=None, columns=n, labels=labels),
        **save_trace(out, result.trace, result.timesteps, result.guard_settings.get("alpha"), keep=trace),
    }
    stats = {
        "seconds": round(result.seconds, 2),
        "denoiser_calls": result.denoiser_calls,
        **guard_stats(result.trace),
        **say_warnings(
            protection_warnings(result.trace, guard, classifier if guard_class(guard).uses_classifier else None)
        ),
    }
    if feature_net:
        stats["class_agreement"] = class_agreement_stats(feature_net, result.images, labels, device)
    # Similarity to the members is theirs: private.json, never the shareable cpsample.json.
    measured = member_similarity(model, result.images, copy_threshold)
    paths.update(save_private(out, "sample-conditional", settings, measured))
    write_record(out, "sample-conditional", settings, {**stats, **paths})
    console.print(json.dumps({**stats, **measured}, indent=2))


def member_similarity(model: str, images, threshold: float | None = None) -> dict:
    """Nearest-member cosine in pixel space and the near-copy share (skipped when the members cannot be found)."""
    from cpsample.evaluation import find_near_copies, replication_share, similarity_summary
    from cpsample.models.bundle import training_data

    try:
        dataset, split = training_data(Path(model))
    except FileNotFoundError:
        return {}
    members = dataset.take(split.members).images
    found = find_near_copies(images, members, "pixels", threshold)
    return {
        "nearest_member_cosine": similarity_summary(found.similarity),
        "near_copies": replication_share(found.similarity, found.threshold),
    }


def class_agreement_stats(feature_net: str, images, labels: np.ndarray, device: str) -> dict:
    from cpsample.evaluation import class_agreement, load_feature_net

    return class_agreement(load_feature_net(feature_net, device=device, channels=images.shape[1]), images, labels)


# --- Stable Diffusion (latent space) -------------------------------------------------------------------------


def make_tiny_sd_command(
    out: Annotated[
        Path, typer.Option(help="Folder for the pipeline (model_index.json, unet/, vae/, text_encoder/, ...).")
    ],
    image_size: Annotated[int, typer.Option(help="Image resolution; latents are half of it.")] = 32,
    scheduler: Annotated[str, typer.Option(help="pndm (as Stable Diffusion v1) or ddim.")] = "pndm",
    overwrite: Overwrite = False,
    seed: Seed = 0,
):
    """Write a tiny random-weight Stable Diffusion pipeline, to try the latent workflow offline."""
    require_transformers()
    if image_size < 4 or image_size % 4:
        raise ValueError(
            "--image-size must be a positive multiple of 4 (the VAE halves it, the UNet halves it again), got "
            f"{image_size}"
        )
    prepare_out(out, "make-tiny-sd", overwrite)
    from cpsample.provenance import write_record
    from cpsample.sampling.latent import build_tiny_sd_pipeline

    folder = build_tiny_sd_pipeline(out, image_size=image_size, seed=seed, scheduler=scheduler)
    write_record(folder, "make-tiny-sd", {"image_size": image_size, "scheduler": scheduler, "seed": seed})
    console.print(f"tiny Stable Diffusion pipeline ({image_size}x{image_size}, random weights) written to {folder}")


def train_latent_classifier_command(
    pipeline: Annotated[Path, typer.Option(help="Local Stable Diffusion pipeline folder (model_index.json).")],
    images: Annotated[
        Path, typer.Option(help="Folder of the private images to protect (resized to the pipeline's resolution).")
    ],
    out: Annotated[Path, typer.Option(help="Output folder for the latent classifier.")],
    captions: Annotated[
        Optional[Path],
        typer.Option(help="Optional 'image file<TAB>caption' lines (or JSON), kept with the classifier."),
    ] = None,
    steps: Steps = 6000,
    relabel_after: Annotated[
        int, typer.Option(help="Step at which latents still not fitted get a common label.")
    ] = 4000,
    batch_size: BatchSize = 64,
    lr: float = 1e-3,
    ema_decay: float = 0.999,
    channels: Channels = "32,64,64",
    label_seed: Annotated[Optional[int], typer.Option(help="Seed of the random labels (default: --seed).")] = None,
    save_every: int = 500,
    resume: Resume = False,
    overwrite: Overwrite = False,
    device: Device = "cpu",
    seed: Seed = 0,
):
    """Train CPSample's random-label classifier on the VAE latents of a private image set."""
    require_transformers()
    prepare_out(out, "train-latent-classifier", overwrite, resume, inputs=(pipeline, images, captions))
    check_device_option(device)
    from cpsample.provenance import seed_everything
    from cpsample.training.latent_classifier import train_latent_classifier
    from cpsample.training.loop import TrainConfig

    seed_everything(seed)
    config = TrainConfig(
        steps=steps, batch_size=batch_size, lr=lr, ema_decay=ema_decay, seed=seed, save_every=save_every
    )
    summary = train_latent_classifier(
        pipeline,
        images,
        out,
        config,
        label_seed=seed if label_seed is None else label_seed,
        relabel_after=relabel_after,
        captions_file=captions,
        block_out_channels=parse_widths(channels),
        resume=resume,
        device=device,
        overwrite=overwrite,
    )
    table = Table(title="latent classifier on the private latents (EMA weights)")
    for column in ("t", "loss", "accuracy"):
        table.add_column(column, justify="right")
    for row in summary["per_timestep"]:
        table.add_row(str(row["t"]), f"{row['loss']:.4f}", f"{row['accuracy']:.3f}")
    console.print(table)
    console.print(
        f"{summary['members']} private images as {tuple(summary['latent_shape'])} latents; relabelled "
        f"{summary['relabelled']}; low-noise loss {summary['low_noise_loss']:.4f}; saved to {out}"
    )


def sample_sd_command(
    pipeline: Annotated[Path, typer.Option(help="Local Stable Diffusion pipeline folder (model_index.json).")],
    out: Annotated[
        Path,
        typer.Option(
            help="Output folder: grid.png (one row per prompt), samples.npz, cpsample.json, "
            "private.json (per-prompt similarity to the private images: do not share), "
            "plain/ with --compare-plain (+ trace files with --trace)."
        ),
    ],
    prompt: Annotated[Optional[list[str]], typer.Option(help="A prompt (repeatable).")] = None,
    prompts_file: Annotated[
        Optional[Path], typer.Option(help="One prompt per line; 'original<TAB>modified' for a caption pair (Table 2).")
    ] = None,
    n: Annotated[int, typer.Option("--n", "-n", min=1, help="Images per prompt.")] = 4,
    steps: Annotated[int, typer.Option(min=1)] = 50,
    cfg_scale: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 7.5,
    scheduler: Annotated[
        str, typer.Option(help="default (the pipeline's own), ddim, pndm, ddpm or dpm++.")
    ] = "default",
    guard: Annotated[str, typer.Option(help="none or cpsample.")] = "cpsample",
    classifier: Annotated[
        Optional[Path], typer.Option(help="Latent classifier folder (from train-latent-classifier).")
    ] = None,
    alpha: Alpha = None,
    scale: Scale = None,
    tau: Tau = None,
    height: Annotated[Optional[int], typer.Option(help="Image height (default: the pipeline's native size).")] = None,
    width: Annotated[Optional[int], typer.Option(help="Image width (default: the pipeline's native size).")] = None,
    private: Annotated[
        Optional[Path], typer.Option(help="Private images to measure similarity against (default: the classifier's).")
    ] = None,
    copy_threshold: NearCopyThreshold = None,
    compare_plain: Annotated[
        bool, typer.Option(help="Also sample without CPSample from the same noise, into OUT/plain.")
    ] = False,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
    device: Device = "cpu",
    trace: Trace = False,
    overwrite: Overwrite = False,
    seed: Seed = 0,
):
    """Sample a Stable Diffusion pipeline with CPSample in latent space; per-prompt similarity to the private
    images (`cpsample sample` samples it too)."""
    say_alias("sample-sd", "--model PIPELINE --prompt ...")
    require_transformers()
    prepare_out(out, "sample-sd", overwrite, inputs=(pipeline, classifier, prompts_file, private))
    check_device_option(device)
    from cpsample.evaluation.nearcopy import resolve_threshold
    from cpsample.provenance import write_record
    from cpsample.sampling.guards.cpsample import LATENT_UNCALIBRATED
    from cpsample.sampling.latent import (
        PromptEntry,
        build_latent_guard,
        latent_shape,
        load_private_images,
        load_sd_pipeline,
        read_prompts,
    )
    from cpsample.sampling.latent_pairing import check_latent_pairing
    from cpsample.sampling.outputs import save_private

    entries = [PromptEntry(text, "prompt") for text in (prompt or [])] + (
        read_prompts(prompts_file) if prompts_file else []
    )
    if not entries:
        raise ValueError("give --prompt (repeatable) or --prompts-file")
    copy_threshold = resolve_threshold(copy_threshold, "pixels")
    if guard not in ("none", "cpsample"):
        raise ValueError(f"unknown guard {guard!r}; choose none or cpsample")
    if guard == "cpsample" and classifier is None:
        raise ValueError("--guard cpsample needs --classifier (train one with `cpsample train-latent-classifier`)")
    pipe = load_sd_pipeline(pipeline, scheduler=scheduler, device=device, dtype=dtype)
    _, h, w = latent_shape(pipe, height, width)
    size = (h * pipe.vae_scale_factor, w * pipe.vae_scale_factor)
    from cpsample.sampling.sampler import check_sample_count

    check_sample_count(n * len(entries) * (2 if compare_plain else 1), (3, *size))
    protect = build_latent_guard(classifier, pipe, alpha, scale, tau, height, width) if guard == "cpsample" else None
    # alpha = 0 never guides (its scale is never used) but still records p(y=1 | x_t) per step (the paper's Fig. 7
    # comparison).
    monitor_tau = protect.tau if protect is not None else (tau or LATENT_UNCALIBRATED["tau"])
    monitor = build_latent_guard(classifier, pipe, 0.0, 0.0, monitor_tau, height, width) if classifier else None
    private_set = _private_set(private, classifier, size, load_private_images)
    if classifier is not None:
        check_latent_pairing(classifier, pipe, private_set)  # its VAE, and its own private images to measure against
    # The knobs as run (given, else the classifier's calibration, else the latent default), printed and recorded.
    ran = protect.settings() if protect is not None else {}
    settings = {
        "pipeline": str(pipeline),
        "prompts": [e.text for e in entries],
        "n_per_prompt": n,
        "steps": steps,
        "cfg_scale": cfg_scale,
        "scheduler": scheduler,
        "guard": guard,
        "classifier": classifier,
        "alpha": ran.get("alpha"),
        "scale": ran.get("scale"),
        "tau": ran.get("tau"),
        "max_t": ran.get("max_t"),
        "knobs_from": protect.calibration if protect is not None else None,
        "guard_settings": ran or None,
        "height": size[0],
        "width": size[1],
        "private": private_set.source if private_set else None,
        "copy_threshold": copy_threshold,
        "compare_plain": compare_plain,
        "dtype": dtype,
        "device": device,
        "seed": seed,
    }
    if protect is not None:
        window = "every step" if protect.max_t is None else f"t <= {protect.max_t}"
        console.print(
            f"CPSample: alpha {protect.alpha:g}, scale {protect.scale:g}, tau {protect.tau:g}, checks at "
            f"{window} (knobs: {protect.calibration})"
        )
    runs = {}
    if compare_plain and guard != "none":
        runs["plain"] = _run_sd(
            pipe,
            entries,
            monitor,
            n,
            steps,
            cfg_scale,
            size,
            seed,
            Path(out) / "plain",
            private_set,
            copy_threshold,
            0.0,
            trace,
        )
    main_guard = protect if guard == "cpsample" else monitor
    runs[guard] = _run_sd(
        pipe,
        entries,
        main_guard,
        n,
        steps,
        cfg_scale,
        size,
        seed,
        Path(out),
        private_set,
        copy_threshold,
        ran.get("alpha"),
        trace,
    )
    # Per-prompt similarity to the private images (and their file names) go to private.json, not cpsample.json.
    measured = {name: {"per_prompt": run.pop("per_prompt")} for name, run in runs.items() if "per_prompt" in run}
    runs[guard].update(save_private(out, "sample-sd", settings, measured))
    write_record(out, "sample-sd", settings, runs)
    _print_prompt_table(entries, {name: {**run, **measured.get(name, {})} for name, run in runs.items()})


def _private_set(private, classifier, size, loader):
    from cpsample.training.latent_classifier import private_images_of

    if private is None and classifier is None:
        return None
    folder = private if private is not None else private_images_of(classifier)
    if size[0] != size[1]:
        raise ValueError(f"similarity to the private images needs square images, these are {size[0]}x{size[1]}")
    return loader(folder, size[0])


def _run_sd(
    pipe,
    entries,
    guard,
    n,
    steps,
    cfg_scale,
    size,
    seed,
    folder: Path,
    private_set,
    threshold,
    alpha,
    trace: bool = False,
) -> dict:
    from cpsample.sampling.adapters import LatentAdapter
    from cpsample.sampling.generate import SampleConfig, generate
    from cpsample.sampling.guards import NoGuard
    from cpsample.sampling.latent import per_prompt_similarity
    from cpsample.sampling.outputs import save_samples, save_trace

    adapter = LatentAdapter(pipe, height=size[0], width=size[1]).conditioned([e.text for e in entries], cfg_scale)
    # Each prompt's n images in one batch from the noise of `seed`, not kept (this command does not resume).
    result = generate(adapter, guard or NoGuard(), SampleConfig(n=n, steps=steps, batch_size=n, seed=seed))
    paths = {
        **save_samples(
            folder,
            result.images,
            grid_count=None,
            columns=n,
            prompt_index=result.prompt_index,
            latents=result.latents.numpy(),
        ),
        **save_trace(folder, result.trace, result.timesteps, alpha or None, keep=trace),
    }
    summary = {
        "seconds": round(result.seconds, 2),
        "seconds_per_image": round(result.seconds / len(result.images), 3),
        **guard_stats(result.trace),
        **paths,
    }
    if private_set is not None:
        summary["per_prompt"] = per_prompt_similarity(result, private_set, threshold, entries)
    return summary


def _print_prompt_table(entries, runs: dict) -> None:
    table = Table(title="similarity of generated images to the nearest private image (pixel cosine)")
    table.add_column("prompt")
    table.add_column("role")
    for name in runs:
        table.add_column(f"max sim ({name})", justify="right")
        table.add_column(f"% steps guided ({name})", justify="right")
    for index, entry in enumerate(entries):
        cells = [entry.text[:60], entry.role]
        for run in runs.values():
            rows = run.get("per_prompt")
            row = rows[index] if rows else {}
            guided = row.get("share_of_steps_guided")
            cells += [f"{row['max_similarity']:.3f}" if row else "-", "-" if guided is None else f"{100 * guided:.0f}"]
        table.add_row(*cells)
    console.print(table)
    console.print(
        json.dumps({name: {k: v for k, v in run.items() if k != "per_prompt"} for name, run in runs.items()}, indent=2)
    )


# --- shared helpers ------------------------------------------------------------------------------------------


def say_alias(command: str, how: str) -> None:
    """One line on stderr (stdout keeps the results): the command stays for one release as a form of `sample`."""
    typer.echo(f"note: `cpsample sample {how}` now does this; `cpsample {command}` stays for one release", err=True)


# What each conditioning takes on `cpsample sample`'s command line.
CONDITION_OPTIONS = {"labels": "--classes", "prompts": "--prompt / --prompts-file"}


def condition_adapter(adapter, model: str, classes, prompts, prompts_file, cfg_scale):
    """The adapter with the class labels or prompts given on the command line (all classes by default), each
    refused where the model takes no such thing."""
    from cpsample.sampling.adapters import ADAPTERS

    given = {"labels": classes is not None, "prompts": bool(prompts) or prompts_file is not None}
    for conditioning, was_given in given.items():
        if was_given and conditioning != adapter.conditioning:
            takers = " or ".join(kind.description for kind in ADAPTERS.values() if kind.conditioning == conditioning)
            raise ValueError(
                f"{CONDITION_OPTIONS[conditioning]} applies to {takers}; {model} is {adapter.description}"
            )
    if adapter.conditioning == "none":
        if cfg_scale is not None:
            raise ValueError(f"--cfg-scale applies to conditional models; {model} is {adapter.description}")
        return adapter
    if adapter.conditioning == "labels":
        from cpsample.sampling.conditional import parse_classes

        return adapter.conditioned(parse_classes(classes, adapter.class_info), cfg_scale)
    return adapter.conditioned([entry.text for entry in prompt_entries(prompts, prompts_file)], cfg_scale)


def prompt_entries(prompts, prompts_file):
    """--prompt (repeatable) then the lines of --prompts-file."""
    from cpsample.sampling.latent import PromptEntry, read_prompts

    entries = [PromptEntry(text, "prompt") for text in (prompts or [])]
    entries += read_prompts(prompts_file) if prompts_file else []
    if not entries:
        raise ValueError("give --prompt (repeatable) or --prompts-file")
    return entries


def condition_settings(adapter) -> dict:
    """What a run record says about the conditions sampled (nothing for an unconditional model)."""
    if adapter.conditioning == "labels":
        return {"classes": list(adapter.classes), "cfg_scale": adapter.guidance_scale}
    if adapter.conditioning == "prompts":
        return {"prompts": list(adapter.prompts), "cfg_scale": adapter.guidance_scale}
    return {}


def sample_arrays(result) -> dict:
    """The arrays samples.npz holds beside the images where the model kind has them: labels, prompt_index, latents."""
    arrays = {
        "labels": result.labels,
        "prompt_index": result.prompt_index,
        "latents": None if result.latents is None else result.latents.numpy(),
    }
    return {name: array for name, array in arrays.items() if array is not None}


def require_transformers() -> None:
    """Stable Diffusion's text encoder and tokenizer come from transformers, an optional dependency."""
    if importlib.util.find_spec("transformers") is None:
        fail(
            "the Stable Diffusion commands need transformers: pip install 'cpsample[latent]' (or pip install "
            "transformers)"
        )
