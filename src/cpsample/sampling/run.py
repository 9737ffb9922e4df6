"""One sampling run into a folder: load the model's adapter, condition it, generate, save samples + trace + record.

    run = sample_run(Path("runs/s"), "runs/cond", "cpsample", {"alpha": 0.1}, SampleConfig(n=8), Conditions("0,1"))

`cpsample sample` is this one call; `sample-sd` (aliases.py), kept until `evaluate` measures latent samples, shares
its pieces: save_outputs and run_stats.
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
from cpsample.sampling.guards import guard_class
from cpsample.sampling.outputs import save_samples, save_trace
from cpsample.sampling.sampler import SampleResult
from cpsample.sampling.settings import Conditions, SampleConfig
from cpsample.sampling.spec import GuardSpec, require_classifier

logger = logging.getLogger(__name__)

# Images drawn when config.n is None: in all (unconditional), or per class or prompt.
DEFAULT_COUNTS = {"none": 64, "labels": 8, "prompts": 4}
# What each conditioning takes on `cpsample sample`'s command line (named in refusals).
CONDITION_OPTIONS = {"labels": "--classes", "prompts": "--prompt / --prompts-file"}


@dataclass
class SampleRun:
    """What a run wrote and measured (stats: also its record's results) and the warnings it has to say."""

    stats: dict
    warnings: list[str] = field(default_factory=list)


def sample_run(
    out: Path,
    model: str,
    guard: str = "none",
    guard_options: dict | None = None,
    config: SampleConfig | None = None,
    conditions: Conditions | None = None,
    classifier: str | None = None,
    keep_trace: bool = False,
) -> SampleRun:
    """Sample any model kind into out (grid.png, samples.npz, cpsample.json, trace files with keep_trace), resuming
    the batches out already holds. config.n None: DEFAULT_COUNTS for the model's conditioning; config.scheduler None:
    the adapter's own. classifier: required by a guard that uses one ('bundled' only for the bundled model)."""
    config, guard_options = config or SampleConfig(), guard_options or {}
    adapter = load_adapter(model, device=config.device, dtype=config.dtype, scheduler=config.scheduler)
    adapter = condition_adapter(adapter, model, conditions or Conditions())
    unconditional = adapter.conditioning == "none"
    n = config.n or DEFAULT_COUNTS[adapter.conditioning]
    config = replace(config, n=n, scheduler=config.scheduler or adapter.scheduler_name, work_dir=out)
    require_classifier(guard, classifier)
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
    }
    result = generate(adapter, GuardSpec.create(guard, **guard_options), config, classifier)
    paths = save_outputs(out, result, keep_trace, result.guard_settings.get("alpha"), None if unconditional else n)
    warnings = guard_warnings(result, guard, classifier)
    stats = {**run_stats(result), **paths, **({"warnings": warnings} if warnings else {})}
    write_record(out, "sample", {**settings, **guard_options, "guard_settings": result.guard_settings}, stats)
    return SampleRun(stats, warnings)


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


def condition_adapter(adapter: ModelAdapter, model: str, conditions: Conditions) -> ModelAdapter:
    """The adapter with the class labels or prompts given (all classes by default), each refused where the model
    takes no such thing."""
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
    if adapter.conditioning == "none":
        if conditions.cfg_scale is not None:
            raise ValueError(f"--cfg-scale applies to conditional models; {model} is {adapter.description}")
        return adapter
    if adapter.conditioning == "labels":
        from cpsample.sampling.conditional import parse_classes

        return adapter.conditioned(parse_classes(conditions.classes, adapter.class_info), conditions.cfg_scale)
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
    return adapter.conditioned([entry.text for entry in entries], conditions.cfg_scale)


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
