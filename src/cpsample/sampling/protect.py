"""CPSample as a drop-in for diffusers: `protect(pipe, classifier)` makes the pipeline's own UNet apply the guard.

A forward hook on `pipe.unet` replaces each eps the UNet returns by CPSample's corrected eps
(`CPSampleGuard.correct`). The push depends only on x_t and t, so when a pipeline runs classifier-free guidance
(the UNet sees [x_t, x_t] and returns [eps_uncond, eps_cond]) the same push is subtracted from both halves and
passes through the pipeline's mix unchanged: eps_u - d + g (eps_c - eps_u) is the guided eps minus d.
`DDPMPipeline`, `DDIMPipeline`, `StableDiffusionPipeline` and other eps-predicting pipelines then run unchanged,
and give what cpsample's own sampler gives with the same noise, bit for bit (tests/test_protect.py).

    pipe = cpsample.protect(pipe, "bundled")      # knobs from the classifier's calibration.json
    images = pipe(batch_size=16).images
    cpsample.unprotect(pipe)                      # back to plain sampling
"""

from __future__ import annotations

from pathlib import Path

import torch

from cpsample.models.classifier import TimeClassifier
from cpsample.models.pretrained import Classifier
from cpsample.sampling.checks import check_guard_fits, check_scheduler, model_folder_of
from cpsample.sampling.guards import Guard, GuardContext
from cpsample.sampling.guards.base import run_noise_levels
from cpsample.sampling.spec import GuardSpec

HOOK_ATTRIBUTE = "_cpsample_protection"


class Protection:
    """The hook object: holds the guard (its `trace` records p1 and fired per UNet call of the latest run)."""

    def __init__(self, pipe, guard: Guard):
        self.pipe, self.guard = pipe, guard
        self.placed = (pipe.unet.device, pipe.unet.dtype)  # where protect() put the guard's networks
        self.handle = None
        self._last_t: int | None = None
        self._step = -1
        self._checked_scheduler = (
            pipe.scheduler
        )  # protect() checked this one; a swapped-in one is checked at call time

    def __repr__(self) -> str:
        return (
            f"Protection({self.guard!r}, pipeline={type(self.pipe).__name__}, "
            f"scheduler={type(self.pipe.scheduler).__name__}, active={self.handle is not None})"
        )

    def __call__(self, module, args, kwargs, output):
        if self.pipe.scheduler is not self._checked_scheduler:
            check_scheduler(self.pipe.scheduler, "the scheduler swapped into this pipeline after protect() predicts")
            check_guard_fits(self.guard, self.pipe.unet, self.pipe.scheduler, None)
            self._checked_scheduler = self.pipe.scheduler
        x_t = args[0] if args else kwargs["sample"]
        t = single_timestep(args[1] if len(args) > 1 else kwargs["timestep"])
        if self._last_t is None or t > self._last_t:  # timesteps never rise within a run (PNDM repeats one): a new run
            self._begin_run()
        self._last_t = t
        self._step += 1
        self.guard.begin_step(self._step, len(self.pipe.scheduler.timesteps))
        self._follow(x_t)
        eps = output.sample if hasattr(output, "sample") else output[0]
        abar_t = self.pipe.scheduler.alphas_cumprod.to(x_t.device)[t].float()
        if is_cfg_batch(x_t):  # one push, computed once on x_t, for both halves
            half = len(x_t) // 2
            t_batch = torch.full((half,), t, device=x_t.device, dtype=torch.long)
            corrected = torch.cat(self.guard.correct(eps.chunk(2), x_t[:half], t_batch, abar_t))
        else:
            t_batch = torch.full((len(x_t),), t, device=x_t.device, dtype=torch.long)
            (corrected,) = self.guard.correct((eps,), x_t, t_batch, abar_t)
        return replace_sample(output, corrected)

    def _begin_run(self) -> None:
        """As the own loop does before a run: forget the trace, learn the run's noise levels (adaptive pushes)."""
        self.guard.reset()
        self.guard.begin_run(run_noise_levels(self.pipe.scheduler))
        self._step = -1

    def _follow(self, x_t: torch.Tensor) -> None:
        """Keep the guard's networks on the UNet's device and dtype (the pipeline may have moved since protect())."""
        if self.placed != (x_t.device, x_t.dtype):
            self.guard.to(x_t.device, x_t.dtype)
            self.placed = (x_t.device, x_t.dtype)


def protect(
    pipe,
    classifier: str | Path | Classifier | TimeClassifier | Guard,
    guard: "str | GuardSpec" = "cpsample",
    **options,
):
    """Make `pipe` sample with CPSample (or another guard); returns the same pipeline (its UNet now carries it).

    classifier: a classifier folder, "bundled", a loaded Classifier or TimeClassifier, or a ready guard. guard: the
    guard's name (a plugin's too) or a GuardSpec; options: its options (CPSample's alpha, scale, tau, max_t,
    one_stage, ...; `cpsample guards`); with none given, the classifier folder's calibration.json decides (one or two
    stages), as for `cpsample sample --guard cpsample`. Only a guard whose change to eps depends on x_t and t alone
    (its `correct`) can act inside the UNet."""
    if not (hasattr(pipe, "unet") and hasattr(pipe, "scheduler")):
        raise ValueError(
            f"protect() takes a diffusers pipeline (with .unet and .scheduler), got {type(pipe).__name__}; "
            "wrap the UNet in one, e.g. DDIMPipeline(unet=unet, scheduler=scheduler)"
        )
    if classifier is None:
        raise ValueError(
            "protect() needs a classifier of this model's members (a folder, a Classifier, or 'bundled' "
            "for the bundled demo model); train one with `cpsample train-classifier --model MODEL`"
        )
    unet = pipe.unet
    check_scheduler(pipe.scheduler, "this pipeline's scheduler predicts")
    ready = isinstance(classifier, Guard)
    if ready and options:
        raise ValueError(f"options {', '.join(options)} apply to a classifier, not to a ready CPSample guard")
    if ready:
        built = classifier
    else:
        spec = guard if isinstance(guard, GuardSpec) else GuardSpec.create(guard, **options)
        built = spec.build(GuardContext(model=None, classifier=classifier))
    _check_acts_inside_the_unet(built)
    check_guard_fits(built, unet, pipe.scheduler, model_folder_of(unet))
    if getattr(pipe, "vae", None) is not None:  # a latent pipeline: its VAE must be the one the classifier knows
        from cpsample.sampling.latent_pairing import check_latent_pairing

        for stage in getattr(built, "guards", [built]):
            if getattr(stage, "folder", None) is not None:
                check_latent_pairing(stage.folder, pipe)
    unprotect(pipe)
    built.to(unet.device, unet.dtype)
    protection = Protection(pipe, built)
    protection.handle = unet.register_forward_hook(protection, with_kwargs=True)
    setattr(unet, HOOK_ATTRIBUTE, protection)
    return pipe


def _check_acts_inside_the_unet(guard: Guard) -> None:
    """A hook on the UNet sees each eps it makes, not the pipeline's mix: a guard that changes the mix (`combine`) or
    needs the final eps (`adjust`) cannot act there."""
    for stage in getattr(guard, "guards", [guard]):
        kind = type(stage)
        if kind.adjust is not Guard.adjust or kind.combine is not Guard.combine:
            raise ValueError(
                f"the {stage.name} guard changes the final eps or the CFG mix, which a hook inside the pipeline's "
                "UNet cannot see; sample it with `cpsample sample --guard` instead of protect()"
            )


def unprotect(pipe):
    """Remove the guard `protect` put on the pipeline's UNet (nothing happens if there is none)."""
    protection = getattr(pipe.unet, HOOK_ATTRIBUTE, None)
    if protection is not None:
        protection.handle.remove()
        protection.handle = None
        delattr(pipe.unet, HOOK_ATTRIBUTE)
    return pipe


def protection_of(pipe) -> Protection | None:
    """The active protection (guard settings, trace of the latest run), or None for an unprotected pipeline."""
    return getattr(pipe.unet, HOOK_ATTRIBUTE, None)


def single_timestep(timestep) -> int:
    """Pipelines call the UNet with one t for the whole batch; CPSample's push needs it as an int."""
    values = torch.as_tensor(timestep).flatten()
    if len(values) > 1 and not bool((values == values[0]).all()):
        raise ValueError("protect() needs one timestep per UNet call; this pipeline mixes timesteps in a batch")
    return int(values[0])


def is_cfg_batch(x_t: torch.Tensor) -> bool:
    """[x, x]: a classifier-free-guidance call (or two identical halves, whose pushes are identical anyway)."""
    half = len(x_t) // 2
    return len(x_t) % 2 == 0 and half > 0 and torch.equal(x_t[:half], x_t[half:])


def replace_sample(output, sample: torch.Tensor):
    """The UNet's output with eps replaced, in the form the pipeline asked for (dataclass or tuple)."""
    if isinstance(output, tuple):
        return (sample, *output[1:])
    output.sample = sample  # diffusers' BaseOutput keeps its dict view in sync
    return output
