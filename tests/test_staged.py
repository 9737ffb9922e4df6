"""CPSample judged on the denoised estimate, and the two-stage guard built from it (bench/README.md, Finding 9)."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cpsample.cli.main import app
from cpsample.models import Classifier, DiffusionModel
from cpsample.models.bundle import resolve_model_dir
from cpsample.models.classifier import load_classifier
from cpsample.sampling.guards import GuardContext, build_guard, guard_options
from cpsample.sampling.guards.cpsample import CPSampleGuard
from cpsample.sampling.guards.staged import SELECTIVE_PART, StagedCPSampleGuard
from cpsample.sampling.pipeline import generate


@pytest.fixture(scope="module")
def bundled():
    return DiffusionModel.from_pretrained("bundled")


@pytest.fixture(scope="module")
def selective():
    return load_classifier(resolve_model_dir("bundled", SELECTIVE_PART), "cpu")


def test_the_bundled_selective_classifier_is_sure_of_members_and_not_of_most_other_digits(bundled, selective):
    """What the early stage relies on: at t = 0 it is over-confident (alpha 0.01) on the members it memorised and on
    a minority of held-out digits. The paper's classifier, for contrast, is sure of most held-out digits too."""
    paper = Classifier.from_pretrained("bundled").model
    members = torch.from_numpy(bundled.members.images)
    heldout = torch.from_numpy(bundled.nonmembers.images[:400])

    def sure(classifier, images):
        with torch.no_grad():
            p = classifier(images, torch.zeros(len(images), dtype=torch.long)).softmax(-1)
        return float((p.min(-1).values < 0.01).float().mean())

    assert sure(selective, members) >= 0.95
    assert sure(selective, heldout) <= 0.35
    assert sure(paper, heldout) >= 2 * sure(selective, heldout)


def test_denoised_push_is_the_x0_gradient_carried_back_to_x_t(bundled, selective):
    """Noised members at t = 300 with the true noise as eps: the guard judges x0_hat (= the member) at t = 0 and
    pushes by s sqrt(1 - abar) / sqrt(abar) * grad_x0 log(tau + p_target), exactly."""
    x0 = torch.from_numpy(bundled.members.images[:32])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    t = torch.full((32,), 300)
    abar = bundled.schedule.alphas_cumprod[300]
    x_t = bundled.schedule.add_noise(x0, noise, t)
    guard = CPSampleGuard(selective, alpha=0.01, scale=3.0, tau=0.001, denoised=True)
    rows, change = guard.push(x_t, t, abar, torch.float32, eps=noise)
    assert len(rows) >= 28, "x0_hat is the member itself, which the selective classifier memorised"

    x0_hat = ((x_t - (1 - abar).sqrt() * noise) / abar.sqrt())[rows].requires_grad_(True)
    p = selective(x0_hat, torch.zeros(len(rows), dtype=torch.long)).softmax(-1)
    target = (p[:, 1] < p[:, 0]).long()
    grad = torch.autograd.grad(torch.log(0.001 + p.gather(1, target[:, None])).sum(), x0_hat)[0]
    torch.testing.assert_close(change, 3.0 * (1 - abar).sqrt() / abar.sqrt() * grad, rtol=1e-4, atol=1e-6)
    assert guard.settings()["denoised"] is True


def test_denoised_cannot_be_adaptive_and_stage_options_are_validated():
    with pytest.raises(ValueError, match="cannot be combined"):
        guard_options("cpsample", adaptive=True, denoised=True)
    with pytest.raises(ValueError, match="alpha must lie in"):
        guard_options("cpsample-staged", early_alpha=0.7)
    with pytest.raises(ValueError, match="has no option adaptive"):
        guard_options("cpsample-staged", adaptive=True)


def test_staged_guard_is_the_early_then_the_late_stage(bundled, selective):
    """One step applies the early (denoised) correction, then the late one on its result; "fired" is either stage's."""
    staged = build_guard("cpsample-staged", GuardContext(classifier="bundled"))
    assert isinstance(staged, StagedCPSampleGuard)
    early, late = staged.guards
    assert early.denoised and not late.denoised and (early.max_t, late.max_t) == (500, 200)
    x0 = torch.from_numpy(bundled.members.images[:16])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    t = torch.full((16,), 180)
    abar = bundled.schedule.alphas_cumprod[180]
    x_t = bundled.schedule.add_noise(x0, noise, t)
    (staged_eps,) = staged.correct((noise,), x_t, t, abar)
    solo_early = CPSampleGuard(selective, alpha=0.01, scale=3.0, tau=0.001, max_t=500, denoised=True)
    solo_late = CPSampleGuard(late.classifier, alpha=0.1, scale=10.0, tau=0.001, max_t=200)
    (expected,) = solo_late.correct(solo_early.correct((noise,), x_t, t, abar), x_t, t, abar)
    assert torch.equal(staged_eps, expected) and not torch.equal(staged_eps, noise)
    fired = staged.trace["fired"][0]
    assert np.array_equal(fired, np.logical_or(solo_early.trace["fired"][0], solo_late.trace["fired"][0]))
    assert fired.any()


def test_sample_command_runs_the_staged_guard_and_records_both_stages(tmp_path):
    out = tmp_path / "staged"
    result = CliRunner().invoke(app, ["sample", "--guard", "cpsample-staged", "-n", "8", "--steps", "10", "--seed", "0",
                                      "-o", "early_scale=2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "cpsample.json").read_text())
    settings = record["settings"]["guard_settings"]
    assert settings["early"]["scale"] == 2.0 and settings["early"]["denoised"] is True
    assert settings["late"]["max_t"] == 200
    assert 0.0 < record["results"]["share_of_steps_guided"] < 1.0
    library = generate(n=8, steps=10, seed=0, guard="cpsample-staged", early_scale=2.0, progress=False)
    assert np.allclose(np.load(out / "samples.npz")["images"], library.images.numpy(), atol=1e-5)


def test_staged_guard_refuses_an_early_classifier_of_other_members(tmp_path):
    """Both stages' classifiers go through the fit check, not only the main one."""
    import shutil

    other = tmp_path / "selective"
    shutil.copytree(resolve_model_dir("bundled", SELECTIVE_PART), other)
    split = json.loads((other / "split.json").read_text())
    split["members"] = split["members"][1:] + split["nonmembers"][:1]
    (other / "split.json").write_text(json.dumps(split))
    with pytest.raises(ValueError, match="other member images"):
        generate(n=2, steps=2, guard="cpsample-staged", early_classifier=str(other), progress=False)
