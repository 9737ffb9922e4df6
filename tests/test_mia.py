"""Membership inference on real MNIST: an overfit denoiser gives its members away, unseen sets do not, guards are
honoured."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.stats import norm
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from cpsample.attacks import loss_attack, pia_attack, plot_attacks, separation, tpr_at_fpr, z_test
from cpsample.attacks.metrics import roc
from cpsample.attacks.mia import pick_images, row_noise
from cpsample.data import make_split
from cpsample.models import TimeClassifier, build_noise_schedule, load_denoiser
from cpsample.sampling.guards import CPSampleGuard, Guard
from cpsample.training.denoiser import train_denoiser
from cpsample.training.loop import TrainConfig

MEMBERS, HELD_OUT = 8, 48
FAST = dict(timesteps=(100, 200), draws=2, progress=False)


@pytest.fixture(scope="module")
def overfit(tmp_path_factory, mnist16):
    """A tiny denoiser trained 400 steps on 8 real MNIST digits (about 20 s on 2 idle cores), plus two unseen digit
    sets."""
    split = make_split(len(mnist16), MEMBERS, 0, "mnist")
    folder = tmp_path_factory.mktemp("overfit")
    config = TrainConfig(steps=400, batch_size=8, lr=2e-3, save_every=10_000, log_every=100)
    train_denoiser(
        mnist16.take(split.members), split, folder, config, block_out_channels=(16, 32, 32), data_spec="mnist"
    )
    unet, schedule = load_denoiser(folder)
    # The bundled MNIST is sorted by digit: draw held-out images at random, never as a slice.
    held_out = np.random.default_rng(0).choice(split.nonmembers, 2 * HELD_OUT, replace=False)
    return SimpleNamespace(
        folder=folder,
        unet=unet,
        schedule=schedule,
        members=mnist16.take(split.members),
        nonmembers=mnist16.take(held_out[:HELD_OUT]),
        other_nonmembers=mnist16.take(held_out[HELD_OUT:]),
    )


class IdentityGuard(Guard):
    name = "identity"

    def __init__(self):
        super().__init__()
        self.calls = 0

    def adjust(self, eps, x_t, t, abar_t):
        self.calls += 1
        return eps


class ShiftGuard(Guard):
    name = "shift"

    def adjust(self, eps, x_t, t, abar_t):
        return eps + 0.5


# --- the attacks on a real overfit model ---------------------------------------------------------------------------


def test_loss_attack_finds_the_members_of_an_overfit_model(overfit):
    result = loss_attack(overfit.unet, overfit.schedule, overfit.members, overfit.nonmembers, **FAST)
    assert (result.n_members, result.n_nonmembers) == (MEMBERS, HELD_OUT)
    assert set(result.per_t) == {100, 200}
    assert result.auc > 0.85
    assert result.best.p_value < 1e-4 and result.best.z > 3
    assert result.best.member_mean < result.best.nonmember_mean


def test_identical_sets_are_indistinguishable(overfit):
    # Row i of both sets gets the same noise, so identical sets give identical scores, tied in pairs: chance exactly.
    result = loss_attack(overfit.unet, overfit.schedule, overfit.nonmembers, overfit.nonmembers, **FAST)
    for stats in result.per_t.values():
        assert stats.auc == pytest.approx(0.5) and stats.z == 0.0 and stats.p_value == 0.5
        assert stats.tpr_at_1pct_fpr == pytest.approx(0.01)  # pairwise ties: the ROC is the diagonal


def test_two_unseen_sets_are_not_told_apart(overfit):
    result = loss_attack(overfit.unet, overfit.schedule, overfit.other_nonmembers, overfit.nonmembers, **FAST)
    for stats in result.per_t.values():
        assert 0.3 < stats.auc < 0.7
        assert stats.p_value > 0.01


def test_pia_on_an_exact_memoriser_scores_members_zero(mnist16):
    """The optimal denoiser of the empirical member distribution memorises perfectly: PIA must separate completely."""
    schedule = build_noise_schedule()
    members, nonmembers = mnist16.take(range(0, 5000, 500)), mnist16.take(range(250, 5000, 500))
    memoriser = EmpiricalDenoiser(torch.from_numpy(members.images), schedule.alphas_cumprod)
    pia = pia_attack(memoriser, schedule, members, nonmembers, timesteps=(200,), progress=False)
    assert pia.auc == 1.0
    assert pia.member_scores[200].max() < 1e-3 < pia.nonmember_scores[200].min()
    loss = loss_attack(memoriser, schedule, members, nonmembers, timesteps=(100,), draws=2, progress=False)
    assert loss.auc == 1.0


class EmpiricalDenoiser:
    """eps_hat(x_t, t) = (x_t - sqrt(abar) E[x0 | x_t]) / sqrt(1 - abar), x0 uniform over the member images."""

    def __init__(self, images: torch.Tensor, alphas_cumprod: torch.Tensor):
        self.images, self.alphas_cumprod = images.double(), alphas_cumprod.double()

    def __call__(self, x_t, t):
        abar = self.alphas_cumprod[t[0]]
        x = x_t.double()
        distances = torch.cdist(x.flatten(1), abar.sqrt() * self.images.flatten(1)) ** 2
        weights = torch.softmax(-distances / (2 * (1 - abar)), dim=1)
        x0 = (weights @ self.images.flatten(1)).view_as(x)
        return ((x - abar.sqrt() * x0) / (1 - abar).sqrt()).to(x_t.dtype)


def test_scores_do_not_depend_on_batch_size(overfit):
    small = loss_attack(
        overfit.unet, overfit.schedule, overfit.members, overfit.nonmembers.take(range(10)), batch_size=5, **FAST
    )
    large = loss_attack(
        overfit.unet, overfit.schedule, overfit.members, overfit.nonmembers.take(range(10)), batch_size=64, **FAST
    )
    for t in small.per_t:
        np.testing.assert_allclose(small.member_scores[t], large.member_scores[t], rtol=1e-5)
    assert torch.equal(row_noise(3, 1, [7], (1, 4, 4)), row_noise(3, 1, range(5, 9), (1, 4, 4))[2:3])


# --- guards --------------------------------------------------------------------------------------------------------


def test_a_guard_that_changes_nothing_gives_the_plain_scores(overfit):
    args = (overfit.unet, overfit.schedule, overfit.members, overfit.nonmembers.take(range(16)))
    for attack, options in ((loss_attack, FAST), (pia_attack, dict(timesteps=(200,), progress=False))):
        guard = IdentityGuard()
        plain, guarded = attack(*args, **options), attack(*args, guard=guard, **options)
        assert guard.calls > 0
        for t in plain.per_t:
            assert np.array_equal(plain.member_scores[t], guarded.member_scores[t])
            assert np.array_equal(plain.nonmember_scores[t], guarded.nonmember_scores[t])


def test_the_guard_adjustment_reaches_the_scores(overfit):
    args = (overfit.unet, overfit.schedule, overfit.members, overfit.nonmembers.take(range(16)))
    plain, shifted = loss_attack(*args, **FAST), loss_attack(*args, guard=ShiftGuard(), **FAST)
    assert (
        shifted.best.member_mean > plain.best.member_mean + 0.1
    )  # eps + 0.5 adds about 0.25 to the mean squared error


def test_cpsample_guard_runs_with_classifier_gradients(overfit):
    torch.manual_seed(0)
    classifier = TimeClassifier(sample_size=16, in_channels=1, block_out_channels=(16, 32, 32))
    guard = CPSampleGuard(classifier, alpha=0.5, scale=10.0)  # alpha 0.5: fires on every image
    args = (overfit.unet, overfit.schedule, overfit.members.take(range(8)), overfit.nonmembers.take(range(8)))
    plain, guarded = pia_attack(*args, progress=False), pia_attack(*args, guard=guard, progress=False)
    assert not np.allclose(plain.member_scores[200], guarded.member_scores[200])
    assert guarded.guard_fired[200] == {"members": 1.0, "nonmembers": 1.0}
    assert guarded.settings["guard"]["guard"] == "cpsample"


# --- statistics by hand --------------------------------------------------------------------------------------------


def test_tpr_at_1pct_fpr_matches_hand_computation():
    # 100 non-members; members 1, 2, 3, 5 and one non-member at 4: the threshold just above 5 flags all 4 members
    # and exactly 1 non-member, so TPR at FPR 1% is 100% (the top of the jump, not the 75% before it).
    members, nonmembers = [1, 2, 3, 5], [4] + list(range(10, 109))
    assert tpr_at_fpr(*roc(members, nonmembers), 0.01) == 1.0
    # 50 non-members, one tied with member 2: the ROC goes from (0, 1/4) straight to (1/50, 2/4) through the tie,
    # so at FPR 1% (halfway) TPR is 3/8. The step reading would say 1/4.
    members, nonmembers = [1, 2, 3, 4], [2] + list(range(10, 59))
    assert tpr_at_fpr(*roc(members, nonmembers), 0.01) == pytest.approx(0.375)
    assert separation(members, nonmembers).tpr_at_1pct_fpr == pytest.approx(0.375)


def test_z_test_matches_the_paper_formula():
    members, nonmembers = [1.0, 2.0, 3.0], [2.0, 3.0, 4.0, 5.0]
    z = (3.5 - 2.0) / math.sqrt((5 / 3) / 4 + 1.0 / 3)  # (mu_test - mu_train) / sqrt(V_test/m + V_train/n)
    assert z_test(members, nonmembers) == pytest.approx((z, norm.sf(z)))
    assert z_test(nonmembers, members)[1] > 0.9  # members scoring higher is no evidence of membership


# --- errors, selection, figure -------------------------------------------------------------------------------------


def test_clear_errors(overfit):
    unet, schedule, members = overfit.unet, overfit.schedule, overfit.members
    with pytest.raises(ValueError, match="non-members: no images"):
        loss_attack(unet, schedule, members, np.zeros((0, 1, 16, 16), np.float32), progress=False)
    with pytest.raises(ValueError, match="per image but non-members"):
        loss_attack(unet, schedule, members, np.zeros((4, 1, 8, 8), np.float32), progress=False)
    with pytest.raises(ValueError, match="denoiser expects"):
        loss_attack(
            unet, schedule, np.zeros((4, 3, 16, 16), np.float32), np.zeros((4, 3, 16, 16), np.float32), progress=False
        )
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 999\]"):
        loss_attack(unet, schedule, members, overfit.nonmembers, timesteps=(1000,), progress=False)
    with pytest.raises(ValueError, match=r"\[1, 999\]"):
        pia_attack(unet, schedule, members, overfit.nonmembers, timesteps=(0,), progress=False)
    with pytest.raises(ValueError, match="at least 2 member"):
        separation([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="only 3"):
        pick_images([0, 1, 2], [3, 4, 5], 4, None, seed=0)
    with pytest.raises(ValueError, match="no non-members"):
        pick_images([0, 1, 2], [], None, None, seed=0)


def test_pick_images_is_balanced_random_and_seeded():
    members, nonmembers = list(range(10)), list(range(10, 1000))
    chosen_members, chosen_nonmembers = pick_images(members, nonmembers, None, None, seed=1)
    assert chosen_members == members and len(chosen_nonmembers) == 10
    assert chosen_nonmembers != list(range(10, 20))  # random, not the first ones
    assert pick_images(members, nonmembers, 4, 7, seed=1) == pick_images(members, nonmembers, 4, 7, seed=1)
    assert len(pick_images(members, list(range(10, 15)), None, None, seed=0)[1]) == 5  # default shrinks to what exists


def test_roc_figure_is_written(tmp_path, overfit):
    result = loss_attack(overfit.unet, overfit.schedule, overfit.members, overfit.nonmembers, **FAST)
    path = plot_attacks({"loss": result}, tmp_path / "roc.png", title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _assert_drawn_figure(path)


def _assert_drawn_figure(path):
    """A real picture: a PNG that opens, of a plot's size, with lines on it (not one flat colour)."""
    from PIL import Image

    with Image.open(path) as picture:
        assert picture.format == "PNG" and min(picture.size) > 100
        grey = np.asarray(picture.convert("L")).astype(int)
    assert grey.std() > 5 and (grey < 128).mean() > 0.001


# --- CLI -------------------------------------------------------------------------------------------------------------


def test_mia_cli_writes_result_roc_and_record(tmp_path, overfit, attack_app):
    out = tmp_path / "mia"
    result = CliRunner().invoke(
        attack_app,
        [
            "attack",
            "mia",
            "--model",
            str(overfit.folder),
            "--out",
            str(out),
            "--members",
            "6",
            "--nonmembers",
            "12",
            "--t",
            "100",
            "--t",
            "200",
            "--draws",
            "1",
            "--seed",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "result.json").read_text())
    assert set(summary) == {"loss", "pia"}
    assert summary["loss"]["n_members"] == 6 and summary["loss"]["n_nonmembers"] == 12
    assert set(summary["loss"]["per_t"]) == {"100", "200"} and len(summary["pia"]["member_scores"]["100"]) == 6
    record = json.loads((out / "cpsample.json").read_text())
    assert (
        record["command"] == "attack mia" and record["settings"]["seed"] == 3 and record["settings"]["t"] == [100, 200]
    )
    assert 0.0 <= record["results"]["loss"]["auc"] <= 1.0
    assert (out / "roc.png").stat().st_size > 0
    assert "membership inference" in result.output
    # every AUC recorded is that of the saved scores (a lower score flags a member), and the best t is the best one
    for attack in ("loss", "pia"):
        per_t = {}
        for t in ("100", "200"):
            members, nonmembers = summary[attack]["member_scores"][t], summary[attack]["nonmember_scores"][t]
            assert (len(members), len(nonmembers)) == (6, 12)
            per_t[t] = roc_auc_score([1] * 6 + [0] * 12, -np.r_[members, nonmembers])
            assert summary[attack]["per_t"][t]["auc"] == pytest.approx(per_t[t]), (attack, t)
        best = str(summary[attack]["best_t"])
        assert per_t[best] == max(per_t.values()) and record["results"][attack]["auc"] == pytest.approx(per_t[best])
    # the model memorised its 8 members: the loss attack finds them (measured AUC 1.0 on 6 vs 12)
    assert record["results"]["loss"]["auc"] > 0.85 and record["results"]["loss"]["p_value"] < 0.01
    assert f"{record['results']['loss']['auc']:.3f}" in result.output  # the table printed says the same
    _assert_drawn_figure(out / "roc.png")


def test_mia_cli_rejects_bad_input_clearly(tmp_path, overfit, attack_app):
    base = ["attack", "mia", "--model", str(overfit.folder), "--out", str(tmp_path)]
    for arguments, message in (
        (base + ["--attack", "magic"], "unknown attack"),
        (base + ["--members", "99"], "split has only 8"),
        (base + ["--t", "1000"], "timesteps must lie in"),
        (["attack", "mia", "--out", str(tmp_path), "--model", str(tmp_path / "nope")], "no denoiser here"),
    ):
        result = CliRunner().invoke(attack_app, arguments)
        assert result.exit_code == 2, result.output
        assert message in " ".join(result.output.split())  # rich wraps long lines
        assert "Traceback" not in result.output


def test_mia_cli_attacks_the_calibrated_two_stage_default(tmp_path, attack_app):
    """The bundled classifier's calibration chose two stages: `--guard cpsample` with no knob attacks that guard
    (the title says so) instead of failing on knobs a two-stage guard does not have at its top level."""
    out = tmp_path / "mia"
    result = CliRunner().invoke(
        attack_app,
        [
            "attack",
            "mia",
            "--model",
            "bundled",
            "--classifier",
            "bundled",
            "--guard",
            "cpsample",
            "--out",
            str(out),
            "--members",
            "6",
            "--nonmembers",
            "6",
            "--t",
            "100",
            "--draws",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "two stages" in " ".join(result.output.split())
    summary = json.loads((out / "result.json").read_text())
    assert summary["loss"]["settings"]["guard"]["guard"] == "cpsample-staged"
