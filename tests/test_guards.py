"""Guards as validated configs built through one registry: one set of defaults for the library and the CLI."""

import inspect
import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cpsample.cli.main import app
from cpsample.models.bundle import resolve_model_dir
from cpsample.sampling.guards import GUARDS, Guard, GuardContext, GuardOptions
from cpsample.sampling.guards.base import option
from cpsample.sampling.pipeline import generate
from cpsample.sampling.spec import build_guard, guard_options, read_calibration

GUARD_FLAGS = ("alpha", "scale", "tau", "amg_threshold", "amg_scale", "option")


def test_every_registered_guard_declares_validated_options():
    for name, guard_class in GUARDS.items():
        assert issubclass(guard_class.Options, GuardOptions), name
        assert guard_class.name == name
        guard_class.Options()  # the defaults themselves are valid


def test_unknown_and_bad_options_are_refused():
    with pytest.raises(ValueError, match="guard 'amg' has no option alpha"):
        guard_options("amg", alpha=0.1)
    with pytest.raises(ValueError, match="alpha must lie in"):
        guard_options("cpsample", alpha=0.7)
    with pytest.raises(ValueError, match="finite"):
        guard_options("cpsample", scale=float("nan"))
    with pytest.raises(ValueError, match="tau must be positive"):
        guard_options("cpsample", tau=0.0)
    with pytest.raises(ValueError, match="unknown guard"):
        build_guard("cpsampel")
    with pytest.raises(ValueError, match="has no option transition_t"):
        generate(n=1, steps=1, guard="cpsample", transition_t=5, progress=False)


@pytest.mark.parametrize("command", ["sample"])
def test_cli_guard_flags_carry_no_defaults_of_their_own(command):
    """Every guard knob on the command line defaults to None: the guard's Options (or calibration) decide."""
    callback = next(c.callback for c in app.registered_commands if (c.name or c.callback.__name__) == command)
    parameters = inspect.signature(callback).parameters
    present = [name for name in GUARD_FLAGS if name in parameters]
    assert {"alpha", "scale", "tau", "option"} <= set(present)
    assert all(parameters[name].default is None for name in present)


def _recorded_guard_settings(out):
    return json.loads((out / "cpsample.json").read_text())["settings"]["guard_settings"]


def test_library_and_cli_use_the_same_defaults(tmp_path):
    calibrated = read_calibration(resolve_model_dir("bundled", "classifier"))
    library = generate(n=2, steps=2, guard="cpsample", progress=False).guard_settings  # two stages, as calibrated
    two_stage = calibrated["two_stage"]
    assert {key: library["late"][key] for key in ("alpha", "scale", "tau")} == {
        key: two_stage[key] for key in ("alpha", "scale", "tau")
    }
    assert library["early"]["scale"] == two_stage["early_scale"]
    one_stage = generate(n=2, steps=2, guard="cpsample", one_stage=True, progress=False).guard_settings
    assert {key: one_stage[key] for key in ("alpha", "scale", "tau", "max_t")} == {
        key: calibrated["settings"][key] for key in ("alpha", "scale", "tau", "max_t")
    }
    for guard in ("cpsample", "amg"):
        out = tmp_path / guard
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
                "2",
                "--steps",
                "2",
                "--guard",
                guard,
            ],
        )
        assert result.exit_code == 0, result.output
        expected = generate(n=2, steps=2, guard=guard, progress=False).guard_settings
        assert _recorded_guard_settings(out) == json.loads(json.dumps(expected))
    amg_defaults = GUARDS["amg"].Options()
    assert _recorded_guard_settings(tmp_path / "amg")["threshold"] == amg_defaults.threshold
    assert _recorded_guard_settings(tmp_path / "amg")["sim_scale"] == amg_defaults.sim_scale


def test_cli_option_sets_any_declared_option_and_refuses_others(tmp_path):
    out = tmp_path / "amg"
    result = CliRunner().invoke(
        app,
        [
            "sample",
            "--model",
            "bundled",
            "--out",
            str(out),
            "-n",
            "2",
            "--steps",
            "2",
            "--guard",
            "amg",
            "--option",
            "threshold=0.9",
            "--option",
            "despecify=false",
        ],
    )
    assert result.exit_code == 0, result.output
    recorded = _recorded_guard_settings(out)
    assert recorded["threshold"] == 0.9 and recorded["despecify"] is False
    result = CliRunner().invoke(
        app, ["sample", "--model", "bundled", "--out", str(tmp_path / "bad"), "--guard", "amg", "--alpha", "0.1"]
    )
    assert result.exit_code != 0 and "has no option alpha" in result.output
    result = CliRunner().invoke(
        app,
        [
            "sample",
            "--model",
            "bundled",
            "--classifier",
            "bundled",
            "--out",
            str(tmp_path / "bad"),
            "--guard",
            "cpsample",
            "-o",
            "alpha=x",
        ],
    )
    assert result.exit_code != 0 and "expected float" in result.output


@dataclass(frozen=True)
class DampOptions(GuardOptions):
    factor: float = option(0.5, "Multiply eps by this.")


class DampGuard(Guard):
    """A new strategy as a user would add one: one class (a file) and one line in GUARDS."""

    name = "damp"
    Options = DampOptions

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def adjust(self, eps, x_t, t, abar_t):
        return eps * self.factor

    def settings(self):
        return {"guard": self.name, "factor": self.factor}


def test_a_new_guard_is_one_class_and_one_registry_line(tmp_path, monkeypatch):
    monkeypatch.setitem(GUARDS, "damp", DampGuard)
    out = tmp_path / "damp"
    result = CliRunner().invoke(
        app,
        [
            "sample",
            "--model",
            "bundled",
            "--out",
            str(out),
            "-n",
            "2",
            "--steps",
            "3",
            "--guard",
            "damp",
            "-o",
            "factor=0.0",
        ],
    )
    assert result.exit_code == 0, result.output
    assert _recorded_guard_settings(out) == {"guard": "damp", "factor": 0.0}
    damped = generate(n=2, steps=3, guard="damp", factor=0.0, progress=False).images
    plain = generate(n=2, steps=3, progress=False).images
    assert not torch.equal(damped, plain)
    assert torch.equal(
        damped, generate(n=2, steps=3, guard=build_guard("damp", GuardContext(), factor=0.0), progress=False).images
    )
    listing = CliRunner().invoke(app, ["guards"])
    assert "damp" in listing.output and "factor" in listing.output


def _noised_members_at_200():
    """The bundled model and classifier, and 64 members noised to t = 200, where the classifier is over-confident."""
    from cpsample.models import Classifier, DiffusionModel

    model, classifier = DiffusionModel.from_pretrained("bundled"), Classifier.from_pretrained("bundled")
    x0 = torch.from_numpy(model.members.images[:64])
    t = torch.full((64,), 200)
    x_t = model.schedule.add_noise(x0, torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)), t)
    return model, classifier, x_t, t, model.schedule.alphas_cumprod[200]


def test_max_push_caps_each_samples_push_and_keeps_its_direction():
    """Noised members at t = 200 under s 30: the bundled classifier's pushes vary in size; max_push shrinks the large
    ones to that RMS exactly, leaves the small ones alone, and never turns a push around."""
    from cpsample.sampling.guards.cpsample import CPSampleGuard

    model, classifier, x_t, t, abar = _noised_members_at_200()
    free = CPSampleGuard(classifier.model, alpha=0.1, scale=30.0)
    rows, change = free.push(x_t, t, abar, torch.float32)
    rms = change.flatten(1).pow(2).mean(1).sqrt()
    cap = float(rms.median())
    capped = CPSampleGuard(classifier.model, alpha=0.1, scale=30.0, max_push=cap)
    same_rows, capped_change = capped.push(x_t, t, abar, torch.float32)
    assert torch.equal(rows, same_rows)
    capped_rms = capped_change.flatten(1).pow(2).mean(1).sqrt()
    large = rms > cap
    assert bool(large.any()) and bool((~large).any())
    assert torch.allclose(capped_rms[large], torch.full_like(capped_rms[large], cap), rtol=1e-4)
    assert torch.allclose(capped_change[~large], change[~large])
    cosine = torch.nn.functional.cosine_similarity(capped_change.flatten(1), change.flatten(1))
    assert bool((cosine > 0.999).all())
    assert capped.settings()["max_push"] == cap and "max_push" not in free.settings()
    with pytest.raises(ValueError, match="max-push must be positive"):
        CPSampleGuard(classifier.model, max_push=0.0)


def test_push_shaping_smooths_and_caps_on_the_denoised_estimate():
    """smooth_push low-passes each push (a blur keeps flat images flat and a central dot's mass); cap_x0 caps the
    push's
    change to x0_hat, so at t = 200 the cap on eps is max_push sqrt(abar) / sqrt(1 - abar)."""
    from cpsample.sampling.guards.cpsample import CPSampleGuard, gaussian_blur

    flat = torch.full((1, 1, 16, 16), 0.3)
    assert torch.allclose(gaussian_blur(flat, 1.5), flat)
    dot = torch.zeros(1, 1, 16, 16)
    dot[..., 8, 8] = 1.0
    spread = gaussian_blur(dot, 1.0)
    assert float(spread.sum()) == pytest.approx(1.0, abs=1e-5) and 0.1 < float(spread.max()) < 0.2
    model, classifier, x_t, t, abar = _noised_members_at_200()
    rows, change = CPSampleGuard(classifier.model, alpha=0.1, scale=30.0).push(x_t, t, abar, torch.float32)
    smooth = CPSampleGuard(classifier.model, alpha=0.1, scale=30.0, smooth_push=1.0)
    same_rows, smoothed = smooth.push(x_t, t, abar, torch.float32)
    assert torch.equal(rows, same_rows)
    assert torch.allclose(smoothed, gaussian_blur(change, 1.0))

    def rough(images):
        return (images[..., 1:, :] - images[..., :-1, :]).abs().mean()  # neighbouring pixels' difference

    assert rough(smoothed) < 0.8 * rough(change)

    def rms(images):
        return images.flatten(1).pow(2).mean(1).sqrt()

    eps_cap = 0.5 * float((abar / (1 - abar)).sqrt())
    _, capped = CPSampleGuard(classifier.model, alpha=0.1, scale=30.0, max_push=0.5, cap_x0=True).push(
        x_t, t, abar, torch.float32
    )
    assert float(rms(capped).max()) == pytest.approx(eps_cap, rel=1e-4) and eps_cap > 0.5
    assert smooth.settings()["smooth_push"] == 1.0
    with pytest.raises(ValueError, match="give max_push too"):
        CPSampleGuard(classifier.model, cap_x0=True)
    with pytest.raises(ValueError, match="smooth-push must be a positive"):
        CPSampleGuard(classifier.model, smooth_push=0.0)


def test_adaptive_push_is_capped_and_falls_back_without_the_run_schedule():
    """Noised members at t = 200, where the bundled classifier is over-confident: the adaptive scale per sample lies
    in (0, cap]; without the run's noise levels (a lone denoiser call) the fixed push applies unchanged."""
    from cpsample.sampling.guards.cpsample import CPSampleGuard

    model, classifier, x_t, t, abar = _noised_members_at_200()
    fixed = CPSampleGuard(classifier.model, alpha=0.1, scale=30.0)
    adaptive = CPSampleGuard(classifier.model, alpha=0.1, scale=30.0, adaptive=True)
    rows, fixed_change = fixed.push(x_t, t, abar, torch.float32)
    assert len(rows) >= 16, "the bundled classifier should be over-confident on noised members"
    same_rows, unscheduled = adaptive.push(x_t, t, abar, torch.float32)
    assert torch.equal(rows, same_rows) and torch.equal(unscheduled, fixed_change)
    levels = [float(model.schedule.alphas_cumprod[step]) for step in (220, 200, 180)]
    adaptive.begin_run(levels)
    adaptive.begin_step(1, 3)
    _, adaptive_change = adaptive.push(x_t, t, abar, torch.float32)
    ratio = adaptive_change.flatten(1).norm(dim=1) / fixed_change.flatten(1).norm(dim=1)  # = s_i / cap
    assert bool((ratio > 0).all()) and bool((ratio <= 1 + 1e-5).all()) and bool((ratio < 1).any())
    assert adaptive.settings()["adaptive"] is True and "adaptive" not in fixed.settings()


def test_bfloat16_screen_fires_on_the_same_samples_and_pushes_alike(monkeypatch):
    """The bfloat16 screen only decides which samples get the exact float32 check: the same samples fire at every
    step as without it, the images are the same, and the float32 check saw fewer samples than were checked. (The
    guard screens only where bfloat16 is much faster; it is made to screen here, where bfloat16 may only be
    correct.)"""
    from cpsample.models import Classifier
    from cpsample.models.classifier import TimeClassifier
    from cpsample.sampling.guards import cpsample as cpsample_guard
    from cpsample.sampling.guards.cpsample import CPSampleGuard

    monkeypatch.setattr(cpsample_guard, "_screens_fast", lambda device: True)

    classifier = Classifier.from_pretrained("bundled").model
    exact_rows = []
    forward = TimeClassifier.forward

    def counting(self, sample, timestep):
        if not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu"):  # the float32 check
            exact_rows.append(len(sample))
        return forward(self, sample, timestep)

    runs = {}
    for screen in (True, False):
        exact_rows.clear()
        guard = CPSampleGuard(classifier, alpha=0.1, scale=10.0, max_t=300, screen=screen)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(TimeClassifier, "forward", counting)
            runs[screen] = generate(n=64, steps=20, guard=guard, batch_size=64, progress=False), sum(exact_rows)
    (screened, screened_rows), (plain_check, unscreened_rows) = runs[True], runs[False]
    fired = screened.trace["fired"]
    assert 0 < fired.sum() < fired.size
    assert np.array_equal(fired, plain_check.trace["fired"])
    assert torch.allclose(screened.images, plain_check.images, atol=1e-5)
    checked = 64 * int((screened.timesteps <= 300).sum())
    assert unscreened_rows == checked and fired.sum() <= screened_rows < checked


def test_the_screen_runs_only_where_bfloat16_is_much_faster(monkeypatch):
    """AVX512-BF16 alone made bfloat16 convolutions only 7% faster (an AMD EPYC), too little for the screen to pay;
    AMX (and CUDA) run them several times faster."""
    from cpsample.sampling.guards import cpsample as cpsample_guard

    for amx, screens in ((False, False), (True, True)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx, raising=False)
        cpsample_guard._bfloat16_native.cache_clear()
        assert cpsample_guard._screens_fast(torch.device("cpu")) is screens
    cpsample_guard._bfloat16_native.cache_clear()  # the real CPU's answer again for later tests


def test_a_classifier_is_never_checked_above_the_noise_levels_it_was_trained_at(tmp_path):
    """A classifier trained at t <= 300 only (`train-classifier --max-t`, the scaled recipe's 500) has never seen x_t
    above: CPSample checks it there no more (alpha 0.5 fires on every checked sample), the record says so, and a guard
    judging the denoised estimate (at t = 0) is not held to it."""
    import shutil

    from cpsample.calibration.seek import Watch
    from cpsample.models.classifier import trained_window

    folder = tmp_path / "classifier"
    shutil.copytree(resolve_model_dir("bundled", "classifier"), folder)
    record = json.loads((folder / "cpsample.json").read_text())
    assert trained_window(folder) is None  # the bundled classifier: every t
    record["settings"]["max_t"] = 300
    (folder / "cpsample.json").write_text(json.dumps(record))
    assert trained_window(folder) == 300
    runs = {}
    for name, classifier in (("every t", resolve_model_dir("bundled", "classifier")), ("t <= 300", folder)):
        guard = build_guard("cpsample", GuardContext(classifier=classifier), alpha=0.5, scale=1.0, tau=0.001)
        runs[name] = generate(n=4, steps=10, guard=guard, seed=3, progress=False), guard
    (every, _), (windowed, guard) = runs["every t"], runs["t <= 300"]
    assert every.trace["fired"].all()
    assert np.array_equal(windowed.trace["fired"].all(axis=1), windowed.timesteps <= 300)
    assert guard.settings()["trained_max_t"] == 300 and "trained_max_t" not in runs["every t"][1].settings()
    denoised = build_guard("cpsample", GuardContext(classifier=folder), alpha=0.5, scale=1.0, tau=0.001, denoised=True)
    assert denoised.checked_up_to == float("inf")
    watch = Watch(guard.classifier, trained_window(folder))
    watch.correct((torch.zeros(2, 1, 16, 16),), torch.zeros(2, 1, 16, 16), torch.tensor([500, 500]), None)
    assert watch.trace["least"][-1].tolist() == [1.0, 1.0]  # calibrate's watch flags nothing there either
