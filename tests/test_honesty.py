"""Protection that did not happen is said loudly, never reported as success: a classifier that never fit, a guard
that never fired, a cut measured against a baseline without near-copies (calibrate then refuses to save)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers import cli

from cpsample.models.bundle import resolve_model_dir

# 3 denoising steps give blurs, never near-copies: a model that "copies 0%" for these tests
BLUR = ["--steps", "3"]


@pytest.fixture()
def classifier(tmp_path):
    folder = tmp_path / "clf"
    shutil.copytree(resolve_model_dir("bundled", "classifier"), folder)
    (folder / "calibration.json").unlink()
    return folder


def unfit(folder):
    record = json.loads((folder / "cpsample.json").read_text())
    record["results"].update(low_noise_loss=0.67, reached_paper_loss=False)
    (folder / "cpsample.json").write_text(json.dumps(record))
    return folder


def test_calibrate_refuses_to_save_a_cut_of_nothing(tmp_path, classifier):
    args = ["calibrate", "--classifier", classifier, "--n-samples", "4", *BLUR, "--alphas", "0.1", "--scales", "10"]
    code, output = cli(*args, "--out", tmp_path / "c")
    assert code == 2 and "plain sampling made 0 near-copies of" in output and "--allow-vacuous" in output, output
    assert not (classifier / "calibration.json").exists(), "nothing saved next to the classifier"
    measured = json.loads((tmp_path / "c" / "calibration_run.json").read_text())
    assert measured["rows"][0]["guard"] == "none" and measured["rows"][0]["near_copies"] == 0
    code, output = cli(*args, "--allow-vacuous", "--out", tmp_path / "c2")
    assert code == 0 and "warning: plain sampling made 0 near-copies" in output, output
    saved = json.loads((classifier / "calibration.json").read_text())
    assert any("0 near-copies" in warning for warning in saved["warnings"])


def test_calibrate_and_sample_say_when_the_classifier_never_fit(tmp_path, classifier):
    unfit(classifier)
    code, output = cli(
        "sample",
        "--model",
        "bundled",
        "-n",
        "2",
        *BLUR,
        "--guard",
        "cpsample",
        "--classifier",
        classifier,
        "--out",
        tmp_path / "s",
    )
    assert code == 0 and "did not fit its members' labels (low-noise loss 0.670" in output, output
    assert "did not fit" in json.loads((tmp_path / "s" / "cpsample.json").read_text())["results"]["warnings"][0]
    code, output = cli(
        "calibrate",
        "--classifier",
        classifier,
        "--n-samples",
        "4",
        *BLUR,
        "--alphas",
        "0.1",
        "--scales",
        "10",
        "--reduction",
        "0",
        "--out",
        tmp_path / "c",
    )
    assert code == 0 and "warning:" in output and "did not fit its members' labels" in output, output


def test_a_guard_that_never_fired_is_said_and_one_that_fired_is_not(tmp_path):
    def sample_at(alpha: str, out):
        command = ["sample", "--model", "bundled", "--classifier", "bundled", "-n", "2", *BLUR, "--guard", "cpsample"]
        return cli(*command, "--alpha", alpha, "--out", out)

    code, output = sample_at("0", tmp_path / "idle")
    assert code == 0 and "never fired on any of the 2 samples at any of the 3 steps" in output, output
    record = json.loads((tmp_path / "idle" / "cpsample.json").read_text())["results"]
    assert record["share_of_steps_guided"] == 0.0 and "never fired" in record["warnings"][0]
    code, output = sample_at("0.5", tmp_path / "on")
    assert code == 0 and "warning" not in output, output
    assert "warnings" not in json.loads((tmp_path / "on" / "cpsample.json").read_text())["results"]


def test_evaluate_says_a_baseline_without_near_copies_proves_no_cut(tmp_path):
    from cpsample.models import DiffusionModel

    assert cli("sample", "--model", "bundled", "-n", "6", *BLUR, "--out", tmp_path / "blur")[0] == 0
    members = tmp_path / "members.npz"
    np.savez(members, images=DiffusionModel.from_pretrained("bundled").members.images[:6])
    blur = tmp_path / "blur" / "samples.npz"
    code, output = cli(
        "evaluate",
        "--model",
        "bundled",
        "--samples",
        f"plain={blur}",
        "--samples",
        f"other={members}",
        "--out",
        tmp_path / "e",
    )
    assert code == 0 and "the baseline 'plain' made 0 near-copies of 6 images" in output, output
    code, output = cli(
        "evaluate",
        "--model",
        "bundled",
        "--samples",
        f"copies={members}",
        "--samples",
        f"plain={blur}",
        "--out",
        tmp_path / "e2",
    )
    assert code == 0 and "warning" not in output, output
