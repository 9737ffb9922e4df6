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


@pytest.mark.parametrize(
    "name, pipeline_class, options",
    [
        ("ddim", DDIMPipeline, {}),
        ("ddpm", DDPMPipeline, {}),
        ("ddim", DDIMPipeline, {"adaptive": True, "scale": 100.0}),
    ],
)
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
    ours = generate(
        "bundled",
        n=N,
        steps=STEPS,
        scheduler=name,
        guard="cpsample",
        seed=SEED,
        batch_size=N,
        progress=False,
        **options,
    )
    assert torch.equal(protected, (ours.images / 2 + 0.5).clamp(0, 1))
    assert sum(f.sum() for f in fired) > 0 and not torch.equal(plain, protected), "the guard must have acted"
    assert torch.equal(pipeline_images(pipe, SEED), plain), "unprotect restores plain sampling"


@pytest.mark.parametrize("name, pipeline_class", [("ddim", DDIMPipeline), ("ddpm", DDPMPipeline)])
def test_protected_pipeline_matches_the_sample_command_bit_for_bit(bundled, tmp_path, name, pipeline_class):
    """README's promise: protect(pipe, "bundled") gives exactly what `cpsample sample --guard cpsample` writes to
    samples.npz from the same noise (the calibrated default, no knob given on either side)."""
    import numpy as np
    from typer.testing import CliRunner

    from cpsample.cli.main import app

    unet, schedule = bundled
    out = tmp_path / "cli"
    command = [
        "sample",
        "--model",
        "bundled",
        "--classifier",
        "bundled",
        "--guard",
        "cpsample",
        "-n",
        N,
        "--steps",
        STEPS,
        "--scheduler",
        name,
        "--seed",
        SEED,
        "--batch-size",
        N,
        "--out",
        out,
    ]
    result = CliRunner().invoke(app, [str(part) for part in command])
    assert result.exit_code == 0, result.output
    with np.load(out / "samples.npz") as saved:
        cli_images = torch.from_numpy(saved["images"])
    pipe = pipeline_class(unet=unet, scheduler=make_scheduler(name, schedule.config, STEPS))
    plain = pipeline_images(pipe, SEED)
    protect(pipe, "bundled")
    try:
        protected = pipeline_images(pipe, SEED)
    finally:
        unprotect(pipe)
    assert torch.equal(protected, (cli_images / 2 + 0.5).clamp(0, 1))
    assert (protected - plain).abs().max() > 0.1, "the guard must have changed the images"


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


def test_protection_says_which_guard_and_classifier_it_runs(bundled):
    from cpsample.models import TimeClassifier
    from cpsample.models.bundle import resolve_model_dir

    unet, schedule = bundled
    pipe = DDIMPipeline(unet=unet, scheduler=make_scheduler("ddim", schedule.config, STEPS))
    folder = resolve_model_dir("bundled", "classifier")
    try:
        text = repr(protection_of(protect(pipe, "bundled", alpha=0.05)))
        assert text.startswith("Protection(CPSampleGuard('cpsample', alpha=0.05, scale=") and "DDIMPipeline" in text
        assert (
            f"classifier='{folder}'" in text and f"calibration='{folder / 'calibration.json'} (alpha given)'" in text
        )
        staged = repr(protection_of(protect(pipe, "bundled")))  # the bundled calibration chose two stages
        assert "StagedCPSampleGuard('cpsample-staged', early=CPSampleGuard(" in staged
        assert f"calibration='{folder / 'calibration.json'}')" in staged
        classifier = TimeClassifier(sample_size=16, in_channels=1, block_out_channels=(8, 16), norm_num_groups=8)
        in_memory = repr(protection_of(protect(pipe, classifier, alpha=0.1, scale=3.0, tau=0.01)))
        assert "classifier='in-memory', calibration='given'" in in_memory and "active=True" in in_memory
    finally:
        unprotect(pipe)


@pytest.mark.parametrize("prediction", ["v_prediction", "sample"])
def test_protect_refuses_a_non_eps_scheduler_swapped_in_later(bundled, prediction):
    from diffusers import DDIMScheduler

    unet, schedule = bundled
    pipe = DDIMPipeline(unet=unet, scheduler=make_scheduler("ddim", schedule.config, STEPS))
    other = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type=prediction)
    with pytest.raises(ValueError, match=f"scheduler predicts '{prediction}'"):
        protect(DDIMPipeline(unet=unet, scheduler=other), "bundled")
    protect(pipe, "bundled", alpha=0.1, scale=10.0)
    try:
        pipe.scheduler = other
        with pytest.raises(
            ValueError, match=f"swapped into this pipeline after protect\\(\\) predicts '{prediction}'"
        ):
            pipe(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="pt")
        pipe.scheduler = DDIMScheduler.from_config(other.config, prediction_type="epsilon")  # an eps one is fine
        images = pipe(
            batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="pt"
        ).images
        assert images.shape == (2, 1, 16, 16) and torch.isfinite(images).all()
    finally:
        unprotect(pipe)
    assert protection_of(pipe) is None
