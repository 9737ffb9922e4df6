"""CPSample pushes samples away from the members, never towards them: checked on one step (the classifier's confidence
in the memorised label falls) and on whole runs (nearest-member similarity falls) under every scheduler and dtype.

These are the tests a reversed push, or a guard that silently does nothing in half precision, must fail
(bench/mutation/planted/ holds such bugs; `bash bench/mutation/check_planted.sh` plants each one and runs these)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cpsample.evaluation.detector import NearCopyDetector
from cpsample.models import Classifier, DiffusionModel
from cpsample.sampling.guards.cpsample import CPSampleGuard
from cpsample.sampling.guards.staged import SELECTIVE_PART
from cpsample.sampling.pipeline import generate

N, STEPS, SEED = 48, 20, 11


@pytest.fixture(scope="module")
def bundled():
    return DiffusionModel.from_pretrained("bundled"), Classifier.from_pretrained("bundled")


@pytest.fixture(scope="module")
def selective():
    from cpsample.models.bundle import resolve_model_dir

    return Classifier.from_pretrained(resolve_model_dir("bundled", SELECTIVE_PART))


def _noised_members(model, t: int, count: int = 64):
    x0 = torch.from_numpy(model.members.images[:count])
    steps = torch.full((count,), t)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    return model.schedule.add_noise(x0, noise, steps), steps, model.schedule.alphas_cumprod[t]


def _memorised_probability(classifier, images, t, memorised):
    with torch.no_grad():
        probs = classifier(images, t).float().softmax(-1)
    return probs.gather(1, memorised[:, None]).squeeze(1)


def _ddim_to(x_t, eps, abar_t, abar_next):
    """One deterministic DDIM step with this eps (what every eps sampler does to first order)."""
    x0_hat = (x_t - (1 - abar_t).sqrt() * eps) / abar_t.sqrt()
    return abar_next.sqrt() * x0_hat + (1 - abar_next).sqrt() * eps


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_the_x_t_push_lowers_the_confidence_in_the_memorised_label(bundled, dtype):
    """The paper's rule on noised members at t = 200, where the bundled classifier is over-confident: one DDIM step
    with the guided eps leaves each fired sample less sure of the label it memorised than the plain step does."""
    model, classifier = bundled
    x_t, t, abar = _noised_members(model, 200)
    with torch.no_grad():
        eps = model.unet(x_t, t).sample
    guard = CPSampleGuard(classifier.model, alpha=0.1, scale=30.0)
    with torch.no_grad():
        probs = classifier.model(x_t, t).softmax(-1)
    memorised = probs.argmax(1)
    fired = probs.max(1).values > 0.9
    assert int(fired.sum()) >= 32, "the members must look over-confident here, or this test checks nothing"
    guarded = guard.correct((eps.to(dtype),), x_t.to(dtype), t, abar)[0].float()
    assert torch.equal(guarded[~fired], eps.to(dtype).float()[~fired]), "unguided samples are left exactly alone"
    t_next, abar_next = torch.full_like(t, 180), model.schedule.alphas_cumprod[180]
    plain_p = _memorised_probability(classifier.model, _ddim_to(x_t, eps, abar, abar_next), t_next, memorised)
    guided_p = _memorised_probability(classifier.model, _ddim_to(x_t, guarded, abar, abar_next), t_next, memorised)
    lowered = guided_p[fired] < plain_p[fired]
    assert float(lowered.float().mean()) > 0.9, f"only {float(lowered.float().mean()):.0%} of pushes moved away"
    assert float(guided_p[fired].mean()) < float(plain_p[fired].mean()) - 0.05


def test_the_guard_aims_at_the_label_the_member_was_not_given(bundled):
    """Over-confident for label 1 means guide towards 0: the fired samples' target is the opposite of the random
    label the classifier was trained to give that member (labels.json)."""
    import json

    model, classifier = bundled
    x_t, t, abar = _noised_members(model, 100)
    labels = json.loads((classifier.folder / "labels.json").read_text())
    by_index = dict(zip(labels["member_indices"], labels["labels"]))
    given = torch.tensor([by_index[int(i)] for i in model.split.members[:64]])
    with torch.no_grad():
        probs = classifier.model(x_t, t).softmax(-1)
    target = (probs[:, 1] < probs[:, 0]).long()
    fired = probs.gather(1, target[:, None]).squeeze(1) < 0.1
    assert int(fired.sum()) >= 48
    assert float((target[fired] != given[fired]).float().mean()) > 0.95


@pytest.mark.parametrize("late", [False, True])
def test_the_denoised_push_lowers_the_confidence_on_the_denoised_estimate(bundled, selective, late):
    """The selective classifier judging x0_hat (both stages of the calibrated default): the push moves x0_hat away
    from the memorised label, at the early stage's t = 400 and the late stage's t = 150."""
    model, _ = bundled
    t_value = 150 if late else 400
    x_t, t, abar = _noised_members(model, t_value)
    with torch.no_grad():
        eps = model.unet(x_t, t).sample
    guard = CPSampleGuard(selective.model, alpha=0.3, scale=15.0 if late else 3.0, denoised=True)
    sigma = (1 - abar).sqrt()
    x0_plain = (x_t - sigma * eps) / abar.sqrt()
    zero = torch.zeros_like(t)
    with torch.no_grad():
        probs = selective.model(x0_plain, zero).softmax(-1)
    memorised, fired = probs.argmax(1), probs.min(1).values < 0.3
    assert int(fired.sum()) >= 8, "some noised members must look like members on x0_hat"
    guarded = guard.correct((eps,), x_t, t, abar)[0]
    x0_guided = (x_t - sigma * guarded) / abar.sqrt()
    plain_p = _memorised_probability(selective.model, x0_plain, zero, memorised)[fired]
    guided_p = _memorised_probability(selective.model, x0_guided, zero, memorised)[fired]
    assert float((guided_p < plain_p).float().mean()) > 0.9
    assert float(guided_p.mean()) < float(plain_p.mean()) - 0.05


@pytest.fixture(scope="module")
def detector(bundled):
    return NearCopyDetector(bundled[0].members.images)


def _mean_similarity(detector, result) -> float:
    return float(np.mean(detector.similarity(result.images)))


@pytest.mark.parametrize("scheduler", ["ddim", "ddpm", "dpm++"])
@pytest.mark.parametrize("one_stage", [False, True], ids=["calibrated", "paper-x_t-rule"])
def test_the_guard_moves_whole_runs_away_from_the_members_under_every_scheduler(
    bundled, detector, scheduler, one_stage
):
    """From the same noise, guarded samples sit further from their nearest member than plain ones and copy less: the
    calibrated default (two stages on x0_hat) and the paper's rule on x_t with the calibrated one-stage knobs."""
    model, _ = bundled
    run = dict(n=N, steps=STEPS, scheduler=scheduler, seed=SEED, batch_size=N, progress=False)
    plain = generate(model, **run)
    guarded = generate(model, guard="cpsample", **run, **({"one_stage": True} if one_stage else {}))
    fired = guarded.trace["fired"]
    assert fired.sum() > 0
    plain_sim, guarded_sim = _mean_similarity(detector, plain), _mean_similarity(detector, guarded)
    assert guarded_sim < plain_sim - 0.05, (plain_sim, guarded_sim)
    assert detector.share(guarded.images) < detector.share(plain.images) / 2


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_the_guard_acts_in_half_precision(bundled, detector, dtype):
    """Half-precision runs are guarded as float32 ones are: the guard fires, and samples move away from the members."""
    model = DiffusionModel.from_pretrained("bundled")  # generate casts the model in place: a copy of our own
    run = dict(n=N, steps=STEPS, seed=SEED, batch_size=N, dtype=dtype, progress=False)
    plain = generate(model, **run)
    guarded = generate(model, guard="cpsample", one_stage=True, **run)
    assert guarded.trace["fired"].sum() > 0, "the guard never fired"
    assert torch.isfinite(guarded.images).all()
    plain_sim, guarded_sim = _mean_similarity(detector, plain), _mean_similarity(detector, guarded)
    assert guarded_sim < plain_sim - 0.05, (plain_sim, guarded_sim)
    assert detector.share(guarded.images) < detector.share(plain.images) / 2
