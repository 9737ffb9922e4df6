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
from cpsample.sampling.guards import GuardContext
from cpsample.sampling.guards.cpsample import CPSampleGuard
from cpsample.sampling.guards.staged import SELECTIVE_PART, StagedCPSampleGuard
from cpsample.sampling.pipeline import generate
from cpsample.sampling.spec import build_guard, guard_options


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


def test_jacobian_push_follows_x0_hat_through_the_unet(bundled, selective):
    """jacobian=true: the push is s sqrt(1 - abar) J^T grad_x0 log(tau + p_target), J = d x0_hat / d x_t of the UNet's
    own prediction (computed here as a separate vector-Jacobian product), for the same fired samples as the rule
    that holds eps fixed; at t = 300 the UNet's J shrinks the push (x0_hat depends on x_t less than 1 / sqrt(abar))."""
    unet = bundled.unet.requires_grad_(False)
    x0 = torch.from_numpy(bundled.members.images[:24])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    t = torch.full((24,), 300)
    abar = bundled.schedule.alphas_cumprod[300]
    x_t = bundled.schedule.add_noise(x0, noise, t)
    with torch.no_grad():
        eps = unet(x_t, t).sample
    fixed = CPSampleGuard(selective, alpha=0.01, scale=3.0, tau=0.001, denoised=True)
    through = CPSampleGuard(
        selective, alpha=0.01, scale=3.0, tau=0.001, denoised=True, denoiser=lambda x, steps: unet(x, steps).sample
    )
    rows, fixed_change = fixed.push(x_t, t, abar, torch.float32, eps=eps)
    same_rows, change = through.push(x_t, t, abar, torch.float32, eps=eps)
    assert torch.equal(rows, same_rows) and len(rows) >= 6

    def x0_of(x):
        return (x - (1 - abar).sqrt() * unet(x, t[rows]).sample) / abar.sqrt()

    x0_hat = x0_of(x_t[rows]).detach().requires_grad_(True)
    p = selective(x0_hat, torch.zeros(len(rows), dtype=torch.long)).softmax(-1)
    target = (p[:, 1] < p[:, 0]).long()
    grad_x0 = torch.autograd.grad(torch.log(0.001 + p.gather(1, target[:, None])).sum(), x0_hat)[0]
    _, vjp = torch.autograd.functional.vjp(x0_of, x_t[rows], grad_x0)
    torch.testing.assert_close(change, 3.0 * (1 - abar).sqrt() * vjp, rtol=1e-3, atol=1e-6)
    assert change.norm() < 0.5 * fixed_change.norm()
    assert through.settings()["jacobian"] is True and "jacobian" not in fixed.settings()


def test_jacobian_option_needs_the_denoised_judge_and_reaches_both_selective_stages():
    with pytest.raises(ValueError, match="needs denoised=true"):
        guard_options("cpsample", jacobian=True)
    staged = build_guard("cpsample-staged", GuardContext(classifier="bundled"), late_denoised=True, jacobian=True)
    assert all(stage.denoiser is not None and stage.unet is not None for stage in staged.guards)
    assert staged.settings()["late"]["jacobian"] is True
    x_t_late = build_guard("cpsample-staged", GuardContext(classifier="bundled"), jacobian=True).guards[1]
    assert x_t_late.denoiser is None, "the paper's x_t stage has no x0_hat to follow"


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


def test_a_selective_late_stage_is_the_early_classifier_judging_x0_hat_late(bundled, selective):
    """late_denoised: the late stage (t <= 200) is the early classifier on x0_hat with the late knobs; the main
    classifier is not used at all."""
    staged = build_guard(
        "cpsample-staged", GuardContext(classifier="bundled"), late_denoised=True, alpha=0.1, scale=10.0
    )
    early, late = staged.guards
    assert (
        late.denoised
        and late.classifier is early.classifier
        and (late.alpha, late.scale, late.max_t) == (0.1, 10.0, 200)
    )
    x0 = torch.from_numpy(bundled.members.images[:16])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    t, abar = torch.full((16,), 180), bundled.schedule.alphas_cumprod[180]
    x_t = bundled.schedule.add_noise(x0, noise, t)
    solo = CPSampleGuard(selective, alpha=0.1, scale=10.0, tau=0.001, max_t=200, denoised=True)
    (expected,) = solo.correct(
        CPSampleGuard(selective, alpha=0.01, scale=3.0, tau=0.001, max_t=500, denoised=True).correct(
            (noise,), x_t, t, abar
        ),
        x_t,
        t,
        abar,
    )
    (staged_eps,) = staged.correct((noise,), x_t, t, abar)
    assert torch.equal(staged_eps, expected) and solo.trace["fired"][0].any()
    assert staged.settings()["late"]["denoised"] is True


def test_sample_command_runs_the_staged_guard_and_records_both_stages(tmp_path):
    out = tmp_path / "staged"
    result = CliRunner().invoke(
        app,
        [
            "sample",
            "--model",
            "bundled",
            "--classifier",
            "bundled",
            "--guard",
            "cpsample-staged",
            "-n",
            "8",
            "--steps",
            "10",
            "--seed",
            "0",
            "-o",
            "early_scale=2",
            "--out",
            str(out),
        ],
    )
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


def _classifier_with_calibration(tmp_path, two_stage: dict | None):
    """A copy of the bundled classifier whose calibration.json chose one stage, plus two stages when given."""
    import shutil

    from cpsample.sampling.spec import write_calibration

    folder = tmp_path / "clf"
    shutil.copytree(resolve_model_dir("bundled", "classifier"), folder)
    one_stage = {"alpha": 0.05, "scale": 20.0, "tau": 0.001, "max_t": 300}
    write_calibration(folder, one_stage, {} if two_stage is None else {"two_stage": two_stage})
    return folder, one_stage


def test_a_two_stage_calibration_makes_cpsample_two_stage_unless_one_stage_or_a_knob_is_asked_for(tmp_path):
    early = tmp_path / "selective"
    import shutil

    shutil.copytree(resolve_model_dir("bundled", SELECTIVE_PART), early)
    two_stage = {"early_classifier": str(early), "early_scale": 1.0, "alpha": 0.1, "scale": 30.0, "tau": 0.001}
    folder, one_stage = _classifier_with_calibration(tmp_path, two_stage)
    context = GuardContext(classifier=str(folder))

    default = build_guard("cpsample", context)
    assert isinstance(default, StagedCPSampleGuard)
    settings = default.settings()
    assert settings["early"]["scale"] == 1.0 and settings["late"]["scale"] == 30.0 and settings["late"]["max_t"] == 200
    assert [guard.folder for guard in default.guards] == [early, folder]  # both checked against the model
    for asked in ({"one_stage": True}, {"scale": 20.0}, {"alpha": 0.05}):
        guard = build_guard("cpsample", context, **asked)
        assert type(guard) is CPSampleGuard, asked
        assert {key: guard.settings()[key] for key in ("alpha", "scale")} == {"alpha": 0.05, "scale": 20.0}
    assert build_guard("cpsample", context, one_stage=True).max_t == 300  # the one-stage calibration, window and all

    # the same default reaches the samplers: generate and the CLI record the two stages
    result = generate(n=4, steps=6, guard="cpsample", classifier=str(folder), progress=False)
    assert result.guard_settings["guard"] == "cpsample-staged" and result.trace["fired"].shape == (6, 4)
    assert "p1" in result.trace, "the late stage's p(y=1 | x_t), for trace plots"


def test_a_two_stage_calibration_whose_early_classifier_is_gone_says_what_to_do(tmp_path):
    folder, _ = _classifier_with_calibration(
        tmp_path,
        {"early_classifier": str(tmp_path / "gone"), "early_scale": 3.0, "alpha": 0.1, "scale": 10.0, "tau": 0.001},
    )
    with pytest.raises(ValueError, match="one_stage=true"):
        build_guard("cpsample", GuardContext(classifier=str(folder)))
    assert type(build_guard("cpsample", GuardContext(classifier=str(folder)), one_stage=True)) is CPSampleGuard


def test_stages_can_be_kept_apart_with_early_min_t_and_the_late_stage_can_stop_early(bundled):
    """early_min_t = late max_t + 1: no step runs both classifiers (the early stage skips t <= 200); min_t: the late
    stage skips the last, low-noise steps."""
    staged = build_guard("cpsample-staged", GuardContext(classifier="bundled"), early_min_t=201, min_t=80)
    result = generate(model=bundled, n=6, steps=10, guard=staged, progress=False)

    def checked_steps(stage):
        return set(result.timesteps[~np.isnan(result.trace[f"{stage}:cpsample.p1"]).all(axis=1)])

    assert checked_steps(0) == {t for t in result.timesteps if 201 <= t <= 500}
    assert checked_steps(1) == {t for t in result.timesteps if 80 <= t <= 200}
    assert staged.guards[1].settings()["min_t"] == 80
    with pytest.raises(ValueError, match="min-t"):
        guard_options("cpsample-staged", early_min_t=600)
    with pytest.raises(ValueError, match="min-t"):
        guard_options("cpsample-staged", min_t=300)


def test_calibrate_lets_two_stages_compete_and_saves_the_winner_as_the_default(tmp_path):
    from cpsample.calibration.search import GridSettings, choose_setting, two_stage_calibration

    rows = [
        {
            "guard": "none",
            "alpha": None,
            "scale": None,
            "near_copy_share": 0.3,
            "frechet_distance": 5.0,
            "steps_guided": None,
        },
        {
            "guard": "cpsample",
            "alpha": 0.1,
            "scale": 10,
            "near_copy_share": 0.03,
            "frechet_distance": 9.0,
            "steps_guided": 0.1,
        },
        {
            "guard": "cpsample-staged",
            "alpha": 0.1,
            "scale": 10,
            "early_scale": 3.0,
            "near_copy_share": 0.02,
            "frechet_distance": 7.0,
            "steps_guided": 0.1,
        },
    ]
    chosen = choose_setting(rows, reduction=0.9)
    assert chosen["guard"] == "cpsample-staged"
    saved = two_stage_calibration(chosen, GridSettings(early_classifier="bundled"))
    # the stages take turns: the early stage stops where the late one (t <= 200) starts
    assert saved == {
        "early_classifier": "bundled",
        "early_scale": 3.0,
        "early_min_t": 201,
        "alpha": 0.1,
        "scale": 10,
        "tau": 0.001,
    }
    assert two_stage_calibration(rows[1], GridSettings(early_classifier="bundled")) is None

    # end to end: the two-stage rows are measured, and what `sample --guard cpsample` then runs is what won
    import shutil

    classifier = tmp_path / "clf"
    shutil.copytree(resolve_model_dir("bundled", "classifier"), classifier)
    runner = CliRunner()
    calibrated = runner.invoke(
        app,
        [
            "calibrate",
            "--out",
            str(tmp_path / "calib"),
            "--classifier",
            str(classifier),
            "--n-samples",
            "6",
            "--steps",
            "4",
            "--alphas",
            "0.3",
            "--scales",
            "5",
            "--early-classifier",
            str(resolve_model_dir("bundled", SELECTIVE_PART)),
            "--early-scales",
            "1",
            "--staged-scales",
            "10",
            "--denoised-late-scales",
            "5",
            "--push-caps",
            "none,0.5",
            "--target",
            "1.0",
            "--reduction",
            "0",
        ],
    )
    assert calibrated.exit_code == 0, calibrated.output
    report = json.loads((tmp_path / "calib" / "calibration_run.json").read_text())
    assert [(r["guard"], r["early_scale"], r["scale"], r["max_push"], r["late_denoised"]) for r in report["rows"]] == [
        ("none", None, None, None, False),
        ("cpsample", None, 5.0, None, False),
        ("cpsample-staged", 1.0, 10.0, None, False),
        ("cpsample-staged", 1.0, 5.0, None, True),
        ("cpsample-staged", 1.0, 10.0, 0.5, False),
        ("cpsample-staged", 1.0, 5.0, 0.5, True),
    ]
    saved = json.loads((classifier / "calibration.json").read_text())
    assert ("two_stage" in saved) == (report["chosen"]["guard"] == "cpsample-staged")
    # two stages win here: on the screen one stage at s 5 costs FD 173 against 147 for each two-stage row (measured),
    # so only two-stage rows go on to the confirmation round, and the one it keeps is saved with its cap and judge
    chosen = report["chosen"]
    one_stage, *two_stage_rows = report["rows"][1:]
    assert one_stage["frechet_distance"] > max(row["frechet_distance"] for row in two_stage_rows)
    assert [row["guard"] for row in report["confirmation"]["rows"]] == ["none"] + ["cpsample-staged"] * 4
    assert chosen["guard"] == "cpsample-staged" and chosen in report["confirmation"]["rows"]
    cap = {} if chosen["max_push"] is None else {"max_push": chosen["max_push"]}
    judge = {"late_denoised": True} if chosen["late_denoised"] else {}
    assert saved["two_stage"] == {
        "early_classifier": str(resolve_model_dir("bundled", SELECTIVE_PART)),
        "early_scale": 1.0,
        "early_min_t": 201,
        "alpha": 0.3,
        "scale": chosen["scale"],
        "tau": 0.001,
        **cap,
        **judge,
    }
    assert saved["two_stage"].get("max_push") == report["chosen"]["max_push"]
    assert saved["two_stage"].get("late_denoised", False) == report["chosen"]["late_denoised"]
    assert saved["settings"]["alpha"] == 0.3  # the one-stage rule keeps its own calibrated setting
    after = runner.invoke(
        app,
        [
            "sample",
            "--model",
            "bundled",
            "--guard",
            "cpsample",
            "--classifier",
            str(classifier),
            "-n",
            "2",
            "--steps",
            "3",
            "--out",
            str(tmp_path / "after"),
        ],
    )
    assert after.exit_code == 0, after.output
    recorded = json.loads((tmp_path / "after" / "cpsample.json").read_text())["settings"]["guard_settings"]
    assert recorded["guard"] == report["chosen"]["guard"] == "cpsample-staged"
    # what was measured is what runs, windows included
    assert recorded["early"]["min_t"] == 201 and recorded["late"]["max_t"] == 200
    assert recorded["late"].get("max_push") == recorded["early"].get("max_push") == report["chosen"]["max_push"]
    assert recorded["late"].get("denoised", False) == report["chosen"]["late_denoised"]
    assert (recorded["early"]["scale"], recorded["late"]["scale"], recorded["late"]["alpha"]) == (
        1.0,
        chosen["scale"],
        0.3,
    )


def test_calibrate_tries_other_late_classifiers_and_the_one_recorded_guards_the_late_stage(tmp_path):
    """--late-classifier: another classifier of the same members (here a narrower one, trained for two steps) competes
    as the late stage on x_t; the folder of a winning one is recorded, and `--guard cpsample` then judges x_t with it
    while the early stage keeps the selective classifier."""
    import shutil

    runner = CliRunner()
    other = tmp_path / "clf_narrow"
    trained = runner.invoke(
        app,
        [
            "train-classifier",
            "--model",
            "bundled",
            "--channels",
            "8,16,16",
            "--steps",
            "2",
            "--relabel-after",
            "1",
            "--batch-size",
            "8",
            "--out",
            str(other),
            "--seed",
            "0",
        ],
    )
    assert trained.exit_code == 0, trained.output
    classifier = tmp_path / "clf"
    shutil.copytree(resolve_model_dir("bundled", "classifier"), classifier)
    early = str(resolve_model_dir("bundled", SELECTIVE_PART))
    grid = [
        "calibrate",
        "--classifier",
        str(classifier),
        "--n-samples",
        "6",
        "--steps",
        "4",
        "--alphas",
        "0.3",
        "--scales",
        "5",
        "--early-classifier",
        early,
        "--early-scales",
        "1",
        "--staged-scales",
        "10",
        "--denoised-late-scales",
        "none",
        "--push-caps",
        "none",
        "--target",
        "1.0",
        "--reduction",
        "0",
    ]

    calibrated = runner.invoke(app, [*grid, "--out", str(tmp_path / "calib"), "--late-classifier", str(other)])
    assert calibrated.exit_code == 0, calibrated.output
    report = json.loads((tmp_path / "calib" / "calibration_run.json").read_text())
    assert [(r["guard"], r["late_classifier"]) for r in report["rows"]] == [
        ("none", None),
        ("cpsample", None),
        ("cpsample-staged", None),
        ("cpsample-staged", str(other)),
    ]
    main_late, other_late = report["rows"][2:]
    assert (
        main_late["near_copies"] != other_late["near_copies"]
        or main_late["frechet_distance"] != other_late["frechet_distance"]
    )
    # the narrow classifier, trained two steps, is never sure enough to fire: its row draws plain's samples exactly,
    # while the main late classifier guides some steps and moves them (measured: 25% of steps)
    plain = report["rows"][0]
    assert other_late["steps_guided"] == 0.0 and other_late["frechet_distance"] == plain["frechet_distance"]
    assert main_late["steps_guided"] > 0.0 and main_late["frechet_distance"] != plain["frechet_distance"]
    saved = json.loads((classifier / "calibration.json").read_text())
    chosen_other = report["chosen"].get("late_classifier")
    assert saved.get("two_stage", {}).get("late_classifier") == (
        None if chosen_other is None else str(other.resolve())
    )

    # whichever won on 6 images: a calibration naming the narrow classifier puts it on the late stage, and only there
    saved["two_stage"] = {
        "early_classifier": early,
        "early_scale": 1.0,
        "early_min_t": 201,
        "alpha": 0.1,
        "scale": 10.0,
        "tau": 0.001,
        "late_classifier": str(other.resolve()),
    }
    (classifier / "calibration.json").write_text(json.dumps(saved))
    guard = build_guard("cpsample", GuardContext(classifier=str(classifier)))
    assert isinstance(guard, StagedCPSampleGuard)
    assert guard.guards[0].folder == resolve_model_dir("bundled", SELECTIVE_PART)
    assert guard.guards[1].folder == other.resolve() and not guard.guards[1].denoised
    narrow = load_classifier(other, "cpu")
    assert all(
        torch.equal(a, b)
        for a, b in zip(guard.guards[1].classifier.state_dict().values(), narrow.state_dict().values())
    )
    after = runner.invoke(
        app,
        [
            "sample",
            "--model",
            "bundled",
            "--guard",
            "cpsample",
            "--classifier",
            str(classifier),
            "-n",
            "2",
            "--steps",
            "3",
            "--out",
            str(tmp_path / "after"),
        ],
    )
    assert after.exit_code == 0, after.output
    recorded = json.loads((tmp_path / "after" / "cpsample.json").read_text())["settings"]["guard_settings"]
    assert recorded["late_classifier"] == str(other.resolve())

    # a recorded late classifier that has gone away is named, not silently replaced by the main one
    saved["two_stage"]["late_classifier"] = str(tmp_path / "gone")
    (classifier / "calibration.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="late classifier .*gone.*not there"):
        build_guard("cpsample", GuardContext(classifier=str(classifier)))

    # refused up front: a late classifier without the two-stage guard, a folder that is not a classifier, and a late
    # classifier on x0_hat (where the early classifier judges)
    alone = runner.invoke(
        app,
        ["calibrate", "--out", str(tmp_path / "c2"), "--classifier", str(classifier), "--late-classifier", str(other)],
    )
    assert alone.exit_code != 0 and "--early-classifier" in alone.output
    missing = runner.invoke(app, [*grid, "--out", str(tmp_path / "c3"), "--late-classifier", str(tmp_path / "gone")])
    assert missing.exit_code != 0 and not (tmp_path / "c3" / "calibration.csv").exists()
    with pytest.raises(ValueError, match="late_classifier"):
        guard_options("cpsample-staged", late_denoised=True, late_classifier=str(other))
