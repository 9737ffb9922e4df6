"""generate(adapter, spec, config): draw images from any model kind with any guard, resumably.

    adapter = load_adapter("bundled")                                 # or a conditional model, an SD pipeline
    result = generate(adapter, GuardSpec.create("cpsample", alpha=0.1), SampleConfig(n=64, work_dir=Path("out")))

The adapter (sampling/adapters/) gives the denoiser, the scheduler, the shapes and the decoder; this is the one run
around the one loop (`sampler.sample_batch`): the guard built and checked for the model, the batches planned, those
already in config.work_dir read back (a killed run resumes; other settings are refused unless overwrite), the rest
drawn and kept there, and one SampleResult.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch

from cpsample.sampling.adapters import ModelAdapter, load_adapter
from cpsample.sampling.checks import check_device
from cpsample.sampling.guards import Guard, GuardContext
from cpsample.sampling.sampler import (
    DTYPES,
    Batch,
    DrawnBatch,
    SampleResult,
    batch_settings_file,
    check_sample_count,
    draw_batches,
    merged_result,
    sample_batch,
    sampling_device,
    sampling_key,
)
from cpsample.sampling.settings import SampleConfig
from cpsample.sampling.spec import GuardSpec, resolve_guard


def generate(
    adapter: ModelAdapter | str | Path,
    spec: str | GuardSpec | Guard = "none",
    config: SampleConfig | None = None,
    classifier=None,
) -> SampleResult:
    """Sample config.n images (per condition) from the adapter's model, guarded by spec: a guard's name, a GuardSpec,
    or a ready Guard. classifier: what the guard is built with (a folder, "bundled", a Classifier; None: the guard's
    default). An adapter given as a folder or bundled name is loaded with load_adapter."""
    config = config or SampleConfig()
    if not isinstance(adapter, ModelAdapter):
        adapter = load_adapter(adapter, config.device or "cpu", config.dtype or "float32", config.scheduler)
    dtype_name = config.dtype or adapter.dtype
    dtype = torch_dtype(dtype_name)
    device = config.device or str(adapter.device)
    check_device(device)
    check_config(config)
    conditions = adapter.conditions_per_image(config.n)
    check_sample_count(config.n if conditions is None else len(conditions), adapter.image_shape)
    guard = adapter.guard(spec, classifier, device)
    scheduler = config.scheduler or adapter.scheduler_name
    first = adapter.scheduler(scheduler, config.steps)  # a bad name fails here, before any sampling
    timesteps = first.timesteps.cpu().numpy().copy()
    if config.work_dir is not None:  # the key hashes the weights before any dtype cast
        key = sampling_key(
            adapter.network,
            guard,
            first,
            **adapter.key_settings(config.n, conditions),
            steps=config.steps,
            scheduler=scheduler,
            dtype=dtype_name,
            seed=config.seed,
            batch_size=config.batch_size,
        )
        batch_settings_file(config.work_dir, key, config.overwrite)
    adapter.cast(dtype)
    guard.to(torch.device(device), dtype)
    loop_device = sampling_device(device, config.work_dir)
    draw = batch_drawer(adapter, guard, conditions, scheduler, config.steps, loop_device, dtype)
    started = time.time()
    plan = adapter.batches(config.n, config.batch_size, config.seed)
    drawn, fresh = draw_batches(plan, draw, config.work_dir, config.progress, f"sampling ({guard.name})")
    calls = fresh * len(timesteps) * adapter.calls_per_image_step
    result = merged_result(drawn, timesteps, calls, time.time() - started, guard.settings())
    return replace(result, **adapter.result_fields(config.n, conditions))


def batch_drawer(adapter: ModelAdapter, guard: Guard, conditions, scheduler: str, steps: int, device, dtype):
    """draw(batch) for draw_batches: the one loop from the batch's noise with its images' conditions, decoded."""

    def draw(batch: Batch) -> DrawnBatch:
        mine = None if conditions is None else conditions[batch.start : batch.start + batch.size]
        x, trace = sample_batch(
            adapter.denoiser(mine),
            adapter.scheduler(scheduler, steps),
            (batch.size, *adapter.sample_shape),
            guard,
            batch.generator(),
            device,
            dtype,
            raw=True,
        )
        return DrawnBatch(adapter.decode(x), trace, x.float().cpu() if adapter.keeps_latents else None)

    return draw


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def check_config(config: SampleConfig) -> None:
    for name in ("n", "steps", "batch_size"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be positive, got {getattr(config, name)}")


def as_spec(guard: str | GuardSpec | Guard, **options) -> GuardSpec | Guard:
    """A guard's name with its options as a GuardSpec; a GuardSpec or ready Guard as it is (options beside it are
    refused, as resolve_guard refuses them)."""
    if isinstance(guard, str):
        return GuardSpec.create(guard, **options)
    if any(value is not None for value in options.values()):
        resolve_guard(guard, GuardContext(), **options)  # raises: the options belong to a guard given by name
    return guard
