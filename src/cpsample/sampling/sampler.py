"""The denoising loop shared by every strategy and scheduler.

Any diffusers scheduler for an eps-predicting model works: at each step the denoiser's eps goes through the
guard (which may change it) and then into `scheduler.step`. Batch b starts from noise seeded by (seed, b), so
plain and guarded runs with the same seed start from the same x_T, and finished batches are written to disk
so a killed run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from tqdm.auto import tqdm

from cpsample.models.calls import in_cpu_calls
from cpsample.sampling.guards import Guard, NoGuard
from cpsample.sampling.guards.base import CFGPrediction, guided_eps, run_noise_levels

SCHEDULERS = ("ddim", "ddpm", "dpm++")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# denoise(x_t, t) -> eps, or a CFGPrediction for conditional models sampled with classifier-free guidance.
Denoise = Callable[[torch.Tensor, torch.Tensor], "torch.Tensor | CFGPrediction"]


# Samplers must step with the eps they were given. diffusers' DDPM/DDIM default to clamping their x0 estimate to
# [-1, 1] while stepping with the unclamped eps, which biases every sample (bundled model, plain: FD_digitnet 44 ->
# 5.5 without it) and breaks any guidance that changes eps (CPSample FD 223 -> 9.3); see bench/README.md.
CONSISTENT_STEPPING = {"clip_sample": False, "thresholding": False}


def without_x0_clipping(config) -> dict:
    """A scheduler config that steps consistently with the eps it is given: no x0 clipping, no thresholding."""
    return {**dict(config), **CONSISTENT_STEPPING}


def make_scheduler(name: str, schedule_config: dict, steps: int):
    """A sampling scheduler sharing the training noise schedule; set to `steps` denoising steps.

    Clipping and thresholding of the x0 estimate are switched off, whatever the stored config says (see above).
    """
    config = without_x0_clipping(schedule_config)
    if name == "ddim":
        scheduler = DDIMScheduler.from_config(config)
    elif name == "ddpm":
        scheduler = DDPMScheduler.from_config(config)
    elif name == "dpm++":
        scheduler = DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)
    else:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    scheduler.set_timesteps(steps)
    return scheduler


@dataclass
class SampleResult:
    """What every sampling run gives, whatever the model kind; the last fields only where the kind has them."""

    images: torch.Tensor  # (N, C, H, W) float32 in [-1, 1] (decoded, for a latent model)
    trace: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (steps, N)
    timesteps: np.ndarray | None = None
    denoiser_calls: int = 0
    seconds: float = 0.0
    guard_settings: dict = field(default_factory=dict)  # the guard's knobs as used (calibrated ones resolved)
    labels: np.ndarray | None = None  # (N,) class of each image (class-conditional models)
    prompts: list[str] | None = None  # the prompts, in order (text-to-image models)
    prompt_index: np.ndarray | None = None  # (N,) which prompt each image came from
    latents: torch.Tensor | None = None  # (N, c, h, w) final latents, unscaled, as the UNet sees them (latent models)


@dataclass(frozen=True)
class Batch:
    """One batch of a run: images start .. start + size - 1 of the result, drawn from the noise of noise_seed and
    kept in work_dir as batch number `index`."""

    index: int
    start: int
    size: int
    noise_seed: int

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.noise_seed)


def flat_batches(n: int, batch_size: int, seed: int, stream: int = 0) -> list[Batch]:
    """n images in batches of batch_size, batch b from the noise of batch_generator(seed, b, stream)."""
    return [
        Batch(index, start, min(batch_size, n - start), seed * 100_003 + stream + index)
        for index, start in enumerate(range(0, n, batch_size))
    ]


@dataclass
class DrawnBatch:
    """A finished batch: its images (float32, CPU, in [-1, 1]), the guard's trace and, for latent models, the final
    latents the images were decoded from."""

    images: torch.Tensor
    trace: dict[str, np.ndarray]
    latents: torch.Tensor | None = None


def unet_denoiser(unet, class_labels: torch.Tensor | None = None) -> Denoise:
    def call(x, t, labels):
        return unet(x, t, class_labels=labels).sample

    def denoise(x, t):
        return in_cpu_calls(call, x, t, class_labels)

    return denoise


def cfg_denoiser(unet, class_labels: torch.Tensor, guidance_scale: float, null_label: int) -> Denoise:
    """Class-conditional UNet with classifier-free guidance: one batched call for the labelled and the null-label
    half."""

    def denoise(x, t):
        labels = torch.cat([class_labels, torch.full_like(class_labels, null_label)]).to(x.device)
        eps = unet(torch.cat([x, x]), torch.cat([t, t]), class_labels=labels).sample
        cond, uncond = eps.chunk(2)
        return CFGPrediction(cond, uncond, guidance_scale)

    return denoise


def sample_batch(
    denoise: Denoise,
    scheduler,
    shape: tuple,
    guard: Guard,
    generator: torch.Generator,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    raw: bool = False,
    start: tuple[int, torch.Tensor] | None = None,
    states: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict]:
    """Run one batch from x_T to x_0: the one denoising loop (pixel, class-conditional and latent models, SIDE).

    Returns images in [-1, 1] (float32, CPU), or with raw=True the final x as it is (latents), and the guard's
    trace. Calibration's probes (calibration/seek.py) use the last two: `states` receives x before each step (on the
    CPU), and `start` = (step index, x there) begins part-way along such a kept trajectory instead of at x_T (for a
    deterministic scheduler: the steps skipped drew nothing from the generator); the trace then says the guard did
    not act at the skipped steps."""
    guard.reset()
    guard.begin_run(run_noise_levels(scheduler))
    first, x = start if start is not None else (0, None)
    if x is None:
        x = torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)
        x = x * scheduler.init_noise_sigma
    else:
        x = x.to(device=device, dtype=dtype)
    alphas_cumprod = scheduler.alphas_cumprod.to(device)
    # Stochastic schedulers (DDPM) take our generator; deterministic ones such as PNDM have no such argument.
    step_options = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    for index, t in enumerate(scheduler.timesteps):
        if index < first:
            continue
        if states is not None:
            states.append(x.detach().float().cpu())
        guard.begin_step(index, len(scheduler.timesteps))
        t_batch = torch.full((shape[0],), int(t), device=device, dtype=torch.long)
        model_input = scheduler.scale_model_input(x, t)
        with torch.no_grad():
            prediction = denoise(model_input, t_batch)
        eps = guided_eps(guard, prediction, model_input, t_batch, alphas_cumprod[int(t)].float())
        x = scheduler.step(eps, t, x, **step_options).prev_sample
        check_finite_step(x, index, len(scheduler.timesteps), t, guard)
    images = x if raw else x.float().clamp(-1.0, 1.0).cpu()
    trace = {key: _unacted_before(key, np.stack(values), first) for key, values in guard.trace.items()}
    return images, trace


def _unacted_before(key: str, rows: np.ndarray, skipped: int) -> np.ndarray:
    """A trace (steps, N) with `skipped` rows in front for steps not run here: 0 for "fired" (what the measures read
    as guided), NaN for anything else (not checked)."""
    if not skipped:
        return rows
    filler = np.full((skipped, *rows.shape[1:]), 0.0 if key == "fired" else np.nan, rows.dtype)
    return np.concatenate([filler, rows])


def batch_generator(seed: int, index: int, stream: int = 0) -> torch.Generator:
    """The noise of batch `index` of a run: one formula for every sampler, so equal seeds mean equal x_T. A separate
    `stream` gives a second, independent set of batches from the same seed (SIDE's guided samples)."""
    return Batch(index, 0, 0, seed * 100_003 + stream + index).generator()


def check_finite_step(x: torch.Tensor, index: int, count: int, t, guard: Guard) -> None:
    """NaN/inf never recovers: stop at the step it appears instead of ending in a silent black or NaN result."""
    if not bool(torch.isfinite(x).all()):
        raise ValueError(
            f"sampling produced NaN or infinite values at step {index + 1} of {count} (t={int(t)}, "
            f"guard {guard.name}); lower the guidance scale, or use --dtype float32"
        )


def sample(
    denoise: Denoise | None,
    scheduler_factory: Callable[[], object],
    n: int,
    image_shape: tuple,
    guard: Guard | None = None,
    batch_size: int = 250,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    work_dir: Path | None = None,
    progress: bool = True,
    batch_denoiser: Callable[[int, int], Denoise] | None = None,
    calls_per_image_step: int = 1,
) -> SampleResult:
    """Draw n images; with work_dir, each finished batch is kept there and reused on a rerun with the same settings.

    batch_denoiser(start, size), when given, builds the denoiser of each batch (e.g. CFG with that batch's class
    labels) instead of the shared `denoise`; calls_per_image_step counts denoiser evaluations (2 under CFG).
    `cpsample.sampling.generate.generate` runs any model kind through the same batches (draw_batches).
    """
    guard = guard or NoGuard()
    device = sampling_device(device, work_dir)

    def draw(batch: Batch) -> DrawnBatch:
        batch_denoise = denoise if batch_denoiser is None else batch_denoiser(batch.start, batch.size)
        shape = (batch.size, *image_shape)
        return DrawnBatch(
            *sample_batch(batch_denoise, scheduler_factory(), shape, guard, batch.generator(), device, dtype)
        )

    started = time.time()
    drawn, fresh = draw_batches(
        flat_batches(n, batch_size, seed), draw, work_dir, progress, f"sampling ({guard.name})"
    )
    timesteps = scheduler_factory().timesteps.cpu().numpy()
    calls = fresh * len(timesteps) * calls_per_image_step
    return merged_result(drawn, timesteps, calls, time.time() - started, guard.settings())


def sampling_device(device: str | torch.device, work_dir: Path | None) -> torch.device:
    """The device to sample on: the one asked for, or under `accelerate launch` each process's own (they gather
    their batches through the shared work_dir)."""
    from accelerate import PartialState

    state = PartialState()
    if state.num_processes > 1 and work_dir is None:
        raise ValueError("sampling on several processes needs a shared work_dir (the --out folder) to gather batches")
    return torch.device(device) if state.num_processes == 1 else state.device


def draw_batches(
    plan: list[Batch],
    draw: Callable[[Batch], DrawnBatch],
    work_dir: Path | None = None,
    progress: bool = True,
    desc: str = "sampling",
) -> tuple[list[DrawnBatch], int]:
    """(every batch of the plan, how many images were drawn now): batches kept in work_dir are read back, the others
    drawn with draw(batch) and kept there.

    Under `accelerate launch` every process draws its share of the batches (batch b goes to process b mod world
    size) into the shared work_dir, and all processes then read back the full set."""
    from accelerate import PartialState

    state = PartialState()
    drawn: list[DrawnBatch | None] = [None] * len(plan)
    fresh = 0
    bar = tqdm(
        total=sum(batch.size for batch in plan),
        desc=desc,
        disable=not (progress and state.is_local_main_process),
        dynamic_ncols=True,
        unit="img",
    )
    for position, batch in enumerate(plan):
        if batch.index % state.num_processes != state.process_index:
            continue
        drawn[position] = _load_batch(work_dir, batch.index, batch.size)
        if drawn[position] is None:
            drawn[position] = draw(batch)
            fresh += batch.size
            _save_batch(work_dir, batch.index, drawn[position])
        bar.update(batch.size * state.num_processes)
    bar.close()
    if state.num_processes > 1:
        state.wait_for_everyone()
        for position, batch in enumerate(plan):
            if drawn[position] is None:
                drawn[position] = _load_batch(work_dir, batch.index, batch.size)
    return drawn, fresh


def merged_result(
    drawn: list[DrawnBatch], timesteps, calls: int, seconds: float, guard_settings: dict
) -> SampleResult:
    """One SampleResult of a run's batches, in plan order (traces joined along the image axis)."""
    traces = [batch.trace for batch in drawn]
    merged = {key: np.concatenate([t[key] for t in traces], axis=1) for key in (traces[0] if traces else {})}
    latents = None if not drawn or drawn[0].latents is None else torch.cat([batch.latents for batch in drawn])
    images = torch.cat([batch.images for batch in drawn])
    return SampleResult(images, merged, timesteps, calls, seconds, guard_settings, latents=latents)


def check_sample_count(n: int, image_shape: tuple) -> None:
    """Refuse, before any sampling, a count whose images could never be held: the result is kept in memory (float32,
    plus its uint8 copy and the saved archive), so n images need about n * C * H * W * 9 bytes."""
    import os

    pixels = 1
    for size in image_shape:
        pixels *= int(size)
    needed = int(n) * pixels * 9
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = 2**40
    if needed > memory:
        shape = "x".join(str(size) for size in image_shape)
        raise ValueError(
            f"-n {n}: {n:,} images of {shape} need about {needed / 2**30:,.0f} GiB, more than this machine's "
            f"{memory / 2**30:,.0f} GiB of memory; sample fewer (or several runs with other --seed)"
        )


def _batch_path(work_dir: Path, index: int) -> Path:
    return Path(work_dir) / "batches" / f"batch_{index:05d}.npz"


def _save_batch(work_dir, index: int, batch: DrawnBatch) -> None:
    if work_dir is None:
        return
    path = _batch_path(work_dir, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    latents = {} if batch.latents is None else {"latents": batch.latents.numpy()}
    np.savez(tmp, images=batch.images.numpy(), **latents, **{f"trace_{k}": v for k, v in batch.trace.items()})
    tmp.replace(path)


def _load_batch(work_dir, index: int, size: int) -> DrawnBatch | None:
    path = None if work_dir is None else _batch_path(work_dir, index)
    if path is None or not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if len(data["images"]) != size:
                return None
            trace = {k[len("trace_") :]: data[k] for k in data.files if k.startswith("trace_")}
            batch = data["images"]
            latents = data["latents"] if "latents" in data.files else None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"{path}: cached batch is damaged ({type(error).__name__}); delete it and rerun to sample it again"
        ) from None
    for array in (batch, latents):
        if array is not None and (not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all()):
            raise ValueError(
                f"{path}: cached batch holds NaN, infinite or non-float values; delete it (or rerun with "
                "--overwrite) to sample it again"
            )
    return DrawnBatch(torch.from_numpy(batch), trace, None if latents is None else torch.from_numpy(latents))


def weights_digest(module: torch.nn.Module, dtype: torch.dtype | None = None) -> str:
    """sha256 of a model's weights (names, dtypes, shapes, values): equal digests mean the same model.

    dtype: the digest of the model as `module.to(dtype)` would hold it (floating tensors cast), without moving it."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensor = tensor.contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def guard_digest(guard: Guard) -> str:
    """sha256 of every model and tensor a guard holds (e.g. CPSample's classifier), nested guards included."""
    digest = hashlib.sha256()
    for name, value in sorted(vars(guard).items()):
        if isinstance(value, torch.nn.Module):
            digest.update(f"{name}={weights_digest(value)};".encode())
        elif torch.is_tensor(value):
            digest.update(f"{name}=".encode() + value.detach().float().cpu().numpy().tobytes())
        elif isinstance(value, (list, tuple)) and value and all(isinstance(item, Guard) for item in value):
            digest.update(f"{name}=[{','.join(guard_digest(item) for item in value)}];".encode())
    return digest.hexdigest()


def sampling_key(unet: torch.nn.Module, guard: Guard, built_scheduler, **settings) -> dict:
    """Everything a cached batch depends on: the model's and the guard's weights, every guard option, the
    scheduler's full configuration, plus the caller's settings (steps, dtype, seed, batch size, labels ...)."""
    key = {
        **settings,
        "model_sha256": weights_digest(unet),
        "guard_sha256": guard_digest(guard),
        "scheduler_config": {k: v for k, v in dict(built_scheduler.config).items() if not k.startswith("_")},
        "guard_settings": guard.settings(),
    }
    return json.loads(json.dumps(key, sort_keys=True, default=str))  # as it reads back from disk


def batch_settings_file(work_dir: Path, settings: dict, overwrite: bool = False) -> None:
    """Cached batches are valid only for the same settings (see sampling_key). Batches made with other settings
    are refused, or cleared with overwrite=True, so a rerun never mixes or reuses another run's images."""
    work_dir = Path(work_dir)
    path = work_dir / "batches" / "settings.json"
    settings = json.loads(json.dumps(settings, sort_keys=True, default=str))
    stored = _read_settings(path)
    if stored is not None and stored != settings:
        if not overwrite:
            changed = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
            raise FileExistsError(
                f"{work_dir} holds batches sampled with other settings (changed: {', '.join(changed)}); "
                "pass --overwrite to replace them, or pick a new --out"
            )
        for stale in (work_dir / "batches").glob("batch_*.npz"):
            stale.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(settings, sort_keys=True))
    tmp.replace(path)


def _read_settings(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return {"unreadable": str(path)}  # differs from any real settings: treated as another run's batches
