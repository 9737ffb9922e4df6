"""The calibration's Python API: Goal, Calibrator(...).fit() -> CalibrationResult, save (the run record) and
save_pretrained (the classifier's calibration.json). The search order is pinned with a stand-in grid runner (the
sampler is tested elsewhere); one end-to-end test checks the API chooses what `cpsample calibrate` chooses and that
what it saves is what `sample --guard cpsample` then runs."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import cli

from cpsample.calibration import RUN_RECORD, Calibrator, FitReport, Goal, GridSettings
from cpsample.calibration import search as calibrate
from cpsample.evaluation.replication import clopper_pearson
from cpsample.models.bundle import resolve_model_dir
from cpsample.sampling.spec import cpsample_settings, read_calibration

TIMING = ("seconds", "time_vs_plain")


def test_a_goal_is_validated_and_said_in_words():
    assert Goal().as_dict() == {"reduction": 0.95, "target": None}
    assert Goal(reduction=0.9, target=0.01).describe() == "cut >= 90% vs plain and share <= 1.0%"
    assert Goal(reduction=None).describe() == "any setting"
    for bad in ({"target": 1.5}, {"reduction": -0.1}):
        with pytest.raises(ValueError, match="is a share in \\[0, 1\\]"):
            Goal(**bad)
    with pytest.raises(ValueError, match="finalists"):
        Calibrator(GridSettings(), finalists=-1)


def stand_in_grid(monkeypatch, measured: dict) -> None:
    """run_grid replaced: each candidate's (near-copies, FD) by its scale (plain: None), one table for the screen and
    one for the confirmation round (seed + CONFIRM_SEED_OFFSET)."""

    def run_grid(settings, progress=True, candidates=None):
        candidates = calibrate.grid_candidates(settings) if candidates is None else candidates
        stage = "confirmation" if settings.seed >= calibrate.CONFIRM_SEED_OFFSET else "screen"
        rows = []
        for candidate in candidates:
            copies, fd = measured[stage][candidate["scale"]]
            plain, n = candidate["guard"] == "none", settings.n_samples
            low, high = clopper_pearson(copies, n)
            rows.append(
                {
                    **calibrate.setting_of(candidate),
                    "n": n,
                    "near_copies": copies,
                    "near_copy_share": copies / n,
                    "ci_low": low,
                    "ci_high": high,
                    "steps_guided": None if plain else 0.1,
                    "last_fired_t": None if plain else 300,
                    "frechet_distance": fd,
                    "seconds": 1.0,
                    "time_vs_plain": 1.0,
                }
            )
        return rows

    monkeypatch.setattr(calibrate, "run_grid", run_grid)


# 100 images per setting: plain copies 40 (a 90% cut allows 4); s 10 and s 30 are the best feasible by FD.
SCREEN = {None: (40, 3.0), 10.0: (3, 4.0), 30.0: (2, 5.0), 100.0: (1, 9.0)}


class Heard(FitReport):
    def __init__(self):
        self.said = []

    def screened(self, rows, n_samples):
        self.said.append(("screened", len(rows), n_samples))

    def confirming(self, finalists, n_samples, seed):
        self.said.append(("confirming", finalists, n_samples, seed))

    def confirmed(self, rows, screen_n, confirm_n):
        self.said.append(("confirmed", len(rows), screen_n, confirm_n))


def grid(**changes) -> GridSettings:
    return GridSettings(alphas=(0.1,), scales=(10.0, 30.0, 100.0), n_samples=100, seed=3, **changes)


def test_fit_screens_confirms_and_chooses_the_best_setting_that_keeps_the_cut(monkeypatch, tmp_path):
    # confirmation on 200 more: s 10 leaves 15 of 300 against plain's 120 (limit 12) and misses; s 30 keeps it
    stand_in_grid(monkeypatch, {"screen": SCREEN, "confirmation": {None: (80, 2.9), 10.0: (12, 3.5), 30.0: (4, 4.2)}})
    heard = Heard()
    result = Calibrator(grid(), Goal(reduction=0.9), finalists=2).fit(progress=False, report=heard)
    assert heard.said == [("screened", 4, 100), ("confirming", 2, 200, 1003), ("confirmed", 3, 100, 200)]
    assert [row["scale"] for row in result.rows] == [None, 10.0, 30.0, 100.0]
    assert [(row["scale"], row["near_copies"], row["n"]) for row in result.confirmed] == [
        (None, 120, 300),
        (10.0, 15, 300),
        (30.0, 6, 300),
    ]
    assert result.chosen is result.confirmed[2] and result.missed is None and result.plain is result.confirmed[0]
    assert result.one_stage is result.chosen and result.two_stage is None
    assert result.knobs == {"alpha": 0.1, "scale": 30.0, "tau": 0.001, "max_t": 400}  # 300 + 20, rounded up
    assert result.confirmation["finalists"] == ["a=0.1, s=10", "a=0.1, s=30"] and result.confirmation["seed"] == 1003
    assert result.warnings == [] and result.close_calls == [] and result.close_call_note is None
    assert result.cost_warnings == ["quality: FD +45% vs plain on this batch (aim: at most +10%). Plain sampling "
                                    "copies 40% of the time here; removing that many copies costs quality with any "
                                    "defence. Compare AMG and rejection sampling on your model with "
                                    "bench/bench_seeds.py before you rely on it"]  # fmt: skip
    assert result.summary == (
        "chosen: a=0.1, s=30 (checks at t <= 400); near-copy share 2.0% vs plain 40.0% over 300 images (cut 95.0%, "
        "95% CI 88.8%-97.8%), FD 4.20 vs 2.90"  # Katz: 0.05 x/ exp(1.96 sqrt(1/6 - 1/300 + 1/120 - 1/300))
    )
    assert result.details["measured"] is result.chosen and result.details["goal"] == {"reduction": 0.9, "target": None}

    record = result.save(tmp_path / "run")
    assert record == tmp_path / "run" / RUN_RECORD
    saved_run = json.loads(record.read_text())
    assert saved_run["chosen"] == result.chosen and saved_run["confirmation"]["rows"] == result.confirmed
    assert {path.name for path in (tmp_path / "run").iterdir()} == {
        RUN_RECORD,
        "calibration.csv",
        "calibration.png",
        "confirmation.csv",
        "confirmation.png",
        "cpsample.json",
    }
    made = json.loads((tmp_path / "run" / "cpsample.json").read_text())
    assert made["command"] == "calibrate" and (made["settings"]["finalists"], made["settings"]["seed"]) == (2, 3)

    classifier = tmp_path / "clf"
    shutil.copytree(resolve_model_dir("bundled", "classifier"), classifier)
    assert result.save_pretrained(classifier) == classifier / "calibration.json"
    assert read_calibration(classifier)["measured"] == result.chosen
    assert cpsample_settings(classifier) == result.knobs, "the guard reads back what was saved"


def test_when_no_finalist_keeps_the_cut_the_most_protective_is_kept_and_said_to_miss(monkeypatch):
    stand_in_grid(monkeypatch, {"screen": SCREEN, "confirmation": {None: (80, 2.9), 10.0: (12, 3.5), 30.0: (20, 4.2)}})
    result = Calibrator(grid(), Goal(reduction=0.9), finalists=2).fit(progress=False)
    assert result.chosen["scale"] == 10.0, "15 of 300 is fewer near-copies than s 30's 22"
    assert result.missed.startswith("no finalist kept cut >= 90% vs plain over 300 images; kept the most protective")
    assert result.details["missed"] == result.missed


def test_no_setting_met_the_goal_saves_the_run_but_nothing_next_to_the_classifier(monkeypatch, tmp_path):
    stand_in_grid(monkeypatch, {"screen": SCREEN})
    result = Calibrator(grid(), Goal(reduction=None, target=0.001)).fit(progress=False)
    assert result.chosen is None and result.confirmed == [] and result.details is None and result.knobs is None
    saved_run = json.loads(result.save(tmp_path / "run").read_text())
    assert saved_run["chosen"] is None and len(saved_run["rows"]) == 4 and "confirmation" not in saved_run
    with pytest.raises(ValueError, match="no setting met share <= 0.1%"):
        result.save_pretrained(tmp_path)
    assert not (tmp_path / "calibration.json").exists()


def test_a_cut_of_nothing_is_saved_only_when_allowed(monkeypatch, tmp_path):
    nothing = {None: (0, 3.0), 10.0: (0, 4.0), 30.0: (0, 5.0), 100.0: (0, 9.0)}  # plain made no near-copies
    stand_in_grid(monkeypatch, {"screen": nothing, "confirmation": nothing})
    refused = Calibrator(grid(), Goal(reduction=0.9)).fit(progress=False)
    assert refused.chosen is not None and refused.vacuous_refused and "0 near-copies" in refused.warnings[0]
    with pytest.raises(ValueError, match="allow_vacuous=True"):
        refused.save_pretrained(tmp_path)
    allowed = Calibrator(grid(), Goal(reduction=0.9), finalists=0, allow_vacuous=True).fit(progress=False)
    assert not allowed.vacuous_refused and allowed.confirmed == []  # finalists=0: chosen on the screen alone
    allowed.save_pretrained(tmp_path)
    assert read_calibration(tmp_path)["warnings"] == allowed.warnings
    with pytest.raises(ValueError, match="bundled classifier ships its own calibration"):
        allowed.save_pretrained()  # by default into the classifier calibrated: here the bundled one


def test_the_api_chooses_what_the_cli_chooses_and_sample_runs_what_it_saved(tmp_path):
    """The same tiny grid through `cpsample calibrate` and through Calibrator(...).fit(): the same rows and choice
    (all but the wall-clock columns); save_pretrained into a copy of the classifier, which `sample --guard cpsample`
    then guards with."""
    options = dict(n_samples=4, steps=3, alphas=(0.2,), scales=(10.0, 100.0), seed=2)
    code, output = cli(
        "calibrate", "--classifier", "bundled", "--out", tmp_path / "cli", "--n-samples", "4", "--steps", "3",
        "--alphas", "0.2", "--scales", "10,100", "--target", "1.0", "--reduction", "0", "--seed", "2",
    )  # fmt: skip
    assert code == 0, output
    by_cli = json.loads((tmp_path / "cli" / RUN_RECORD).read_text())

    result = Calibrator(GridSettings(**options), Goal(reduction=0, target=1.0)).fit(progress=False)

    def measured(rows):
        return [{key: value for key, value in row.items() if key not in TIMING} for row in rows]

    assert measured(result.rows) == measured(by_cli["rows"])
    assert measured(result.confirmed) == measured(by_cli["confirmation"]["rows"])
    assert measured([result.chosen]) == measured([by_cli["chosen"]])
    assert result.summary in output

    classifier = tmp_path / "clf"
    shutil.copytree(resolve_model_dir("bundled", "classifier"), classifier)
    saved = json.loads(result.save_pretrained(classifier).read_text())
    assert saved["settings"] == result.knobs and saved["settings"]["scale"] == by_cli["chosen"]["scale"]
    code, output = cli(
        "sample",
        "--model",
        "bundled",
        "--guard",
        "cpsample",
        "--classifier",
        classifier,
        "-n",
        "2",
        "--steps",
        "3",
        "--out",
        tmp_path / "s",
    )
    assert code == 0 and "no calibration.json" not in output, output
    key = json.loads((tmp_path / "s" / "batches" / "settings.json").read_text())
    assert key["guard_settings"] == {"guard": "cpsample", **saved["settings"]}


def test_calibrate_samples_the_model_its_classifier_was_trained_for_never_a_stand_in(tmp_path):
    """Left out, --model is the model the classifier protects: a bundled classifier's own bundled model, else the
    denoiser its record names; a classifier that names none is refused (it used to fall back to the MNIST demo)."""
    import json
    import shutil

    from cpsample.calibration.search import model_for
    from cpsample.models.bundle import resolve_model_dir

    assert model_for("bundled") == "bundled" and model_for("bundled-rgb") == "bundled-rgb"
    assert model_for("bundled-rgb", "runs/mine") == "runs/mine"
    mine = tmp_path / "clf"
    shutil.copytree(resolve_model_dir("bundled", "classifier"), mine)
    record = json.loads((mine / "cpsample.json").read_text())
    record["settings"]["denoiser"] = str(tmp_path / "den")
    (mine / "cpsample.json").write_text(json.dumps(record))
    assert model_for(str(mine)) == str(tmp_path / "den")
    del record["settings"]["denoiser"]
    (mine / "cpsample.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="does not record the model it protects; give --model"):
        model_for(str(mine))
