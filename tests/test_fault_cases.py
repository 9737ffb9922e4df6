"""Fault cases of the issue "No input lost, no secret in a shareable file, no traceback" (items 1-3): inputs inside
--out, user files in a folder cpsample did not make, and one compatibility check for every entry point (CLI and
API)."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import checksums, cli

SAMPLE = ["sample", "--model", "bundled", "-n", "8", "--steps", "5", "--batch-size", "4"]


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "s"
    assert cli(*SAMPLE, "--out", out)[0] == 0
    return out


@pytest.mark.parametrize(
    "command",
    [
        ["evaluate", "--model", "bundled", "--samples", "plain={samples}"],
        ["attack", "sample-nn", "--model", "bundled", "--samples", "{samples}"],
    ],
)
@pytest.mark.parametrize("where", ["same folder", "parent folder"])
def test_an_input_inside_out_is_refused_and_kept(sampled, command, where):
    """`evaluate --samples plain=s/samples.npz --out s --overwrite` used to delete its own input and then fail."""
    before = checksums(sampled)
    out = sampled if where == "same folder" else sampled.parent
    args = [part.format(samples=sampled / "samples.npz") for part in command]
    code, output = cli(*args, "--out", out, "--overwrite")
    assert code == 2 and "an input of this command" in output and "pick another --out" in output, output
    assert "Traceback" not in output
    assert checksums(sampled) == before, "the input run must be left exactly as it was"


def test_overwrite_never_deletes_user_files_in_a_folder_cpsample_did_not_make(tmp_path):
    """`demo --out proj --overwrite` on the user's own folder used to delete proj/samples/photo.png and
    proj/report.html because their names match the demo's outputs."""
    project = tmp_path / "proj"
    (project / "samples").mkdir(parents=True)
    (project / "samples" / "photo.png").write_bytes(b"a photo")
    (project / "report.html").write_text("<p>my report</p>")
    (project / "notes.txt").write_text("mine")
    before = checksums(project)
    code, output = cli("demo", "--out", project, "--overwrite", "--n-samples", "4")
    assert code == 2 and "cpsample did not write" in output and "report.html" in output and "samples" in output
    assert checksums(project) == before and not (project / ".cpsample-out").exists()


def test_overwrite_still_replaces_what_cpsample_wrote_after_a_killed_run(tmp_path):
    """A run killed before its cpsample.json left its marker: --overwrite may clear the outputs it wrote, and the
    user's own file beside them stays."""
    out = tmp_path / "s"
    assert cli(*SAMPLE, "--out", out)[0] == 0
    (out / "cpsample.json").unlink()  # as if killed before the record
    shutil.rmtree(out / "batches")
    (out / "mine.txt").write_text("mine")
    code, output = cli(*SAMPLE, "--seed", "1", "--out", out, "--overwrite")
    assert code == 0, output
    assert json.loads((out / "cpsample.json").read_text())["settings"]["seed"] == 1
    assert (out / "mine.txt").read_text() == "mine"


def test_a_user_folder_without_colliding_names_is_written_beside_its_files(tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert cli(*SAMPLE, "--out", out, "--overwrite")[0] == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "samples.npz").exists()


@pytest.fixture(scope="module")
def other_members(tmp_path_factory):
    """A copy of the bundled classifier whose split names other members (a classifier of another training set; its
    calibration, which would send the guard to the bundled selective classifier, left out)."""
    from cpsample.models.bundle import resolve_model_dir

    folder = tmp_path_factory.mktemp("clf") / "other"
    shutil.copytree(resolve_model_dir("bundled", "classifier"), folder)
    (folder / "calibration.json").unlink()
    split = json.loads((folder / "split.json").read_text())
    split["members"] = split["members"][1:] + [max(split["nonmembers"])]
    (folder / "split.json").write_text(json.dumps(split))
    return folder


MIA = [
    "attack",
    "mia",
    "--model",
    "bundled",
    "--guard",
    "cpsample",
    "--classifier",
    "bundled",
    "--members",
    "4",
    "--nonmembers",
    "4",
    "--t",
    "100",
    "--draws",
    "1",
]
SIDE = [
    "attack",
    "side",
    "--model",
    "bundled",
    "--classifier",
    "bundled",
    "--guard",
    "cpsample",
    "--clusters",
    "2",
    "--n-samples",
    "8",
    "--attack-steps",
    "2",
    "--train-steps",
    "2",
]


@pytest.mark.parametrize("command", [MIA, SIDE], ids=["mia", "side"])
@pytest.mark.parametrize(
    "model, classifier, message",
    [
        ("bundled-rgb", "bundled", "takes 1-channel 16x16 inputs but this model makes 3-channel 32x32 images"),
        ("bundled", "bundled-rgb", "takes 3-channel 32x32 inputs but this model makes 1-channel 16x16 images"),
        ("bundled", "OTHER", "trained on other member images"),
    ],
)
def test_attacks_refuse_a_classifier_made_for_other_images(
    tmp_path, other_members, command, model, classifier, message
):
    """attack mia / side used to end in a RuntimeError traceback on a channel mismatch, and ran (rc 0) with a
    classifier of other members, though `sample` refuses both."""
    classifier = other_members if classifier == "OTHER" else classifier
    code, output = cli(*command, "--model", model, "--classifier", classifier, "--out", tmp_path / "a")
    assert code == 2 and message in output and "Traceback" not in output, output
    assert not (tmp_path / "a").exists()


@pytest.fixture(scope="module")
def pipe():
    from diffusers import DDIMPipeline, DDIMScheduler

    from cpsample.models import DiffusionModel

    model = DiffusionModel.from_pretrained("bundled")
    return DDIMPipeline(unet=model.unet, scheduler=DDIMScheduler.from_config(model.schedule.config))


def test_protect_refuses_a_classifier_of_other_members(pipe, other_members):
    from cpsample import protect, protection_of

    with pytest.raises(ValueError, match="trained on other member images"):
        protect(pipe, str(other_members))
    assert protection_of(pipe) is None


def test_protect_refuses_no_classifier_and_a_bare_unet(pipe):
    from cpsample import protect, protection_of

    with pytest.raises(ValueError, match="protect\\(\\) needs a classifier of this model's members"):
        protect(pipe, None)
    assert protection_of(pipe) is None
    with pytest.raises(ValueError, match="takes a diffusers pipeline .* got UNet2DModel"):
        protect(pipe.unet, "bundled")


def test_the_library_entry_points_share_the_cli_check(other_members):
    """run_mia and run_side refuse what generate refuses: one check (sampling.pipeline.guard_for_model)."""
    from cpsample.attacks.membership import run_mia
    from cpsample.attacks.side import run_side
    from cpsample.sampling.pipeline import generate

    for call in (
        lambda: generate(n=2, steps=2, guard="cpsample", classifier=str(other_members), progress=False),
        lambda: run_mia(guard="cpsample", classifier=str(other_members), n_members=2, progress=False),
        lambda: run_side(defence="cpsample", classifier=str(other_members), progress=False),
    ):
        with pytest.raises(ValueError, match="trained on other member images"):
            call()
