"""One sampling run into a folder: load the model's adapter, condition it, generate, save samples + trace + record;
with a Comparison, plain sampling from the same noise beside it (OUT/plain) and, on a Stable Diffusion pipeline, each
prompt's similarity to the private images (private.json, never the shareable cpsample.json).

    run = sample_run(Path("runs/s"), "runs/cond", "cpsample", {"alpha": 0.1}, SampleConfig(n=8), Conditions("0,1"))

`cpsample sample` is this one call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from cpsample.data.captions import MODEL_PROMPTS
from cpsample.evaluation.honesty import protection_warnings
from cpsample.evaluation.measures import GuardActivity
from cpsample.provenance import write_record
from cpsample.sampling.adapters import ADAPTERS, ModelAdapter, load_adapter
from cpsample.sampling.generate import generate
from cpsample.sampling.guards import CPSampleGuard, NoGuard, guard_class, is_plain
from cpsample.sampling.outputs import save_private, save_samples, save_trace
from cpsample.sampling.sampler import SampleResult
from cpsample.sampling.settings import Comparison, Conditions, SampleConfig
from cpsample.sampling.spec import GuardSpec, require_classifier

logger = logging.getLogger(__name__)

# Images drawn when config.n is None: in all (unconditional), or per class or prompt.
DEFAULT_COUNTS = {"none": 64, "labels": 8, "prompts": 4}
# What each conditioning takes on `cpsample sample`'s command line (named in refusals).
CONDITION_OPTIONS = {"labels": "--classes", "prompts": "--prompt / --prompts-file"}


@dataclass
class SampleRun:
    """What a run wrote and measured (stats: also its record's results; with compare_plain, plain's under "plain"),
    each prompt's similarity to the private images where it was measured (per run: the guard's, then "plain"), and
    the warnings it has to say."""

    stats: dict
    warnings: list[str] = field(default_factory=list)
    per_prompt: dict[str, dict] = field(default_factory=dict)  # run name -> {"per_prompt": one row per prompt}
    prompts: list = field(default_factory=list)  # PromptEntry of each prompt sampled (its text and role)

    def summary(self, out) -> str:
        """One line: the run's cost, how often the guard acted, where the images are."""
        stats = self.stats
        guided, ever = stats.get("share_of_steps_guided"), stats.get("share_of_samples_ever_guided")
        acted = "" if guided is None else f"; the guard acted on {guided:.1%} of steps"
        acted += "" if ever is None else f" ({ever:.0%} of samples at least once)"
        return f"sampled in {stats['seconds']:.1f}s ({stats['denoiser_calls']} denoiser calls){acted}; saved to {out}"


def sample_run(
    out: Path,
    model: str,
    guard: str = "none",
    guard_options: dict | None = None,
    config: SampleConfig | None = None,
    conditions: Conditions | None = None,
    classifier: str | None = None,
    keep_trace: bool = False,
    comparison: Comparison | None = None,
) -> SampleRun:
    """Sample any model kind into out (grid.png, samples.npz, cpsample.json, trace files with keep_trace), resuming
    the batches out already holds. config.n None: DEFAULT_COUNTS for the model's conditioning; config.scheduler None:
    the adapter's own. classifier: required by a guard that uses one ('bundled' only for the bundled model)."""
    config, guard_options, comparison = config or SampleConfig(), guard_options or {}, comparison or Comparison()
    adapter = load_adapter(model, device=config.device, dtype=config.dtype, scheduler=config.scheduler)
    adapter, entries = condition_adapter(adapter, model, conditions or Conditions())
    unconditional = adapter.conditioning == "none"
    n = config.n or DEFAULT_COUNTS[adapter.conditioning]
    config = replace(config, n=n, scheduler=config.scheduler or adapter.scheduler_name, work_dir=out)
    require_classifier(guard, classifier)
    spec = GuardSpec.create(guard, **guard_options)
    private = private_images(adapter, comparison, classifier)
    settings = {
        "model": model,
        "n": n,
        "steps": config.steps,
        "scheduler": config.scheduler,
        "guard": guard,
        "classifier": classifier,
        "batch_size": config.batch_size,
        "dtype": config.dtype,
        "device": config.device,
        "seed": config.seed,
        **condition_settings(adapter),
        **({"compare_plain": True} if comparison.compare_plain else {}),
        **({"private": private.images.source, "copy_threshold": private.threshold} if private else {}),
    }
    knobs_from = knobs_source(spec, classifier)
    runs = {}
    if comparison.compare_plain and not is_plain(guard):  # first, as the guarded run's note on its knobs ends the log
        watch = watching(spec, classifier)
        runs["plain"] = _one_run(adapter, watch, replace(config, work_dir=Path(out) / "plain"), classifier, keep_trace)
    runs[guard] = _one_run(adapter, spec, config, classifier, keep_trace, unconditional, True, knobs_from)
    result = runs[guard].result
    measured = {name: run.per_prompt(private, entries) for name, run in runs.items()} if private else {}
    stats = {**runs[guard].stats, **save_private(out, "sample", settings, measured)}
    if "plain" in runs:
        stats["plain"] = runs["plain"].stats
    warnings = guard_warnings(result, guard, classifier)
    stats |= {"warnings": warnings} if warnings else {}
    recorded = {"knobs_from": knobs_from} if spec.options.calibrated else {}
    record = {**settings, **guard_options, "guard_settings": result.guard_settings, **recorded}
    write_record(out, "sample", record, stats)
    return SampleRun(stats, warnings, measured, entries)


@dataclass
class _Run:
    """One generate() into a folder: its result and what was saved and measured."""

    result: SampleResult
    stats: dict

    def per_prompt(self, private, entries) -> dict:
        from cpsample.sampling.latent import per_prompt_similarity

        return {"per_prompt": per_prompt_similarity(self.result, private.images, private.threshold, entries)}


def _one_run(
    adapter, spec, config, classifier, keep_trace, unconditional=False, say_knobs=False, knobs_from=None
) -> _Run:
    """generate() into config.work_dir; say_knobs: say the guard's knobs as run (and knobs_from, where from)."""
    result = generate(adapter, spec, config, classifier)
    if say_knobs and result.guard_settings:
        logger.info(knobs_said(result.guard_settings, knobs_from))
    alpha = result.guard_settings.get("alpha") or None
    paths = save_outputs(config.work_dir, result, keep_trace, alpha, None if unconditional else config.n)
    return _Run(result, {**run_stats(result), **paths})


def watching(spec: GuardSpec, classifier) -> GuardSpec:
    """Plain sampling's stand-in for the comparison: with a CPSample classifier, CPSample at alpha 0 (it never acts
    but records the classifier's confidence per step, as the paper's Fig. 7 compares); else no guard."""
    if classifier is None or not guard_class(spec.name).uses_classifier:
        return GuardSpec.create(NoGuard.name)
    tau = getattr(spec.options, "tau", None)
    return GuardSpec.create(CPSampleGuard.name, alpha=0.0, scale=0.0, **({"tau": tau} if tau is not None else {}))


def knobs_source(spec: GuardSpec, classifier) -> str | None:
    """Where a calibrated guard's knobs came from (its calibration.json, the uncalibrated defaults, or given)."""
    from cpsample.sampling.spec import classifier_folder

    if not spec.options.calibrated or classifier is None:
        return None
    return spec.resolved(classifier_folder(classifier)).source


def knobs_said(settings: dict, source: str | None) -> str:
    """The guard's knobs as run, in one line: "cpsample: alpha 0.5, scale 2000, tau 0.001, checks at every step
    (knobs: uncalibrated defaults)"; a staged guard's stages in brackets."""
    return f"{settings.get('guard')}: {_knobs(settings)}" + (f" (knobs: {source})" if source else "")


def _knobs(settings: dict) -> str:
    said = []
    for name, value in settings.items():
        if name in ("guard", "max_t"):
            continue
        if isinstance(value, dict):
            value = f"({_knobs(value)})"
        said.append(f"{name} {format(value, 'g') if isinstance(value, float) else value}")
    if "max_t" in settings:
        said.append("checks at " + ("every step" if settings["max_t"] is None else f"t <= {settings['max_t']}"))
    return ", ".join(said)


@dataclass(frozen=True)
class PrivateImages:
    images: object  # ImageSet (its source: where they came from)
    threshold: float


def private_images(adapter: ModelAdapter, comparison: Comparison, classifier) -> PrivateImages | None:
    """The private images a Stable Diffusion pipeline's prompts are measured against: --private, else the latent
    classifier's (checked to be its images and VAE's); None for other model kinds or where neither is known."""
    from cpsample.evaluation.nearcopy import resolve_threshold

    if adapter.conditioning != "prompts":
        if comparison.private is not None:
            raise ValueError(f"--private applies to a Stable Diffusion pipeline; this is {adapter.description}")
        return None
    if comparison.private is None and classifier is None:
        return None
    from cpsample.sampling.latent import load_private_images
    from cpsample.sampling.latent_pairing import check_latent_pairing, private_images_of

    _, height, width = adapter.image_shape
    if height != width:
        raise ValueError(f"similarity to the private images needs square images, these are {height}x{width}")
    folder = comparison.private if comparison.private is not None else private_images_of(classifier)
    images = load_private_images(folder, height)
    if classifier is not None:
        check_latent_pairing(classifier, adapter.pipe, images)  # its VAE, and its own private images
    return PrivateImages(images, resolve_threshold(comparison.copy_threshold, "pixels"))


def run_stats(result: SampleResult) -> dict:
    """Time, denoiser calls and how often the guard acted (GuardActivity)."""
    return {
        "seconds": round(result.seconds, 2),
        "denoiser_calls": result.denoiser_calls,
        **GuardActivity.of_trace(result.trace),
    }


def save_outputs(folder: Path, result: SampleResult, keep_trace: bool, alpha: float | None, columns=None) -> dict:
    """samples.npz + grid.png (one row of `columns` per class or prompt; None: the unconditional grid) and, with
    keep_trace, the trace files; returns the paths written."""
    rows = {} if columns is None else {"grid_count": None, "columns": columns}
    return {
        **save_samples(folder, result.images, **rows, **sample_arrays(result)),
        **save_trace(folder, result.trace, result.timesteps, alpha, keep=keep_trace),
    }


def guard_warnings(result: SampleResult, guard: str, classifier) -> list[str]:
    """protection_warnings for a guard given by name: its classifier is checked only where the guard uses one."""
    return protection_warnings(result.trace, guard, classifier if guard_class(guard).uses_classifier else None)


def condition_adapter(adapter: ModelAdapter, model: str, conditions: Conditions) -> tuple[ModelAdapter, list]:
    """The adapter with the class labels or prompts given (all classes by default), each refused where the model
    takes no such thing; and the prompts as PromptEntry (their roles: 'original' / 'modified' of a caption pair)."""
    given = {
        "labels": conditions.classes is not None,
        "prompts": bool(conditions.prompts) or conditions.prompts_file is not None,
    }
    for conditioning, was_given in given.items():
        if was_given and conditioning != adapter.conditioning:
            takers = " or ".join(kind.description for kind in ADAPTERS.values() if kind.conditioning == conditioning)
            raise ValueError(
                f"{CONDITION_OPTIONS[conditioning]} applies to {takers}; {model} is {adapter.description}"
            )
    sized = conditions.height is not None or conditions.width is not None
    if sized and adapter.conditioning != "prompts":
        raise ValueError(f"--height / --width apply to a Stable Diffusion pipeline; {model} is {adapter.description}")
    if adapter.conditioning == "none":
        if conditions.cfg_scale is not None:
            raise ValueError(f"--cfg-scale applies to conditional models; {model} is {adapter.description}")
        return adapter, []
    if adapter.conditioning == "labels":
        from cpsample.sampling.conditional import parse_classes

        classes = parse_classes(conditions.classes, adapter.class_info)
        return adapter.conditioned(classes, conditions.cfg_scale), []
    prompts_file = conditions.prompts_file
    own = not given["prompts"] and (prompts_file := own_prompts(model)) is not None
    entries = prompt_entries(conditions.prompts, prompts_file)
    if own:  # -n counts per prompt: say what that adds up to
        logger.info(
            "no --prompt given: sampling the %d captions %s was trained on (%s); -n images per caption",
            len(entries),
            model,
            prompts_file,
        )
    if sized:
        adapter = replace(adapter, height=conditions.height, width=conditions.width)
    return adapter.conditioned([entry.text for entry in entries], conditions.cfg_scale), entries


def own_prompts(model: str) -> Path | None:
    """A `train-t2i` model's prompts.txt: the captions it was trained on, one per line."""
    from cpsample.models.bundle import resolve_model_dir

    path = resolve_model_dir(model, "denoiser") / MODEL_PROMPTS
    return path if path.is_file() else None


def prompt_entries(prompts, prompts_file):
    """--prompt (repeatable) then the lines of --prompts-file."""
    from cpsample.sampling.latent import PromptEntry, read_prompts

    entries = [PromptEntry(text, "prompt") for text in (prompts or [])]
    entries += read_prompts(prompts_file) if prompts_file else []
    if not entries:
        raise ValueError("give --prompt (repeatable) or --prompts-file")
    return entries


def condition_settings(adapter: ModelAdapter) -> dict:
    """What a run record says about the conditions sampled (nothing for an unconditional model)."""
    if adapter.conditioning == "labels":
        return {"classes": list(adapter.classes), "cfg_scale": adapter.guidance_scale}
    if adapter.conditioning == "prompts":
        return {"prompts": list(adapter.prompts), "cfg_scale": adapter.guidance_scale}
    return {}


def sample_arrays(result: SampleResult) -> dict:
    """The arrays samples.npz holds beside the images where the model kind has them: labels, prompt_index, latents."""
    arrays = {
        "labels": result.labels,
        "prompt_index": result.prompt_index,
        "prompts": np.asarray(result.prompts, dtype=str) if result.prompts else None,  # (what prompt_index indexes)
        "latents": None if result.latents is None else result.latents.numpy(),
    }
    return {name: array for name, array in arrays.items() if array is not None}
