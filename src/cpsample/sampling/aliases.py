"""The runs behind the old per-kind commands, kept one release beside `cpsample sample`: sample-conditional and
sample-sd sample as `sample` does and also measure against the private images, which goes to private.json, never
the shareable cpsample.json.

    sample_conditional_run(out, "runs/cond", "0,1", 3.0, "cpsample", {}, SampleConfig(n=8), "runs/clf")
    sample_sd_run(out, "runs/tiny-sd", entries, "cpsample", "runs/latent-clf", SdOptions(), SampleConfig(n=4))
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from cpsample.evaluation.measures import GuardActivity
from cpsample.evaluation.nearcopy import resolve_threshold
from cpsample.provenance import write_record
from cpsample.sampling.adapters import ConditionalAdapter, LatentAdapter
from cpsample.sampling.generate import SampleConfig, generate
from cpsample.sampling.guards import NoGuard
from cpsample.sampling.outputs import save_private
from cpsample.sampling.run import SampleRun, guard_warnings, run_stats, save_outputs
from cpsample.sampling.spec import GuardSpec

# --- class-conditional ---------------------------------------------------------------------------------------


def sample_conditional_run(
    out: Path,
    model: str,
    classes: str | None,
    cfg_scale: float,
    guard: str,
    guard_options: dict,
    config: SampleConfig,
    classifier: str | None = None,
    feature_net: str | None = None,
    copy_threshold: float | None = None,
    keep_trace: bool = False,
) -> SampleRun:
    """sample-conditional: config.n images per class into out; with feature_net, how many keep their class; the
    nearest-member similarity and near-copy share (pixels) in private.json. Its stats are what it prints."""
    from cpsample.sampling.conditional import parse_classes

    copy_threshold = resolve_threshold(copy_threshold, "pixels")
    adapter = ConditionalAdapter.from_pretrained(model, config.device, config.dtype, config.scheduler)
    wanted = parse_classes(classes, adapter.class_info)
    settings = {
        "model": model,
        "classes": wanted,
        "n_per_class": config.n,
        "cfg_scale": cfg_scale,
        "guard": guard,
        "classifier": classifier,
        **guard_options,
        "scheduler": config.scheduler,
        "steps": config.steps,
        "batch_size": config.batch_size,
        "dtype": config.dtype,
        "device": config.device,
        "seed": config.seed,
        "copy_threshold": copy_threshold,
    }
    spec = GuardSpec.create(guard, **guard_options)
    result = generate(adapter.conditioned(wanted, cfg_scale), spec, replace(config, work_dir=out), classifier)
    paths = save_outputs(out, result, keep_trace, result.guard_settings.get("alpha"), config.n)
    warnings = guard_warnings(result, guard, classifier)
    stats = {**run_stats(result), **({"warnings": warnings} if warnings else {})}
    if feature_net:
        stats["class_agreement"] = class_agreement_stats(feature_net, result.images, result.labels, config.device)
    measured = member_similarity(model, result.images, copy_threshold)
    paths.update(save_private(out, "sample-conditional", settings, measured))
    write_record(out, "sample-conditional", settings, {**stats, **paths})
    return SampleRun({**stats, **measured}, warnings)


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


@dataclass
class SdOptions:
    """sample-sd's own settings beside a SampleConfig: the guard's knobs (None: the classifier's calibration, else
    the latent default), the image size (None: the pipeline's), what to measure against and the plain comparison."""

    cfg_scale: float = 7.5
    alpha: float | None = None
    scale: float | None = None
    tau: float | None = None
    height: int | None = None
    width: int | None = None
    private: Path | None = None
    copy_threshold: float | None = None
    compare_plain: bool = False


@dataclass
class PromptRuns:
    """What sample-sd prints: its prompts and, per run ('plain', then the guard's), its stats with per_prompt."""

    entries: list
    runs: dict


def sample_sd_run(
    out: Path,
    pipeline: Path,
    entries: list,
    guard: str,
    classifier: Path | None,
    options: SdOptions,
    config: SampleConfig,
    keep_trace: bool = False,
    say: Callable[[str], None] = lambda line: None,
) -> PromptRuns:
    """sample-sd: config.n images per prompt entry into out (with compare_plain, unguarded ones from the same noise
    into out/plain); per-prompt similarity to the private images in private.json. say: the knobs as run, told
    before sampling starts."""
    from cpsample.sampling.guards.cpsample import LATENT_UNCALIBRATED
    from cpsample.sampling.latent import build_latent_guard, latent_shape, load_private_images, load_sd_pipeline
    from cpsample.sampling.latent_pairing import check_latent_pairing
    from cpsample.sampling.sampler import check_sample_count

    if not entries:
        raise ValueError("give --prompt (repeatable) or --prompts-file")
    copy_threshold = resolve_threshold(options.copy_threshold, "pixels")
    if guard not in ("none", "cpsample"):
        raise ValueError(f"unknown guard {guard!r}; choose none or cpsample")
    if guard == "cpsample" and classifier is None:
        raise ValueError("--guard cpsample needs --classifier (train one with `cpsample train-latent-classifier`)")
    pipe = load_sd_pipeline(pipeline, scheduler=config.scheduler, device=config.device, dtype=config.dtype)
    height, width = options.height, options.width
    _, h, w = latent_shape(pipe, height, width)
    size = (h * pipe.vae_scale_factor, w * pipe.vae_scale_factor)
    check_sample_count(config.n * len(entries) * (2 if options.compare_plain else 1), (3, *size))
    knobs = (options.alpha, options.scale, options.tau)
    protect = build_latent_guard(classifier, pipe, *knobs, height, width) if guard == "cpsample" else None
    # alpha = 0 never guides (its scale is never used) but still records p(y=1 | x_t) per step (the paper's Fig. 7
    # comparison).
    monitor_tau = protect.tau if protect is not None else (options.tau or LATENT_UNCALIBRATED["tau"])
    monitor = build_latent_guard(classifier, pipe, 0.0, 0.0, monitor_tau, height, width) if classifier else None
    private_set = _private_set(options.private, classifier, size, load_private_images)
    if classifier is not None:
        check_latent_pairing(classifier, pipe, private_set)  # its VAE, and its own private images to measure against
    # The knobs as run (given, else the classifier's calibration, else the latent default), printed and recorded.
    ran = protect.settings() if protect is not None else {}
    settings = {
        "pipeline": str(pipeline),
        "prompts": [e.text for e in entries],
        "n_per_prompt": config.n,
        "steps": config.steps,
        "cfg_scale": options.cfg_scale,
        "scheduler": config.scheduler,
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
        "compare_plain": options.compare_plain,
        "dtype": config.dtype,
        "device": config.device,
        "seed": config.seed,
    }
    if protect is not None:
        window = "every step" if protect.max_t is None else f"t <= {protect.max_t}"
        say(
            f"CPSample: alpha {protect.alpha:g}, scale {protect.scale:g}, tau {protect.tau:g}, checks at "
            f"{window} (knobs: {protect.calibration})"
        )
    measure = _PromptMeasure(pipe, size, options.cfg_scale, entries, private_set, copy_threshold, keep_trace)
    runs = {}
    if options.compare_plain and guard != "none":
        runs["plain"] = measure.run(monitor, config, Path(out) / "plain", 0.0)
    main_guard = protect if guard == "cpsample" else monitor
    runs[guard] = measure.run(main_guard, config, Path(out), ran.get("alpha"))
    # Per-prompt similarity to the private images (and their file names) go to private.json, not cpsample.json.
    measured = {name: {"per_prompt": run.pop("per_prompt")} for name, run in runs.items() if "per_prompt" in run}
    runs[guard].update(save_private(out, "sample-sd", settings, measured))
    write_record(out, "sample-sd", settings, runs)
    return PromptRuns(entries, {name: {**run, **measured.get(name, {})} for name, run in runs.items()})


def _private_set(private, classifier, size, loader):
    from cpsample.sampling.latent_pairing import private_images_of

    if private is None and classifier is None:
        return None
    folder = private if private is not None else private_images_of(classifier)
    if size[0] != size[1]:
        raise ValueError(f"similarity to the private images needs square images, these are {size[0]}x{size[1]}")
    return loader(folder, size[0])


@dataclass
class _PromptMeasure:
    """One sample-sd run: sample every prompt, save it, and measure each prompt's images against the private set."""

    pipe: object
    size: tuple[int, int]
    cfg_scale: float
    entries: list
    private_set: object
    threshold: float
    keep_trace: bool

    def run(self, guard, config: SampleConfig, folder: Path, alpha) -> dict:
        from cpsample.sampling.latent import per_prompt_similarity

        n, (height, width) = config.n, self.size
        adapter = LatentAdapter(self.pipe, height=height, width=width).conditioned(
            [entry.text for entry in self.entries], self.cfg_scale
        )
        # Each prompt's n images in one batch from the noise of `seed`, not kept (this command does not resume).
        once = SampleConfig(n=n, steps=config.steps, batch_size=n, seed=config.seed)
        result = generate(adapter, guard or NoGuard(), once)
        summary = {
            "seconds": round(result.seconds, 2),
            "seconds_per_image": round(result.seconds / len(result.images), 3),
            **GuardActivity.of_trace(result.trace),
            **save_outputs(folder, result, self.keep_trace, alpha or None, n),
        }
        if self.private_set is not None:
            summary["per_prompt"] = per_prompt_similarity(result, self.private_set, self.threshold, self.entries)
        return summary
