"""A guard defined outside the package, registered the Python packaging way (an entry point in the `cpsample.guards`
group), is usable from `cpsample sample --guard NAME`, `cpsample guards`, `protect()` and a calibration grid without
touching any cpsample file."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline
from helpers import cli

from cpsample.calibration.search import GridSettings, run_grid
from cpsample.evaluation.measures import _plugin_measures
from cpsample.models import load_denoiser
from cpsample.models.bundle import resolve_model_dir
from cpsample.sampling.guards import _plugin_guards, guard_class
from cpsample.sampling.protect import protect, unprotect
from cpsample.sampling.sampler import make_scheduler

# The whole plugin: one file. It shrinks each eps the denoiser makes by a share (an x_t-only change, so it can act
# inside a diffusers UNet as well as in cpsample's own loop).
PLUGIN = '''
from dataclasses import dataclass

from cpsample.sampling.guards.base import Guard, GuardOptions, option


@dataclass(frozen=True)
class ShrinkOptions(GuardOptions):
    scale: float = option(0.1, "Shrink each eps by this share.")

    def check(self):
        if not 0 <= self.scale < 1:
            raise ValueError(f"--scale must lie in [0, 1), got {self.scale}")


class ShrinkGuard(Guard):
    """Shrink eps (a toy guard from another package)."""

    name = "shrink"
    Options = ShrinkOptions

    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def correct(self, predictions, x_t, t, abar_t):
        return tuple(eps * (1 - self.scale) for eps in predictions)

    def settings(self):
        return {"guard": self.name, "scale": self.scale}


class MeanBrightness:
    """A toy measure from another package: the samples' mean pixel value."""

    name = "brightness"

    @classmethod
    def from_reference(cls, reference):
        return cls()

    def __call__(self, samples):
        return {"mean_brightness": float(samples.images.mean())}
'''
N, STEPS, SEED = 4, 10, 3


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """The plugin as an installed distribution: its module and a dist-info folder naming its entry point."""
    (tmp_path / "shrink_guard.py").write_text(textwrap.dedent(PLUGIN))
    info = tmp_path / "shrink_guard-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: shrink-guard\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[cpsample.guards]\nshrink = shrink_guard:ShrinkGuard\n\n"
        "[cpsample.measures]\nbrightness = shrink_guard:MeanBrightness\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    _plugin_guards.cache_clear()
    _plugin_measures.cache_clear()
    yield tmp_path
    _plugin_guards.cache_clear()
    _plugin_measures.cache_clear()


def test_the_plugin_is_found_by_its_entry_point(installed):
    assert guard_class("shrink").__module__ == "shrink_guard"


def test_cpsample_guards_lists_the_plugin_and_its_option(installed):
    code, output = cli("guards")
    assert code == 0 and "shrink" in output and "Shrink each eps by this share." in output


def test_sample_runs_the_plugin_by_name(installed):
    code, output = cli("sample", "--model", "bundled", "-n", N, "--steps", STEPS, "--seed", SEED, "--guard", "shrink",
                       "--scale", "0.2", "--out", installed / "shrunk")  # fmt: skip
    assert code == 0, output
    code, output = cli(
        "sample", "--model", "bundled", "-n", N, "--steps", STEPS, "--seed", SEED, "--out", installed / "plain"
    )
    assert code == 0, output
    record = json.loads((installed / "shrunk" / "cpsample.json").read_text())
    assert record["settings"]["guard_settings"] == {"guard": "shrink", "scale": 0.2}
    shrunk, plain = (np.load(installed / name / "samples.npz")["images"] for name in ("shrunk", "plain"))
    assert not np.array_equal(shrunk, plain)
    code, output = cli(
        "sample", "--model", "bundled", "--guard", "shrink", "--scale", "1.5", "--out", installed / "bad"
    )
    assert code != 0 and "--scale must lie in [0, 1)" in output, "the plugin's own validation runs"


def test_protect_applies_the_plugin_inside_a_diffusers_pipeline(installed):
    """protect(pipe, classifier, guard="shrink") gives what `cpsample sample --guard shrink` writes, bit for bit."""
    code, output = cli("sample", "--model", "bundled", "-n", N, "--steps", STEPS, "--seed", SEED, "--batch-size", N,
                       "--guard", "shrink", "--scale", "0.2", "--out", installed / "cli")  # fmt: skip
    assert code == 0, output
    unet, schedule = load_denoiser(resolve_model_dir("bundled", "denoiser"))
    pipe = DDIMPipeline(unet=unet, scheduler=make_scheduler("ddim", schedule.config, STEPS))
    protect(pipe, "bundled", guard="shrink", scale=0.2)
    try:
        generator = torch.Generator().manual_seed(SEED * 100_003)  # the own sampler's noise for batch 0
        images = pipe(batch_size=N, num_inference_steps=STEPS, generator=generator, output_type="pt").images
    finally:
        unprotect(pipe)
    expected = torch.from_numpy(np.load(installed / "cli" / "samples.npz")["images"])
    assert torch.equal(images, (expected / 2 + 0.5).clamp(0, 1))


def test_a_calibration_grid_runs_the_plugin_guard_and_gives_the_plugin_measure_a_column(installed):
    settings = GridSettings(n_samples=N, steps=STEPS, quality_net=None, seed=SEED, measures=("brightness",))
    plain, shrunk = run_grid(
        settings, progress=False, candidates=[{"guard": "none"}, {"guard": "shrink", "scale": 0.5}]
    )
    assert (plain["guard"], shrunk["guard"], shrunk["scale"]) == ("none", "shrink", 0.5)
    assert {"near_copy_share", "ci_high", "mean_brightness"} <= set(shrunk)
    assert plain["mean_brightness"] != shrunk["mean_brightness"], "the grid sampled the plugin guard"
