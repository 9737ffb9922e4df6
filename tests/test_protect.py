"""cpsample.protect: CPSample inside a plain diffusers pipeline gives exactly what cpsample's own sampler gives."""

import pytest
import torch
from diffusers import DDIMPipeline, DDPMPipeline

from cpsample.models import load_denoiser
from cpsample.models.bundle import resolve_model_dir
from cpsample.sampling.pipeline import generate
from cpsample.sampling.protect import protect, protection_of, unprotect
from cpsample.sampling.sampler import make_scheduler

SEED, N, STEPS = 3, 12, 20


@pytest.fixture(scope="module")
def bundled():
    return load_denoiser(resolve_model_dir("bundled", "denoiser"))


def pipeline_images(pipe, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 100_003)  # the own sampler's noise for batch 0
    return pipe(batch_size=N, num_inference_steps=STEPS, generator=generator, output_type="pt").images


@pytest.mark.parametrize("name, pipeline_class, options", [("ddim", DDIMPipeline, {}), ("ddpm", DDPMPipeline, {}),
                                                           ("ddim", DDIMPipeline, {"adaptive": True, "scale": 100.0})])
def test_protected_pipeline_matches_the_own_sampler_bit_for_bit(bundled, name, pipeline_class, options):
    unet, schedule = bundled
    pipe = pipeline_class(unet=unet, scheduler=make_scheduler(name, schedule.config, STEPS))
    plain = pipeline_images(pipe, SEED)
    protect(pipe, "bundled", **options)  # no options: the calibrated knobs, as `cpsample sample --guard cpsample`
    try:
        protected = pipeline_images(pipe, SEED)
        fired = protection_of(pipe).guard.trace["fired"]
    finally:
        unprotect(pipe)
    ours = generate("bundled", n=N, steps=STEPS, scheduler=name, guard="cpsample", seed=SEED, batch_size=N, progress=False,
                    **options)
    assert torch.equal(protected, (ours.images / 2 + 0.5).clamp(0, 1))
    assert sum(f.sum() for f in fired) > 0 and not torch.equal(plain, protected), "the guard must have acted"
    assert torch.equal(pipeline_images(pipe, SEED), plain), "unprotect restores plain sampling"


def test_protect_refuses_a_classifier_for_other_images(bundled, tmp_path):
    from cpsample.models import TimeClassifier

    unet, schedule = bundled
    pipe = DDIMPipeline(unet=unet, scheduler=make_scheduler("ddim", schedule.config, STEPS))
    with pytest.raises(ValueError, match="takes 3-channel 8x8 inputs"):
        protect(pipe, TimeClassifier(sample_size=8, in_channels=3, block_out_channels=(16, 16), norm_num_groups=8))
    assert protection_of(pipe) is None


def test_protect_refuses_options_that_call_the_denoiser_itself(bundled):
    """jacobian=true needs the guard to run the UNet on its own; inside a pipeline's UNet it cannot, and says so
    (rather than silently following another model's UNet)."""
    unet, schedule = bundled
    pipe = DDIMPipeline(unet=unet, scheduler=make_scheduler("ddim", schedule.config, STEPS))
    with pytest.raises(ValueError, match="cannot call; drop that option"):
        protect(pipe, "bundled", denoised=True, jacobian=True)
    assert protection_of(pipe) is None
