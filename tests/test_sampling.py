"""Sampling on the bundled model: CPSample leaves confident-free trajectories alone, alpha=0 is plain, any scheduler
works."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cpsample.cli.main import app
from cpsample.models import load_denoiser
from cpsample.models.classifier import load_classifier
from cpsample.sampling import CPSampleGuard, NoGuard, make_scheduler, sample, unet_denoiser

N, STEPS = 12, 10


@pytest.fixture(scope="module")
def bundled(bundled_dirs):
    denoiser_dir, classifier_dir = bundled_dirs
    unet, schedule = load_denoiser(denoiser_dir)
    return unet, schedule, load_classifier(classifier_dir)


def _run(bundled, guard, scheduler="ddim", dtype=torch.float32, steps=STEPS, n=N, seed=0):
    unet, schedule, _ = bundled
    unet = unet.to(dtype=dtype)
    guard.to(torch.device("cpu"), dtype)
    try:
        return sample(
            unet_denoiser(unet),
            lambda: make_scheduler(scheduler, schedule.config, steps),
            n,
            (1, 16, 16),
            guard=guard,
            batch_size=n,
            seed=seed,
            dtype=dtype,
            progress=False,
        )
    finally:
        unet.to(dtype=torch.float32)
        guard.to(torch.device("cpu"), torch.float32)


def test_alpha_zero_equals_plain_sampling_exactly(bundled):
    plain = _run(bundled, NoGuard())
    guarded = _run(bundled, CPSampleGuard(bundled[2], alpha=0.0, scale=1000.0))
    assert torch.equal(plain.images, guarded.images)
    assert guarded.trace["fired"].sum() == 0 and guarded.trace["p1"].shape == (STEPS, N)


def test_guard_changes_only_over_confident_trajectories(bundled):
    plain = _run(bundled, NoGuard())
    guarded = _run(bundled, CPSampleGuard(bundled[2], alpha=0.2, scale=1000.0))
    ever_fired = guarded.trace["fired"].any(axis=0)
    assert 0 < ever_fired.sum(), "the bundled classifier should be over-confident on some trajectories"
    changed = (plain.images - guarded.images).flatten(1).abs().amax(1).numpy() > 1e-5
    assert not changed[~ever_fired].any(), "a trajectory the guard never touched must equal the plain one"
    assert changed[ever_fired].all(), "every trajectory the guard touched must move"
    # Firing means the classifier was over-confident: p(y=1) < alpha or > 1 - alpha at that step.
    p1, fired = guarded.trace["p1"], guarded.trace["fired"].astype(bool)
    assert np.all(np.minimum(p1, 1 - p1)[fired] < 0.2)
    assert np.all(np.minimum(p1, 1 - p1)[~fired] >= 0.2 - 1e-6)


@pytest.mark.parametrize("scheduler", ["ddim", "ddpm", "dpm++"])
def test_cpsample_runs_with_each_scheduler(bundled, scheduler):
    result = _run(bundled, CPSampleGuard(bundled[2], alpha=0.2, scale=1000.0), scheduler=scheduler)
    assert torch.isfinite(result.images).all()
    assert result.trace["fired"].any()
    assert result.images.std() > 0.2  # real images, not a flat field


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_gives_finite_non_black_images(bundled, dtype):
    result = _run(bundled, CPSampleGuard(bundled[2], alpha=0.2, scale=1000.0), dtype=dtype, n=4)
    assert torch.isfinite(result.images).all()
    assert result.images.max() > 0.5 and result.images.std() > 0.2


def test_killed_sampling_resumes_from_finished_batches(tmp_path, bundled):
    unet, schedule, _ = bundled
    factory = lambda: make_scheduler("ddim", schedule.config, 5)  # noqa: E731
    first = sample(
        unet_denoiser(unet), factory, 6, (1, 16, 16), batch_size=3, seed=2, work_dir=tmp_path, progress=False
    )
    (tmp_path / "batches" / "batch_00001.npz").unlink()  # as if killed while sampling the second batch
    again = sample(
        unet_denoiser(unet), factory, 6, (1, 16, 16), batch_size=3, seed=2, work_dir=tmp_path, progress=False
    )
    assert again.denoiser_calls == 3 * 5  # only the lost batch was redone
    assert torch.allclose(first.images, again.images, atol=1e-6)


def test_sample_cli_writes_grid_npz_trace_and_record(tmp_path):
    out = tmp_path / "s"
    result = CliRunner().invoke(
        app,
        [
            "sample",
            "--model",
            "bundled",
            "--classifier",
            "bundled",
            "--out",
            str(out),
            "-n",
            "6",
            "--steps",
            "5",
            "--guard",
            "cpsample",
            "--alpha",
            "0.2",
            "--seed",
            "3",
            "--trace",
        ],
    )
    assert result.exit_code == 0, result.output
    for name in ("grid.png", "samples.npz", "trace.png", "cpsample.json"):
        assert (out / name).exists(), name
    with np.load(out / "samples.npz") as data:
        assert data["images"].shape == (6, 1, 16, 16)
        assert not [key for key in data.files if key.startswith("trace")], "the trace is private: never in samples.npz"
    with np.load(out / "trace.npz") as trace:
        assert trace["p1"].shape == (5, 6) and trace["fired"].shape == (5, 6)
    record = json.loads((out / "cpsample.json").read_text())
    assert record["settings"]["seed"] == 3 and record["settings"]["guard"] == "cpsample"


def test_sample_cli_rejects_bad_input_clearly(tmp_path):
    result = CliRunner().invoke(
        app, ["sample", "--model", "bundled", "--out", str(tmp_path), "--scheduler", "euler-magic"]
    )
    assert result.exit_code == 2 and "unknown scheduler" in result.output
    result = CliRunner().invoke(app, ["sample", "--out", str(tmp_path), "--model", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no denoiser" in result.output


@pytest.mark.parametrize("scheduler", ["ddim", "ddpm", "dpm++"])
def test_schedulers_never_clip_the_x0_estimate(scheduler):
    clipping = {"clip_sample": True, "thresholding": True, "num_train_timesteps": 1000, "beta_schedule": "linear"}
    built = make_scheduler(scheduler, clipping, 10)
    assert not built.config.get("clip_sample", False) and not built.config.get("thresholding", False)


@pytest.mark.parametrize("scheduler", ["ddim", "ddpm", "dpm++"])
def test_plain_samples_have_the_background_of_real_digits(bundled, mnist16, scheduler):
    """A sampler bias guard: real digits are 68% pure-black (-1) pixels with black corners. Clamping DDIM's x0
    estimate while stepping with the raw eps left 1% of pixels at -1 and grey corners (-0.97)."""
    real = mnist16.images[:500]
    images = _run(bundled, NoGuard(), scheduler=scheduler, steps=50, n=60).images.numpy()
    black_real, black_sampled = (real < -0.99).mean(), (images < -0.99).mean()
    assert black_sampled > 0.6 * black_real, (black_sampled, black_real)
    corners = images[..., :2, :2].mean()
    assert corners < -0.985, corners


def test_check_window_skips_only_steps_where_the_guard_never_fires(bundled):
    """max_t (set by calibrate from the highest t that fired) saves the checks above it and changes nothing else."""
    _, _, classifier = bundled
    everywhere = _run(bundled, CPSampleGuard(classifier, alpha=0.1, scale=10.0, max_t=10**9), steps=20, n=16)
    timesteps, fired = everywhere.timesteps, everywhere.trace["fired"].astype(bool)
    assert fired.any() and not fired[0].any(), "the bundled classifier is never over-confident at t = 999"
    last_fired = int(timesteps[fired.any(axis=1)].max())
    windowed = _run(bundled, CPSampleGuard(classifier, alpha=0.1, scale=10.0, max_t=last_fired), steps=20, n=16)
    assert torch.equal(windowed.images, everywhere.images)
    skipped = timesteps > last_fired
    assert (
        skipped.any() and np.isnan(windowed.trace["p1"][skipped]).all() and not windowed.trace["fired"][skipped].any()
    )
    assert np.array_equal(windowed.trace["p1"][~skipped], everywhere.trace["p1"][~skipped])


def test_on_a_cpu_the_unet_is_called_on_a_few_dozen_samples_at_a_time(bundled, monkeypatch):
    """A long batch is denoised in calls of at most CPU_CALL_SIZE (cheaper per sample on a CPU), each sample's eps as
    one call of the whole batch gives it (to float32 rounding), in order, class labels split along."""
    from cpsample.models import calls

    unet, _, _ = bundled
    x, t = torch.randn(10, 1, 16, 16, generator=torch.Generator().manual_seed(0)), torch.arange(10) * 90
    with torch.no_grad():
        whole = unet_denoiser(unet)(x, t)
        monkeypatch.setattr(calls, "CPU_CALL_SIZE", 4)
        sizes = []
        hook = unet.register_forward_pre_hook(lambda module, args: sizes.append(len(args[0])))
        parts = unet_denoiser(unet)(x, t)
        hook.remove()  # the fixture's UNet is shared
    assert sizes == [4, 4, 2]
    assert torch.allclose(parts, whole, atol=1e-5) and not torch.equal(parts[:4], whole[4:8])

    class Recording(torch.nn.Module):
        def forward(self, x, t, class_labels=None):
            return type("Out", (), {"sample": x * 0 + (t + class_labels).view(-1, 1, 1, 1).float()})

    labels = torch.arange(10) * 1000
    eps = unet_denoiser(Recording(), labels)(x, t)
    assert torch.equal(eps[:, 0, 0, 0], (t + labels).float()), "each sample keeps its own t and class label"
