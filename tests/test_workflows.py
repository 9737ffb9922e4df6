"""Rejection sampling, calibration choice and the demo end to end on the bundled model."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cpsample.calibration.search import choose_setting, close_calls, narrowed_grid_flags
from cpsample.cli.main import app
from cpsample.data import make_split
from cpsample.evaluation.detector import NearCopyDetector
from cpsample.sampling.rejection import rejection_sample
from cpsample.sampling.sampler import SampleResult


@pytest.fixture(scope="module")
def members_and_fresh(mnist16):
    split = make_split(len(mnist16), 50, seed=0, source="mnist")
    return mnist16.images[split.members], mnist16.images[split.nonmembers]


def test_detector_flags_exact_and_brightened_copies_but_not_fresh_digits(members_and_fresh):
    members, fresh = members_and_fresh
    detector = NearCopyDetector(members, threshold=0.98)
    assert detector(members[:10]).all()
    assert detector(np.clip(members[:10] * 0.9 + 0.05, -1, 1)).all()  # dimmer/brighter copy: still a copy
    assert detector.share(fresh[:500]) < 0.05


def test_rejection_sampling_redraws_copies_and_counts_the_cost(members_and_fresh):
    members, fresh = members_and_fresh
    rounds = []

    def draw(count, round_index):
        rounds.append(count)
        # round 0 returns 4 copies and 4 fresh digits; later rounds only fresh ones
        images = np.concatenate([members[:4], fresh[:4]]) if round_index == 0 else fresh[10 : 10 + count]
        return SampleResult(torch.from_numpy(images), denoiser_calls=count * 10)

    result = rejection_sample(draw, 8, NearCopyDetector(members, threshold=0.98))
    assert rounds == [8, 4] and result.rejected == 4 and result.drawn == 12
    assert len(result.images) == 8 and result.calls_per_image == pytest.approx(120 / 8)
    with pytest.raises(RuntimeError, match="accepted only"):
        rejection_sample(
            lambda count, _: SampleResult(torch.from_numpy(members[:count])),
            3,
            NearCopyDetector(members),
            max_rounds=2,
        )


def test_calibration_picks_the_best_quality_setting_meeting_the_target():
    rows = [
        {
            "guard": "none",
            "alpha": None,
            "scale": None,
            "near_copy_share": 0.10,
            "frechet_distance": 1.0,
            "steps_guided": None,
        },
        {
            "guard": "cpsample",
            "alpha": 0.001,
            "scale": 10,
            "near_copy_share": 0.05,
            "frechet_distance": 1.1,
            "steps_guided": 0.01,
        },
        {
            "guard": "cpsample",
            "alpha": 0.01,
            "scale": 100,
            "near_copy_share": 0.01,
            "frechet_distance": 1.5,
            "steps_guided": 0.05,
        },
        {
            "guard": "cpsample",
            "alpha": 0.1,
            "scale": 1000,
            "near_copy_share": 0.0,
            "frechet_distance": 3.0,
            "steps_guided": 0.30,
        },
    ]
    assert choose_setting(rows, target=0.02)["alpha"] == 0.01
    assert choose_setting(rows, target=0.05)["alpha"] == 0.001
    assert choose_setting(rows, target=-1) is None


def test_calibration_warns_when_the_chosen_setting_costs_more_than_the_aims():
    from cpsample.calibration.search import cost_warnings

    plain = {"guard": "none", "near_copy_share": 0.45, "frechet_distance": 2.97, "time_vs_plain": 1.0}
    costly = {"guard": "cpsample-staged", "near_copy_share": 0.043, "frechet_distance": 5.18, "time_vs_plain": 1.21}
    quality, time = cost_warnings(costly, plain)
    assert quality.startswith("quality: FD +74% vs plain") and "copies 45% of the time" in quality
    assert time.startswith("time: 1.21x plain")
    within = {**costly, "frechet_distance": 3.2, "time_vs_plain": 1.1}
    assert cost_warnings(within, plain) == []
    assert cost_warnings({**costly, "frechet_distance": None, "time_vs_plain": 1.0}, plain) == []


def test_calibration_names_the_settings_it_cannot_tell_apart_and_how_to_rerun_them():
    """The bundled calibration on 600 images (bench/README.md, Finding 11): two stages late s 10 won at FD 8.93, with
    late s 30 (10.01) and one stage (9.93) within 20%; 2,400 images then chose late s 30."""
    plain = {"guard": "none", "alpha": None, "scale": None, "near_copy_share": 0.338, "frechet_distance": 6.15}
    one_s10 = {"guard": "cpsample", "alpha": 0.1, "scale": 10.0, "near_copy_share": 0.032, "frechet_distance": 9.93}
    one_s30 = {"guard": "cpsample", "alpha": 0.1, "scale": 30.0, "near_copy_share": 0.010, "frechet_distance": 13.88}
    two_s10 = {
        "guard": "cpsample-staged",
        "alpha": 0.1,
        "scale": 10.0,
        "early_scale": 3.0,
        "near_copy_share": 0.023,
        "frechet_distance": 8.93,
    }
    two_s30 = {
        "guard": "cpsample-staged",
        "alpha": 0.1,
        "scale": 30.0,
        "early_scale": 3.0,
        "near_copy_share": 0.010,
        "frechet_distance": 10.01,
    }
    too_many_copies = {
        "guard": "cpsample-staged",
        "alpha": 0.1,
        "scale": 10.0,
        "early_scale": 1.0,
        "near_copy_share": 0.042,
        "frechet_distance": 8.02,
    }
    rows = [plain, one_s10, one_s30, two_s10, two_s30, too_many_copies]
    for row in rows:
        row["steps_guided"] = None if row is plain else 0.13
    chosen = choose_setting(rows, reduction=0.9)
    assert chosen is two_s10
    close = close_calls(rows, chosen, reduction=0.9)
    assert close == [one_s10, two_s30]  # not the infeasible row with a better FD, nor one stage s 30 (+55%)
    assert narrowed_grid_flags([chosen, *close]) == (
        "--alphas 0.1 --scales 10 --early-scales 3 --staged-scales 10,30 --denoised-late-scales none --push-caps none"
    )
    capped = {**two_s30, "max_push": 1.0}
    assert narrowed_grid_flags([two_s10, capped]).endswith(
        "--staged-scales 10,30 --denoised-late-scales none --push-caps 1,none"
    )
    selective = {**two_s30, "alpha": 0.3, "scale": 15.0, "late_denoised": True}
    assert narrowed_grid_flags([two_s10, selective]).endswith(
        "--staged-scales 10 --denoised-late-scales 15 --push-caps none"
    )
    narrow = {**two_s10, "scale": 30.0, "late_classifier": "runs/clf_small"}
    assert narrowed_grid_flags([two_s10, narrow]).endswith(
        "--staged-scales 10,30 --denoised-late-scales none --push-caps none --late-classifier runs/clf_small"
    )
    assert close_calls(rows, chosen, reduction=0.9, margin=0.05) == []


def test_a_confirmation_round_overturns_a_screen_choice_that_misses_the_cut_on_more_images(monkeypatch):
    """The second model's README-flow screen (bench/README.md, Finding 19): on 300 images the big classifier late at
    s 10 had 12 copies against a limit of 13.2 and the best FD; more images showed it misses the cut."""
    from cpsample.calibration import search as calibrate
    from cpsample.evaluation.replication import clopper_pearson

    def row(guard, scale, cap, copies, n, fd, late=None):
        return {
            "guard": guard,
            "alpha": None if guard == "none" else 0.1,
            "scale": scale,
            "early_scale": 3.0,
            "max_push": cap,
            "late_denoised": False,
            "late_classifier": late,
            "n": n,
            "near_copies": copies,
            "near_copy_share": copies / n,
            "steps_guided": None if guard == "none" else 0.05,
            "last_fired_t": None if guard == "none" else 180,
            "frechet_distance": fd,
            "seconds": 1.0,
        }

    plain = row("none", None, None, 132, 300, 3.84)
    big = row("cpsample-staged", 10.0, None, 12, 300, 5.23)
    small = row("cpsample-staged", 30.0, 1.25, 11, 300, 5.74, late="runs/clf_small")
    big_capped = row("cpsample-staged", 30.0, 1.5, 13, 300, 6.14)
    harsh = row("cpsample-staged", 30.0, None, 10, 300, 13.98)
    infeasible = row("cpsample-staged", 10.0, 1.0, 20, 300, 4.60)
    screen = [plain, big, small, big_capped, harsh, infeasible]
    assert calibrate.choose_setting(screen, reduction=0.9) is big
    assert calibrate.finalists(screen, reduction=0.9, count=3) == [big, small, big_capped]

    second = {"none": (267, 2.65), 10.0: (39, 5.61), 1.25: (22, 3.70), 1.5: (16, 4.62)}
    calls = []

    def fake_grid(settings, progress=True, candidates=None):  # the sampler is tested elsewhere: this checks the wiring
        calls.append((settings.n_samples, settings.seed, [calibrate.setting_of(c) for c in candidates]))
        keys = ["none" if c["guard"] == "none" else c["max_push"] or c["scale"] for c in candidates]
        return [
            {
                **calibrate.setting_of(c),
                **row(c["guard"], c["scale"], c["max_push"], *second[k][:1], 600, second[k][1], c["late_classifier"]),
                "time_vs_plain": 1.1,
            }
            for c, k in zip(candidates, keys)
        ]

    monkeypatch.setattr(calibrate, "run_grid", fake_grid)
    settings = calibrate.GridSettings(n_samples=300, seed=5)
    confirmed = calibrate.confirm_finalists(screen, settings, reduction=0.9, count=3)
    assert calls == [
        (600, 5 + calibrate.CONFIRM_SEED_OFFSET, [calibrate.setting_of(r) for r in (plain, big, small, big_capped)])
    ]
    assert [r["n"] for r in confirmed] == [900] * 4 and [r["near_copies"] for r in confirmed] == [399, 51, 33, 29]
    assert (confirmed[2]["ci_low"], confirmed[2]["ci_high"]) == clopper_pearson(33, 900)
    assert confirmed[2]["frechet_distance"] == 3.70 and confirmed[2]["screen_frechet_distance"] == 5.74
    assert confirmed[2]["late_classifier"] == "runs/clf_small" and confirmed[2]["confirmation_n"] == 600
    # limit 39.9 copies of 900: the screen's choice (51) is out, the small late classifier (33, FD 3.70) wins
    assert calibrate.choose_confirmed(confirmed, reduction=0.9) == (confirmed[2], True)
    # a goal no finalist keeps once pooled (a 95% cut: at most 19.95 copies): the most protective one, flagged
    assert calibrate.choose_confirmed(confirmed, reduction=0.95) == (confirmed[3], False)
    assert calibrate.confirm_finalists([plain, infeasible], settings, reduction=0.9) == [] and len(calls) == 1


def test_a_confirmed_one_stage_choice_is_the_one_stage_setting_saved():
    """What --guard cpsample runs must be what was chosen: when the confirmation round picks a one-stage row other
    than the screen's best one, the one-stage knobs saved are the confirmed row's, not the screen's."""
    from cpsample.calibration import search as calibrate

    def row(guard, scale, copies, n, fd):
        return {
            "guard": guard,
            "alpha": None if guard == "none" else 0.1,
            "scale": scale,
            "early_scale": None,
            "max_push": None,
            "late_denoised": False,
            "late_classifier": None,
            "n": n,
            "near_copies": copies,
            "near_copy_share": copies / n,
            "steps_guided": 0.1,
            "last_fired_t": 300,
            "frechet_distance": fd,
        }

    screen = [
        row("none", None, 130, 300, 3.8),
        row("cpsample", 10.0, 12, 300, 4.0),
        row("cpsample", 30.0, 10, 300, 4.5),
        {**row("cpsample-staged", 30.0, 11, 300, 4.2), "early_scale": 3.0},
    ]
    confirmed = [
        row("none", None, 390, 900, 2.5),
        row("cpsample", 10.0, 45, 900, 3.0),
        row("cpsample", 30.0, 30, 900, 3.4),
        {**row("cpsample-staged", 30.0, 33, 900, 3.6), "early_scale": 3.0},
    ]
    chosen, kept = calibrate.choose_confirmed(confirmed, reduction=0.9)
    assert kept and chosen is confirmed[2]
    assert calibrate.one_stage_setting(screen, chosen, reduction=0.9) is confirmed[2]
    assert calibrate.calibrated_settings(chosen, 0.5)["scale"] == 30.0
    # a two-stage choice keeps the screen's best one-stage row for the one-stage rule
    assert calibrate.one_stage_setting(screen, confirmed[3], reduction=0.9) is screen[1]
    # no feasible one-stage row: the chosen row stands in
    assert calibrate.one_stage_setting(screen[:1] + screen[3:], screen[3], reduction=0.9) is screen[3]


def test_push_caps_are_read_as_calibrate_writes_them():
    from cpsample.calibration.search import cap_text, parse_caps

    assert parse_caps("none,1,2.5") == (None, 1.0, 2.5)
    assert ",".join(cap_text(cap) for cap in parse_caps("none,1,2.5")) == "none,1,2.5"
    for bad in ("0", "-1", "one", ","):
        with pytest.raises(ValueError, match="push-caps"):
            parse_caps(bad)


def test_demo_end_to_end_writes_a_readable_report(tmp_path):
    """16 images at 10 steps, seed 1: the bundled model copies members in plain sampling (3 of 16, measured), the
    guards fewer (two stages 1, one stage 0), rejection sampling none; the report's numbers are recounted from
    samples.npz."""
    from sklearn.metrics import roc_auc_score

    from cpsample.attacks.mia import pick_images
    from cpsample.evaluation.nearcopy import find_near_copies
    from cpsample.models.pretrained import DiffusionModel

    out, n = tmp_path / "demo", 16
    result = CliRunner().invoke(
        app, ["demo", "--out", str(out), "--n-samples", str(n), "--steps", "10", "--mia-members", "16", "--seed", "1"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    # the bundled classifier's calibration chose two stages; the paper's one-stage rule is shown next to it
    assert set(report["methods"]) == {"plain", "cpsample", "cpsample-one-stage", "rejection"}
    assert report["cpsample_settings"]["cpsample"]["early"]["denoised"] is True
    assert report["cpsample_settings"]["cpsample-one-stage"]["guard"] == "cpsample"
    costs = report["costs"]
    assert costs["rejection"]["denoiser_calls_per_image"] >= costs["plain"]["denoiser_calls_per_image"]
    html = (out / "report.html").read_text()
    for figure in report["figures"].values():
        assert (out / figure).exists() and figure in html
        if figure.endswith(".png"):
            assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / figure).stat().st_size > 1000

    # the near-copy counts are what the saved samples give when recounted with the same yardstick
    model = DiffusionModel.from_pretrained("bundled")
    detector = NearCopyDetector(model.members.images, report["settings"]["threshold"])
    with np.load(out / "samples.npz") as saved:
        samples = {name: saved[name] for name in saved.files}
    assert set(samples) == set(report["methods"]) and all(len(images) == n for images in samples.values())
    copies = {name: detector(images) for name, images in samples.items()}
    counts = {name: int(found.sum()) for name, found in copies.items()}
    for name, method in report["methods"].items():
        assert method["replication"]["count"] == counts[name] and method["replication"]["n"] == n, name
        assert method["similarity"]["max"] == pytest.approx(detector.similarity(samples[name]).max(), abs=1e-5)
        assert f"<tr><td>{name}</td><td>{n}</td><td>{counts[name]}</td>" in html  # the report page's table
        assert re.search(rf"│ +{name} │ +{counts[name]}/{n} │", result.output), name  # and the terminal's table
    # the verdict comes first on the page and on the terminal, with the same counts and cut
    from html import unescape

    plain = counts["plain"]
    for name in report["methods"]:
        if name != "plain":
            line = (
                f"{name}: {counts[name]}/{n} near-copies ({100 * counts[name] / n:.2f}%) against plain's {plain}/{n}"
            )
            assert line in unescape(html) and line in " ".join(result.output.split()), line
            assert html.index("id='verdict'") < html.index("<table>")
    assert report["verdict"][0].startswith("cpsample: ")
    # every method's grid (the same noise) in one row, so a reader compares them side by side
    row = html.split("<div class='grids'>", 1)[1].split("</div>", 1)[0]
    grids = [key for key in report["figures"] if key.startswith("grid_")]
    assert len(grids) == len(report["methods"]) and all(f"src='{report['figures'][k]}'" in row for k in grids)
    # the model memorised its members: plain sampling copies some; the guards copy fewer, rejection none at all
    assert counts["plain"] >= 2
    assert counts["cpsample"] < counts["plain"] and counts["cpsample-one-stage"] < counts["plain"]
    assert counts["rejection"] == 0
    # rejection keeps the plain round's non-copies (in order) and redraws exactly as many images as it threw away
    rejection = costs["rejection"]
    assert rejection["rejected"] >= counts["plain"] and rejection["drawn"] - rejection["rejected"] == n
    assert np.array_equal(samples["rejection"][: n - counts["plain"]], samples["plain"][~copies["plain"]])
    assert rejection["denoiser_calls_per_image"] > costs["plain"]["denoiser_calls_per_image"]

    rows = report["membership_inference"]["rows"]
    white = {(r["defence"], r["attack"]): r for r in rows if r["threat model"].startswith("white box")}
    black = {r["defence"]: r for r in rows if r["threat model"].startswith("black box")}
    assert set(white) == {(d, a) for d in ("plain", "cpsample") for a in ("loss", "pia")}
    assert set(black) == set(report["methods"]) and all(r["attack"] == "sample-nn" for r in black.values())
    assert all(0.0 <= r["AUC"] <= 1.0 and 0.0 <= r["p (Mann-Whitney, one-sided)"] <= 1.0 for r in black.values())
    # the white-box attacks find the members of the plain model (measured AUC 1.0 on 16 vs 16); the guarded
    # denoiser gives them away less (measured 0.91 and 0.86)
    assert white["plain", "loss"]["AUC"] > 0.9 and white["plain", "pia"]["AUC"] > 0.9
    assert white["cpsample", "loss"]["AUC"] < white["plain", "loss"]["AUC"]
    # the sample-only AUC is each candidate's cosine distance to its nearest saved sample, recomputed here
    member_idx, nonmember_idx = pick_images(model.split.members, model.split.nonmembers, 16, None, 1)
    candidates = np.concatenate([model.dataset.images[member_idx], model.dataset.images[nonmember_idx]])
    is_member = np.r_[np.ones(len(member_idx)), np.zeros(len(nonmember_idx))]
    for name, images in samples.items():
        closeness = find_near_copies(candidates, images).similarity
        assert black[name]["AUC"] == pytest.approx(roc_auc_score(is_member, closeness), abs=1e-4), name
    assert report["figures"]["mia_sample_nn_roc"] == "mia_sample_nn_roc.png"
    assert "sample-nn" in " ".join(result.output.split())


def test_calibrate_cli_measures_every_setting_and_reports_its_choice(tmp_path):
    out = tmp_path / "calib"
    result = CliRunner().invoke(
        app,
        [
            "calibrate",
            "--classifier",
            "bundled",
            "--out",
            str(out),
            "--n-samples",
            "4",
            "--steps",
            "3",
            "--alphas",
            "0.2",
            "--scales",
            "10,100",
            "--target",
            "1.0",
            "--reduction",
            "0",
            "--seed",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "calibration_run.json").read_text())
    assert [(r["alpha"], r["scale"]) for r in report["rows"]] == [(None, None), (0.2, 10.0), (0.2, 100.0)]
    # 4 images are a screen: plain and both settings again on 8 fresh images, near-copies pooled over 12
    confirmation = report["confirmation"]
    assert confirmation["n_samples"] == 8 and confirmation["seed"] == 2 + 1000 and len(confirmation["finalists"]) == 2
    assert sorted((r["guard"], r["scale"], r["n"]) for r in confirmation["rows"][1:]) == [
        ("cpsample", 10.0, 12),
        ("cpsample", 100.0, 12),
    ]
    assert report["chosen"] in confirmation["rows"][1:]
    # --reduction 0: both settings are feasible, so the choice is the one with the better confirmed FD
    best = min(confirmation["rows"][1:], key=lambda row: row["frechet_distance"])
    assert report["chosen"] == best
    assert all((out / name).exists() for name in ("calibration.csv", "confirmation.csv", "confirmation.png"))
    # not a terminal (a background run's log): the tables keep whole cells instead of rich's 80-column "nea…"
    if "COLUMNS" not in os.environ:
        assert "near-copies" in result.output and "share (95% CI)" in result.output and "…" not in result.output
    screen_only = CliRunner().invoke(
        app,
        [
            "calibrate",
            "--classifier",
            "bundled",
            "--out",
            str(out / "screen"),
            "--n-samples",
            "4",
            "--steps",
            "3",
            "--alphas",
            "0.2",
            "--scales",
            "10,100",
            "--target",
            "1.0",
            "--reduction",
            "0",
            "--seed",
            "2",
            "--finalists",
            "0",
        ],
    )
    assert screen_only.exit_code == 0, screen_only.output
    report = json.loads((out / "screen" / "calibration_run.json").read_text())
    assert "confirmation" not in report and report["chosen"] in report["rows"][1:]
    bad = CliRunner().invoke(app, ["calibrate", "--classifier", "bundled", "--out", str(out), "--alphas", "a,b"])
    assert bad.exit_code == 2 and "--alphas" in bad.output


def test_calibrate_with_a_real_goal_saves_the_best_feasible_setting_and_it_holds_on_fresh_images(tmp_path):
    """A 90% cut, as users ask for: of the settings that keep the cut after the confirmation round, calibrate saves the
    one with the best FD (here s 30 beats s 100, whose push wrecks the digits, and s 10 misses the cut), and the
    saved setting, run by `sample --guard cpsample` with no knobs, cuts near-copies by 90% on images it never saw."""
    import shutil

    from cpsample.calibration.search import share_limit
    from cpsample.models import DiffusionModel
    from cpsample.models.bundle import resolve_model_dir

    classifier = tmp_path / "clf"
    shutil.copytree(resolve_model_dir("bundled", "classifier"), classifier)
    (classifier / "calibration.json").unlink()
    runner, steps = CliRunner(), ["--steps", "20"]
    calibrated = runner.invoke(
        app,
        [
            "calibrate",
            "--out",
            str(tmp_path / "calib"),
            "--classifier",
            str(classifier),
            "--n-samples",
            "60",
            *steps,
            "--alphas",
            "0.1",
            "--scales",
            "10,30,100",
            "--reduction",
            "0.9",
            "--finalists",
            "3",
            "--seed",
            "5",
        ],
    )
    assert calibrated.exit_code == 0, calibrated.output
    record = json.loads((tmp_path / "calib" / "calibration_run.json").read_text())
    confirmed = record["confirmation"]["rows"]
    limit = share_limit(confirmed, reduction=0.9)
    feasible = [row for row in confirmed[1:] if row["near_copy_share"] <= limit]
    assert len(feasible) >= 2, "the check needs a choice between feasible settings"
    best = min(feasible, key=lambda row: row["frechet_distance"])
    assert all(best["frechet_distance"] < row["frechet_distance"] for row in feasible if row is not best)
    saved = json.loads((classifier / "calibration.json").read_text())
    assert (saved["settings"]["alpha"], saved["settings"]["scale"]) == (best["alpha"], best["scale"]) == (0.1, 30.0)
    assert saved["measured"]["frechet_distance"] == best["frechet_distance"]
    # re-measured: plain and the saved default from the same fresh noise (seed 77: neither round saw it)
    for name, guard in (("plain", []), ("guarded", ["--guard", "cpsample", "--classifier", str(classifier)])):
        result = runner.invoke(
            app,
            [
                "sample",
                "--model",
                "bundled",
                "-n",
                "200",
                *steps,
                "--seed",
                "77",
                *guard,
                "--out",
                str(tmp_path / name),
            ],
        )
        assert result.exit_code == 0, result.output
    key = json.loads((tmp_path / "guarded" / "batches" / "settings.json").read_text())
    assert key["guard_settings"] == {"guard": "cpsample", **saved["settings"]}
    detector = NearCopyDetector(DiffusionModel.from_pretrained("bundled").members.images)
    plain, guarded = (
        detector.share(np.load(tmp_path / name / "samples.npz")["images"]) for name in ("plain", "guarded")
    )
    assert plain > 0.15 and guarded <= 0.1 * plain, (plain, guarded)


def test_calibration_travels_with_the_classifier(tmp_path):
    import shutil

    from cpsample.models.bundle import resolve_model_dir

    classifier = tmp_path / "clf"
    shutil.copytree(resolve_model_dir("bundled", "classifier"), classifier)
    (classifier / "calibration.json").unlink(missing_ok=True)
    runner = CliRunner()
    uncalibrated = runner.invoke(
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
            str(tmp_path / "before"),
        ],
    )
    assert uncalibrated.exit_code == 0, uncalibrated.output
    assert "no calibration.json" in uncalibrated.output and "cpsample calibrate" in uncalibrated.output
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
            "5,20",
            "--target",
            "1.0",
            "--reduction",
            "0",
        ],
    )
    assert calibrated.exit_code == 0, calibrated.output
    saved = json.loads((classifier / "calibration.json").read_text())["settings"]
    assert saved["alpha"] == 0.3 and saved["scale"] in (5.0, 20.0) and saved["tau"] == 0.001
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
    assert after.exit_code == 0 and "no calibration.json" not in after.output
    key = json.loads((tmp_path / "after" / "batches" / "settings.json").read_text())
    assert key["guard_settings"] == {"guard": "cpsample", **saved}
    explicit = runner.invoke(
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
            "--alpha",
            "0.1",
            "--out",
            str(tmp_path / "explicit"),
        ],
    )
    key = json.loads((tmp_path / "explicit" / "batches" / "settings.json").read_text())
    assert explicit.exit_code == 0 and key["guard_settings"]["alpha"] == 0.1 and key["guard_settings"]["max_t"] is None


def test_the_bundled_classifier_ships_its_calibration(bundled_dirs, capsys):
    from cpsample.sampling.spec import cpsample_settings, read_calibration

    _, classifier_dir = bundled_dirs
    shipped = read_calibration(classifier_dir)
    assert (
        shipped["goal"]["reduction"] == 0.9
        and shipped["measured"]["near_copy_share"] <= 0.1 * shipped["plain"]["near_copy_share"]
    )
    assert cpsample_settings(classifier_dir) == shipped["settings"]
    assert "no calibration.json" not in capsys.readouterr().err
    # A different alpha does not inherit a check window measured for another one.
    assert cpsample_settings(classifier_dir, alpha=0.01)["max_t"] is None


def test_calibrate_cli_grid_defaults_are_the_library_grid():
    """`cpsample calibrate` with no grid flags measures exactly GridSettings' default grid (push caps included), so a
    default changed in one place cannot silently differ from the other."""
    import inspect

    from cpsample.calibration import grid as grid_defaults
    from cpsample.calibration import search as calibrate
    from cpsample.calibration.grid import parse_floats as _floats  # (was cli.workflows._floats)
    from cpsample.calibration.search import GridSettings, parse_caps
    from cpsample.cli.workflows import calibrate_command

    defaults = {name: p.default for name, p in inspect.signature(calibrate_command).parameters.items()}
    grid = GridSettings()
    # alphas and scales depend on the search: left out in both, each search takes its own (grid.py)
    assert defaults["alphas"] is defaults["scales"] is grid.alphas is grid.scales is None
    one_stage = calibrate.grid_candidates(grid)[1:]
    assert [(row["alpha"], row["scale"]) for row in one_stage] == [
        (a, s) for a in grid_defaults.ALPHAS for s in grid_defaults.SCALES
    ]
    for name in (
        "early_scales",
        "staged_scales",
        "denoised_late_scales",
    ):  # parsed as the CLI does
        assert _floats(defaults[name], name, allow_none=True) == tuple(getattr(grid, name)), name
    assert parse_caps(defaults["push_caps"]) == tuple(grid.push_caps) == (None, 1.0, 1.25, 1.5, 2.0)


def test_documented_commands_use_only_options_the_cli_has_and_every_required_one():
    """Every `cpsample ...` line of README.md and docs/*.md (the "Protect your own model in 3 steps" flow, "Measure
    copying", the fresh-machine demo, each doc's recipes; a line ending in a backslash continues) names a command that
    exists, only options it takes, and every option it requires, so what a new user copies runs as written."""
    import shlex
    from pathlib import Path

    import typer

    root_dir = Path(__file__).resolve().parent.parent
    readme = (root_dir / "README.md").read_text()

    def commands(text: str) -> list[str]:
        found, fenced = [], False
        for line in text.replace("\\\n", " ").splitlines():
            fenced ^= line.strip().startswith("```")
            if not (fenced or line.startswith("    ")):  # code blocks only (prose wraps its inline commands)
                continue
            line = line.strip().split("&& ")[-1]
            for prefix in ("OMP_NUM_THREADS=1 ", "nice -n 19 "):
                line = line.removeprefix(prefix)
            if line.startswith("cpsample "):
                found.append(line.split(" > ")[0].split(" 2>")[0])
        return found

    flow = readme.split("## Protect your own model in 3 steps", 1)[1].split("\n## ", 1)[0]
    measure = readme.split("## Measure copying", 1)[1].split("\n## ", 1)[0]
    assert len(commands(flow)) >= 5 and len(commands(measure)) >= 3
    assert len(commands((root_dir / "docs" / "calibration.md").read_text())) >= 10  # the flow, step by step
    lines = commands(readme) + [
        line for doc in sorted((root_dir / "docs").glob("*.md")) for line in commands(doc.read_text())
    ]
    assert any(line.startswith("cpsample demo ") for line in lines) and len(lines) >= 20
    root = typer.main.get_command(app)
    for line in lines:
        words = shlex.split(line)[1:]
        command = root
        while hasattr(command, "commands"):  # the app or a group (`attack`): the next word names its command
            while words and words[0].startswith("--"):  # the app's own options (--json)
                words.pop(0)
            command = command.commands.get(words.pop(0))
            assert command is not None, line
        if "--help" in words:
            continue
        known = {name for param in command.params for name in (*param.opts, *param.secondary_opts)}
        given = {word.split("=")[0] for word in words if word.startswith("-")}
        assert given <= known, (line, given - known)
        missing = [param.opts[0] for param in command.params if param.required and not set(param.opts) & given]
        assert not missing, (line, missing)


def test_readme_fresh_machine_keeps_the_two_commands_ci_runs():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    fresh = readme.split("## Fresh machine", 1)[1].split("\n## ", 1)[0]
    assert "    bash scripts/install.sh && cpsample demo --out demo_out\n" in fresh
    assert "    bash scripts/install.sh && python -m pytest -q\n" in fresh
    assert len(readme.splitlines()) <= 150, "the README is for new users; details go to docs/"
