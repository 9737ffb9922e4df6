"""CPSample's push computed by hand. A classifier whose label-1 logit is linear in the image, w . x + c t, has
p(y = 1) = sigmoid(w . x + c t) and grad_x log(tau + p) in closed form, so every part of the guard's rule (which
samples fire, towards which label, how far, the check window, the denoised estimate, caps and the adaptive scale) is
checked against the paper's formula rather than against the guard's own code."""

from __future__ import annotations

import math

import pytest
import torch

from cpsample.sampling.guards.cpsample import CPSampleGuard, CPSampleOptions
from cpsample.sampling.spec import cpsample_settings

SHAPE = (1, 4, 4)


class LinearClassifier(torch.nn.Module):
    """logits (0, w . x + c t): p(y = 1 | x, t) = sigmoid(w . x + c t)."""

    def __init__(self, c: float = 0.0):
        super().__init__()
        self.w = torch.nn.Parameter(torch.linspace(-1.0, 1.0, math.prod(SHAPE)).view(1, *SHAPE))
        self.c = c

    def forward(self, x, t):
        z = (x * self.w).flatten(1).sum(1) + self.c * t.float()
        return torch.stack([torch.zeros_like(z), z], dim=1)


def _images_with_logits(z: list[float]) -> torch.Tensor:
    """One image per z with w . x = z (x along w)."""
    w = LinearClassifier().w.detach()
    return torch.stack([value * w[0] / w.pow(2).sum() for value in z])


def _expected_change(z, scale, tau, abar, w):
    """s sqrt(1 - abar) grad_x log(tau + p_target), p_target the less likely label's probability."""
    p1 = torch.sigmoid(torch.as_tensor(z, dtype=torch.float64))
    towards_1 = p1 < 1 - p1
    p = torch.where(towards_1, p1, 1 - p1)
    dp_dz = p1 * (1 - p1) * torch.where(towards_1, 1.0, -1.0)  # d p_target / d z
    factor = scale * math.sqrt(1 - abar) * dp_dz / (tau + p)
    return (factor.view(-1, 1, 1, 1) * w.double()).float()


Z = [-6.0, -1.0, 0.5, 4.0, 2.5]  # p1: 0.0025, 0.27, 0.62, 0.982, 0.924


def test_only_samples_sure_of_either_label_fire_and_each_is_pushed_towards_the_other():
    classifier = LinearClassifier()
    guard = CPSampleGuard(classifier, alpha=0.05, scale=7.0, tau=0.01, screen=False)
    abar = torch.tensor(0.6)
    rows, change = guard.push(_images_with_logits(Z), torch.full((5,), 300), abar, torch.float32)
    assert rows.tolist() == [0, 3]  # p(y=0) or p(y=1) below 0.05; 0.924 is not sure enough
    expected = _expected_change([Z[0], Z[3]], 7.0, 0.01, 0.6, classifier.w.detach())
    assert torch.allclose(change, expected, rtol=1e-4, atol=1e-7)
    along_w = (change * classifier.w.detach()).sum((1, 2, 3))
    assert along_w[0] > 0 > along_w[1]  # towards label 1 for the sample sure of 0, towards 0 for the one sure of 1
    fired = guard.trace["fired"][-1]
    assert fired.tolist() == [True, False, False, True, False]
    assert guard.trace["p1"][-1] == pytest.approx(torch.sigmoid(torch.tensor(Z)).numpy(), rel=1e-5)


def test_a_probability_exactly_at_alpha_does_not_fire():
    classifier = LinearClassifier()
    at = float(torch.sigmoid(torch.tensor(-2.0)))  # p(y=1) of the image below, in float32
    x = _images_with_logits([-2.0])
    p1 = float(torch.softmax(classifier(x, torch.zeros(1)).detach(), dim=-1)[0, 1])
    assert (
        CPSampleGuard(classifier, alpha=p1, screen=False).push(x, torch.zeros(1), torch.tensor(0.5), torch.float32)
        is None
    )
    assert (
        CPSampleGuard(classifier, alpha=at + 1e-4, screen=False).push(
            x, torch.zeros(1), torch.tensor(0.5), torch.float32
        )
        is not None
    )


def test_correct_subtracts_the_push_from_every_prediction_on_fired_rows_only():
    classifier = LinearClassifier()
    guard = CPSampleGuard(classifier, alpha=0.05, scale=7.0, tau=0.01, screen=False)
    x_t, t, abar = _images_with_logits(Z), torch.full((5,), 300), torch.tensor(0.6)
    eps_cond, eps_uncond = torch.randn(5, *SHAPE), torch.randn(5, *SHAPE)
    rows, change = guard.push(x_t, t, abar, torch.float32)
    corrected = guard.correct((eps_cond, eps_uncond), x_t, t, abar)
    assert len(corrected) == 2
    for before, after in zip((eps_cond, eps_uncond), corrected):
        assert torch.equal(after[rows], before[rows] - change)
        untouched = [i for i in range(5) if i not in rows.tolist()]
        assert torch.equal(after[untouched], before[untouched])
    # nobody over-confident: the predictions come back as they were (the same objects)
    calm = _images_with_logits([0.0, 0.5])
    predictions = (torch.randn(2, *SHAPE),)
    assert guard.correct(predictions, calm, torch.full((2,), 300), abar) is predictions


def test_judged_on_x0_hat_the_cfg_halves_share_one_estimate_from_their_mean_eps():
    """denoised=True under CFG: x0_hat comes from the mean of the two halves' eps, and both halves get the same
    push."""
    classifier = LinearClassifier()
    guard = CPSampleGuard(classifier, alpha=0.05, scale=5.0, tau=0.01, denoised=True, screen=False)
    x_t, t, abar = 0.8 * _images_with_logits([-1.0, 0.5, 2.0]), torch.full((3,), 100), torch.tensor(0.64)
    w = classifier.w.detach()
    half_a = torch.stack([4.0 * w[0], -2.0 * w[0], torch.zeros(SHAPE)])  # mean: 1 w, -1 w, 0 (w . w = 6.04)
    half_b = torch.stack([-2.0 * w[0], 0.0 * w[0], torch.zeros(SHAPE)])
    mean = (half_a + half_b) / 2
    rows, change = guard.push(x_t, t, abar, torch.float32, mean)
    z0 = ((x_t - 0.6 * mean) / 0.8 * w).flatten(1).sum(1)  # x0_hat's logits: -1 - 4.5, 0.5 + 4.5, 2
    assert z0.tolist() == pytest.approx([-5.53, 5.03, 2.0], abs=0.01) and rows.tolist() == [0, 1]
    corrected = guard.correct((half_a, half_b), x_t, t, abar)
    for before, after in zip((half_a, half_b), corrected):
        assert torch.allclose(after[rows], before[rows] - change) and torch.equal(after[2], before[2])


def test_the_jacobian_push_carries_x0_hats_gradient_through_the_denoiser():
    """jacobian: x0_hat = (x_t - sigma eps(x_t)) / sqrt(abar) differentiated through the denoiser. With eps = a x_t,
    d x0_hat / d x_t = (1 - sigma a) / sqrt(abar); a cap on x0_hat applies to it as to any push."""
    classifier = LinearClassifier()
    a, abar, sigma = 0.5, 0.64, 0.6

    def denoiser(x_t, t):
        return a * x_t

    x0 = _images_with_logits([-4.0, 1.0])
    x_t = x0 * 0.8 / (1 - sigma * a)  # x0_hat(x_t) = x0
    t = torch.full((2,), 50)
    guard = CPSampleGuard(classifier, alpha=0.05, scale=5.0, tau=0.01, denoised=True, denoiser=denoiser, screen=False)
    rows, change = guard.push(x_t, t, torch.tensor(abar), torch.float32, a * x_t)
    assert rows.tolist() == [0]
    expected = _expected_change([-4.0], 5.0, 0.01, abar, classifier.w.detach()) * (1 - sigma * a) / 0.8
    assert torch.allclose(change, expected, rtol=1e-4)
    capped = CPSampleGuard(
        classifier,
        alpha=0.05,
        scale=5.0,
        tau=0.01,
        denoised=True,
        denoiser=denoiser,
        max_push=0.01,
        cap_x0=True,
        screen=False,
    )
    _, small = capped.push(x_t, t, torch.tensor(abar), torch.float32, a * x_t)
    assert float(small.pow(2).mean().sqrt()) == pytest.approx(0.01 * 0.8 / 0.6, rel=1e-4)


def test_the_check_window_includes_its_ends():
    """min_t <= t <= max_t is checked; outside, nothing fires and the trace says so (p1 NaN, not fired)."""
    classifier = LinearClassifier()
    x, abar = _images_with_logits([-6.0, 0.0]), torch.tensor(0.5)
    for min_t, max_t, t, fires in [
        (0, 300, 300, True),
        (0, 299, 300, False),
        (300, None, 300, True),
        (301, None, 300, False),
        (0, None, 999, True),
    ]:
        guard = CPSampleGuard(classifier, alpha=0.05, min_t=min_t, max_t=max_t, screen=False)
        push = guard.push(x, torch.full((2,), t), abar, torch.float32)
        assert (push is not None) == fires, (min_t, max_t, t)
        p1, fired = guard.trace["p1"][-1], guard.trace["fired"][-1]
        if fires:
            assert fired.tolist() == [True, False]
        else:
            assert fired.tolist() == [False, False] and all(math.isnan(value) for value in p1)


def test_the_classifier_sees_the_timestep_on_x_t_and_zero_on_the_denoised_estimate():
    """With c t in the logit, the same x_t fires or not by t; judged on x0_hat the classifier is asked at t = 0, and
    the push is its gradient carried back to x_t: grad_x0 / sqrt(abar) with eps held fixed."""
    classifier = LinearClassifier(c=0.004)
    x, t, abar = _images_with_logits([-2.0]), torch.full((1,), 500), torch.tensor(0.36)
    assert CPSampleGuard(classifier, alpha=0.2, screen=False).push(x, t, abar, torch.float32) is None  # z = 0
    assert CPSampleGuard(classifier, alpha=0.2, screen=False).push(x, t * 0, abar, torch.float32) is not None
    eps = torch.zeros(1, *SHAPE)
    guard = CPSampleGuard(classifier, alpha=0.2, scale=5.0, tau=0.01, denoised=True, screen=False)
    rows, change = guard.push(x * 0.6, t, abar, torch.float32, eps)  # x0_hat = 0.6 x / 0.6 = x: z = -2 at t = 0
    assert rows.tolist() == [0]
    expected = _expected_change([-2.0], 5.0, 0.01, 0.36, classifier.w.detach()) / 0.6
    assert torch.allclose(change, expected, rtol=1e-4)
    # eps enters x0_hat = (x_t - sqrt(1 - abar) eps) / sqrt(abar): an eps that makes x0_hat calm fires nothing
    calm_eps = (x * 0.6 - 0.6 * _images_with_logits([1.0])) / 0.8
    assert guard.push(x * 0.6, t, abar, torch.float32, calm_eps) is None


def test_caps_shrink_each_push_to_the_cap_keep_small_ones_and_zero_ones():
    change = torch.stack([torch.full(SHAPE, 3.0), torch.full(SHAPE, 0.5), torch.zeros(SHAPE)])
    capped = CPSampleGuard._capped(change, 1.0)
    assert torch.allclose(capped[0], torch.full(SHAPE, 1.0))  # RMS 3 -> 1, direction kept
    assert torch.equal(capped[1:], change[1:])  # under the cap, and zero (no NaN): unchanged
    assert CPSampleGuard._capped(change, None) is change
    tight = CPSampleGuard._capped(change, 0.75)  # a cap under 1 leaves pushes under it alone too
    assert torch.allclose(tight[0], torch.full(SHAPE, 0.75)) and torch.equal(tight[1:], change[1:])


def test_the_x0_cap_is_the_cap_on_x0_hat_converted_to_eps():
    """cap_x0: a push d to eps moves x0_hat by sqrt(1 - abar) / sqrt(abar) d, so eps is capped at
    max_push sqrt(abar) / sqrt(1 - abar)."""
    classifier = LinearClassifier()
    big = torch.full((1, *SHAPE), 10.0)
    for abar in (0.2, 0.8):
        guard = CPSampleGuard(classifier, max_push=0.5, cap_x0=True, screen=False)
        shaped = guard._shaped(big, torch.tensor(abar))
        rms = float(shaped.pow(2).mean().sqrt())
        assert rms == pytest.approx(0.5 * math.sqrt(abar / (1 - abar)), rel=1e-5)
        on_eps = CPSampleGuard(classifier, max_push=0.5, screen=False)._shaped(big, torch.tensor(abar))
        assert float(on_eps.pow(2).mean().sqrt()) == pytest.approx(0.5, rel=1e-5)


def test_the_adaptive_scale_brings_the_confidence_back_to_alpha_to_first_order():
    """Per fired sample, s = deficit / gain capped at `scale`: deficit = log(tau + alpha) - log(tau + p_target), gain
    = sigma_t k |g|^2 with k = sqrt(abar_next / abar_t) sigma_t - sigma_next (a DDIM step)."""
    classifier = LinearClassifier()
    tau, alpha, cap = 0.01, 0.05, 50.0
    levels = [0.3, 0.5, 0.7]
    x, t = _images_with_logits([-3.5, -8.0, 6.0]), torch.full((3,), 300)
    fixed = CPSampleGuard(classifier, alpha=alpha, scale=cap, tau=tau, screen=False)
    _, fixed_change = fixed.push(x, t, torch.tensor(0.5), torch.float32)
    fixed.begin_run(levels)
    fixed.begin_step(1, len(levels))
    assert torch.equal(fixed.push(x, t, torch.tensor(0.5), torch.float32)[1], fixed_change)  # only adaptive adapts
    for index, abar_next in ((1, 0.7), (2, 1.0)):  # the last step lands on the clean image (abar 1)
        adaptive = CPSampleGuard(classifier, alpha=alpha, scale=cap, tau=tau, adaptive=True, screen=False)
        adaptive.begin_run(levels)
        adaptive.begin_step(index, len(levels))
        rows, change = adaptive.push(x, t, torch.tensor(levels[index]), torch.float32)
        sigma, sigma_next = math.sqrt(1 - levels[index]), math.sqrt(1 - abar_next)
        k = math.sqrt(abar_next / levels[index]) * sigma - sigma_next
        w = classifier.w.detach().double()
        for row, z in zip(rows.tolist(), (-3.5, -8.0, 6.0)):
            p1 = 1 / (1 + math.exp(-z))
            p = min(p1, 1 - p1)
            g = (p1 * (1 - p1) / (tau + p)) * w  # |grad log(tau + p_target)| along w
            deficit = math.log(tau + alpha) - math.log(tau + p)
            expected = min(cap, deficit / (sigma * k * float(g.pow(2).sum())))
            expected_change = _expected_change([z], expected, tau, levels[index], classifier.w.detach())
            assert torch.allclose(change[row], expected_change[0], rtol=1e-4, atol=1e-8), (index, z)
        _, unscheduled = CPSampleGuard(classifier, alpha=alpha, scale=cap, tau=tau, adaptive=True, screen=False).push(
            x, t, torch.tensor(0.5), torch.float32
        )
        assert torch.equal(unscheduled, fixed_change)  # no run schedule: the fixed scale
    past = CPSampleGuard(classifier, alpha=alpha, scale=cap, tau=tau, adaptive=True, screen=False)
    past.begin_run(levels)
    past.begin_step(len(levels), len(levels))  # a step beyond the run's schedule: its noise levels are unknown
    assert torch.equal(past.push(x, t, torch.tensor(0.5), torch.float32)[1], fixed_change)


def test_the_bfloat16_screen_keeps_exact_probabilities_for_samples_that_can_fire():
    """With the screen on, the samples it cannot clear (smaller probability below 2 alpha) are checked in float32, so
    the probabilities that decide firing are the unscreened ones; at alpha >= 0.25 nothing can be cleared."""
    from cpsample.models import Classifier, DiffusionModel

    model, classifier = DiffusionModel.from_pretrained("bundled"), Classifier.from_pretrained("bundled").model
    x0 = torch.from_numpy(model.members.images[:32])
    t = torch.full((32,), 200)
    x_t = model.schedule.add_noise(x0, torch.randn(x0.shape, generator=torch.Generator().manual_seed(1)), t)
    for alpha in (0.1, 0.3):
        exact = CPSampleGuard(classifier, alpha=alpha, screen=False)._check(x_t, t)
        screened = CPSampleGuard(classifier, alpha=alpha, screen=True)._check(x_t, t)
        doubtful = exact.min(dim=1).values < 2 * alpha
        assert torch.equal(screened[doubtful], exact[doubtful])
        assert torch.allclose(screened, exact, atol=0.05)


def test_options_refuse_knobs_outside_their_ranges_and_accept_the_ends():
    for good in (
        dict(alpha=0.0),
        dict(alpha=0.5),
        dict(scale=0.0),
        dict(max_t=0),
        dict(min_t=5, max_t=5),
        dict(max_push=1e-6, cap_x0=True),
        dict(smooth_push=0.1),
        dict(jacobian=True, denoised=True),
        dict(adaptive=True),
        dict(denoised=True),
    ):
        CPSampleOptions(**good)
    for bad, message in [
        (dict(alpha=-0.01), "alpha must lie"),
        (dict(alpha=0.51), "alpha must lie"),
        (dict(scale=-1.0), "scale must be non-negative"),
        (dict(tau=0.0), "tau must be positive"),
        (dict(max_t=-1), "max-t must be"),
        (dict(min_t=-1), "min-t must be"),
        (dict(min_t=6, max_t=5), "min-t must be"),
        (dict(max_push=0.0), "max-push must be"),
        (dict(smooth_push=0.0), "smooth-push must be"),
        (dict(cap_x0=True), "cap_x0=true says where max_push is measured; give max_push too$"),
        (
            dict(adaptive=True, denoised=True),
            "adaptive pushes are computed for x_t; they cannot be combined with denoised=true$",
        ),
        (dict(jacobian=True), "jacobian=true follows x0_hat's gradient through the UNet; it needs denoised=true$"),
    ]:
        with pytest.raises(ValueError, match="^(--)?" + message):  # the message as the user reads it
            CPSampleOptions(**bad)


def test_an_uncalibrated_classifier_says_once_which_defaults_it_uses(tmp_path, caplog):
    """No calibration.json: the knobs not given come from the paper's setting (the latent one for a latent classifier),
    and a logged warning names them, once per folder and set of missing knobs."""
    import json
    import logging

    from cpsample.sampling.guards.cpsample import LATENT_UNCALIBRATED, UNCALIBRATED

    def said() -> list[str]:
        lines = [(r.levelno, r.name, r.getMessage()) for r in caplog.records]
        caplog.clear()
        assert all(level == logging.WARNING and name.startswith("cpsample.") for level, name, _ in lines)
        return [message for _, _, message in lines]

    caplog.set_level(logging.INFO, logger="cpsample")
    pixel, latent = tmp_path / "pixel", tmp_path / "latent"
    for folder in (pixel, latent):
        folder.mkdir()
    (latent / "cpsample.json").write_text(json.dumps({"command": "train-latent-classifier"}))
    assert cpsample_settings(pixel, scale=3.0) == {**UNCALIBRATED, "scale": 3.0}
    assert said() == [
        f"{pixel} has no calibration.json; CPSample uses alpha 0.1, tau 0.001 (the paper's default; not given). "
        f"Run `cpsample calibrate --classifier {pixel}` to choose them for this model."
    ]
    cpsample_settings(pixel, scale=3.0)
    assert said() == []  # said once
    cpsample_settings(pixel, alpha=0.2)  # other knobs missing: said again, naming them
    assert "uses scale 10, tau 0.001 (the paper's default" in said()[0]
    assert cpsample_settings(latent) == LATENT_UNCALIBRATED
    assert "uses alpha 0.5, scale 2000, tau 0.001 (the paper's latent-space setting" in said()[0]
    cpsample_settings(pixel, alpha=0.1, scale=1.0, tau=0.1)
    assert said() == []  # every knob given: nothing to say


def test_settings_given_win_and_a_calibrated_window_belongs_to_its_alpha(tmp_path):
    from cpsample.sampling.guards.cpsample import UNCALIBRATED
    from cpsample.sampling.spec import write_calibration

    write_calibration(tmp_path, {"alpha": 0.2, "scale": 12.0, "tau": 0.05, "max_t": 400}, {})
    assert cpsample_settings(tmp_path) == {"alpha": 0.2, "scale": 12.0, "tau": 0.05, "max_t": 400}
    assert cpsample_settings(tmp_path, scale=3.0, tau=0.5) == {"alpha": 0.2, "scale": 3.0, "tau": 0.5, "max_t": 400}
    assert cpsample_settings(tmp_path, alpha=0.2)["max_t"] == 400  # the calibrated alpha, given: same window
    assert cpsample_settings(tmp_path, alpha=0.1)["max_t"] is None  # another alpha: every step is checked
    assert cpsample_settings(tmp_path, alpha=0.1, max_t=300)["max_t"] == 300
    assert cpsample_settings(tmp_path, max_t=100) == {"alpha": 0.2, "scale": 12.0, "tau": 0.05, "max_t": 100}
    empty = tmp_path / "uncalibrated"
    empty.mkdir()
    assert cpsample_settings(empty) == UNCALIBRATED
    assert cpsample_settings(empty, alpha=0.3, scale=1.0, tau=0.2, max_t=7) == {
        "alpha": 0.3,
        "scale": 1.0,
        "tau": 0.2,
        "max_t": 7,
    }
