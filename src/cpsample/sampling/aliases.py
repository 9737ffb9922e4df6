"""The run behind `cpsample sample-sd`, kept beside `cpsample sample` until `evaluate` measures latent samples:
it samples as `sample` does and also measures each prompt against the private images, which goes to private.json,
never the shareable cpsample.json.

    sample_sd_run(out, "runs/tiny-sd", entries, "cpsample", "runs/latent-clf", SdOptions(), SampleConfig(n=4))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cpsample.evaluation.measures import GuardActivity
from cpsample.evaluation.nearcopy import resolve_threshold
from cpsample.provenance import write_record
from cpsample.sampling.adapters import LatentAdapter
from cpsample.sampling.generate import SampleConfig, generate
from cpsample.sampling.guards import NoGuard
from cpsample.sampling.outputs import save_private
from cpsample.sampling.run import save_outputs
from cpsample.sampling.settings import SdOptions


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
