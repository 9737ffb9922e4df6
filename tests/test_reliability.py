"""Issue 12: no silent wrong results, no lost work, nothing leaked, clear errors. Each test is one case of the issue,
run on the bundled model or a tiny denoiser trained here in seconds."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers import SAMPLE, TRAIN, checksums, cli, run_holding_the_lock
from PIL import Image
from safetensors.torch import load_file, save_file

GUARDED = [
    *SAMPLE,
    "--guard",
    "cpsample",
    "--classifier",
    "bundled",
    "--alpha",
    "0.5",
]  # alpha 0.5: the guard acts at every step


def images(folder):
    with np.load(folder / "samples.npz") as data:
        return data["images"]


@pytest.fixture()
def classifier_copy(bundled_dirs, tmp_path):
    """A copy of the bundled classifier folder, to change one thing of."""
    folder = tmp_path / "clf"
    shutil.copytree(bundled_dirs[1], folder)
    return folder


def flip_head(folder):
    """Same architecture, split and schedule, other weights: the head's sign flipped swaps its two labels."""
    path = folder / "classifier" / "diffusion_pytorch_model.safetensors"
    weights = load_file(path)
    weights["head.weight"], weights["head.bias"] = -weights["head.weight"], -weights["head.bias"]
    save_file(weights, path)


# --- silent wrong results ---------------------------------------------------------------------------------------


def test_rerun_with_another_classifier_never_reuses_the_cached_batches(tmp_path, classifier_copy):
    out = tmp_path / "s"
    assert cli(*GUARDED, "--out", out)[0] == 0
    first = images(out)
    flip_head(classifier_copy)
    code, output = cli(*GUARDED, "--classifier", classifier_copy, "--out", out)
    assert code == 2 and "guard_sha256" in output and "--overwrite" in output
    assert np.array_equal(images(out), first), "a refused run must leave the old result alone"
    assert cli(*GUARDED, "--classifier", classifier_copy, "--out", out, "--overwrite")[0] == 0
    assert not np.array_equal(images(out), first), "the new classifier's samples, not the cached ones"
    assert json.loads((out / "cpsample.json").read_text())["settings"]["classifier"] == str(classifier_copy)


def test_same_command_rerun_resumes_a_killed_sampling_run(tmp_path, monkeypatch):
    """The rerun samples only the lost batch: the UNet sees 2 images x 3 steps, not 4 x 3 (a full resample would give
    the same images, so only counting the denoiser's work tells a resume from a redo)."""
    from diffusers import UNet2DModel

    out = tmp_path / "s"
    assert cli(*GUARDED, "--out", out)[0] == 0
    first = images(out)
    (out / "batches" / "batch_00001.npz").unlink()  # killed while sampling the second batch
    seen, forward = [], UNet2DModel.forward
    counted = lambda self, x, *args, **kwargs: seen.append(len(x)) or forward(self, x, *args, **kwargs)  # noqa: E731
    monkeypatch.setattr(UNet2DModel, "forward", counted)
    assert cli(*GUARDED, "--out", out)[0] == 0
    np.testing.assert_allclose(images(out), first, atol=1e-6)
    assert seen == [2, 2, 2], seen
    assert json.loads((out / "cpsample.json").read_text())["results"]["denoiser_calls"] == 2 * 3
    seen.clear()
    assert cli(*GUARDED, "--out", out)[0] == 0  # finished: a rerun samples nothing
    assert seen == [] and np.array_equal(images(out), first)


@pytest.mark.parametrize(
    "change, message",
    [
        ("size", "takes 1-channel 8x8 inputs but this model makes 1-channel 16x16"),
        ("split", "other member images"),
        ("schedule", "another noise schedule"),
    ],
)
def test_a_classifier_made_for_other_images_is_refused(tmp_path, classifier_copy, change, message):
    if change == "size":
        from cpsample.models import TimeClassifier

        TimeClassifier(sample_size=8, block_out_channels=(8, 16), norm_num_groups=8).save_pretrained(
            classifier_copy / "classifier", safe_serialization=True
        )
    elif change == "split":
        split = json.loads((classifier_copy / "split.json").read_text())
        split["members"] = split["members"][1:]
        (classifier_copy / "split.json").write_text(json.dumps(split))
    else:
        config_path = classifier_copy / "scheduler" / "scheduler_config.json"
        config = json.loads(config_path.read_text())
        config["beta_end"] = 0.03
        config_path.write_text(json.dumps(config))
    out = tmp_path / "s"
    code, output = cli(*GUARDED, "--classifier", classifier_copy, "--out", out)
    assert code == 2 and message in output
    assert not (out / "samples.npz").exists()


@pytest.mark.parametrize(
    "knob, message",
    [
        (["--scale", "nan"], "--scale must be a finite number"),
        (["--scale", "inf"], "--scale must be a finite number"),
        (["--alpha", "nan"], "--alpha must be a finite number"),
        (["--tau", "0"], "--tau must be positive"),
    ],
)
def test_non_finite_guard_knobs_are_refused_up_front(tmp_path, knob, message):
    code, output = cli(*GUARDED, *knob, "--out", tmp_path / "s")
    assert code == 2 and message in output
    assert not (tmp_path / "s").exists()


def test_sampling_that_turns_nan_stops_without_a_result(tmp_path):
    code, output = cli(*GUARDED, "--scale", "1e6", "--dtype", "float16", "--out", tmp_path / "s")
    assert code == 2 and "NaN or infinite values at step" in output
    assert not (tmp_path / "s" / "samples.npz").exists() and not list((tmp_path / "s" / "batches").glob("batch_*"))


def test_training_that_diverges_stops_without_a_model(tmp_path):
    code, output = cli(*TRAIN, "--lr", "1e12", "--out", tmp_path / "m")
    assert code == 2 and "training diverged" in output
    assert not (tmp_path / "m" / "unet").exists() and not (tmp_path / "m" / "cpsample.json").exists()


@pytest.mark.parametrize(
    "option",
    [
        ["--lr", "nan"],
        ["--lr", "inf"],
        ["--ema-decay", "nan"],
        ["--save-every", "0"],
        ["--image-size", "0"],
        ["--batch-size", "0"],
    ],
)
def test_bad_training_numbers_are_refused(tmp_path, option):
    code, output = cli(*TRAIN, *option, "--out", tmp_path / "m")
    assert code == 2 and option[0] in output
    assert not (tmp_path / "m").exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny denoiser trained 4 steps (state saved every 2) on 16 MNIST members."""
    folder = tmp_path_factory.mktemp("trained") / "m"
    code, output = cli(*TRAIN, "--out", folder)
    assert code == 0, output
    return folder


@pytest.mark.parametrize(
    "change", [["--lr", "0.01"], ["--seed", "1"], ["--subset", "12"], ["--data", "digits"], ["--channels", "8,8"]]
)
def test_resume_with_other_settings_is_refused_and_keeps_the_split(trained, tmp_path, change):
    folder = tmp_path / "m"
    shutil.copytree(trained, folder)
    split_before = (folder / "split.json").read_text()
    code, output = cli(*TRAIN, "--steps", "6", "--resume", *change, "--out", folder)
    assert code == 2 and "--resume with other settings" in output
    assert (folder / "split.json").read_text() == split_before


# --- lost or overwritten work -------------------------------------------------------------------------------------


def test_sample_never_writes_into_a_model_folder(trained):
    record = (trained / "cpsample.json").read_text()
    for extra in ([], ["--overwrite"]):
        code, output = cli(*SAMPLE, "--out", trained, *extra)
        assert code == 2 and "never writes into a model folder" in output
    assert (trained / "cpsample.json").read_text() == record and not (trained / "samples.npz").exists()


def test_sample_refuses_an_out_holding_other_work(tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, output = cli(*SAMPLE, "--out", out)
    assert code == 2 and "notes.txt" in output and "--overwrite" in output
    assert cli(*SAMPLE, "--out", out, "--overwrite")[0] == 0
    (tmp_path / "file").write_text("x")
    code, output = cli(*SAMPLE, "--out", tmp_path / "file")
    assert code == 2 and "is a file" in output


def test_sample_refuses_a_result_made_with_other_settings(tmp_path):
    out = tmp_path / "s"
    assert cli(*SAMPLE, "--out", out)[0] == 0
    first = images(out)
    code, output = cli(*SAMPLE, "--seed", "1", "--out", out)
    assert code == 2 and "changed: seed" in output
    assert np.array_equal(images(out), first)


def test_train_refuses_to_replace_an_exported_model(trained, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(trained, folder)
    weights = (folder / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    code, output = cli(*TRAIN, "--out", folder)
    assert code == 2 and "--overwrite" in output
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == weights
    assert cli(*TRAIN, "--steps", "2", "--out", folder, "--overwrite")[0] == 0
    assert json.loads((folder / "cpsample.json").read_text())["results"]["steps"] == 2


@pytest.mark.parametrize("survivors", [("old", "tmp"), ("old",)])
def test_a_kill_inside_the_checkpoint_swap_resumes_from_the_surviving_copy(trained, tmp_path, survivors):
    """save_state renames train_state -> .old, then .tmp -> train_state: a kill between them leaves no train_state."""
    folder = tmp_path / "m"
    shutil.copytree(trained, folder)
    state = folder / "train_state"
    for name in survivors:
        shutil.copytree(state, folder / f"train_state.{name}")
    shutil.rmtree(state)
    code, output = cli(*TRAIN, "--steps", "6", "--resume", "--out", folder)
    assert code == 0, output
    assert json.loads((folder / "cpsample.json").read_text())["results"]["resumed_from"] == 4
    straight = tmp_path / "straight"
    assert cli(*TRAIN, "--steps", "6", "--out", straight)[0] == 0
    for name, tensor in load_file(straight / "train_state" / "model.safetensors").items():
        assert np.array_equal(load_file(state / "model.safetensors")[name].numpy(), tensor.numpy()), name


def test_resume_without_a_saved_state_says_so(tmp_path):
    code, output = cli(*TRAIN, "--resume", "--out", tmp_path / "m")
    assert code == 2 and "holds no train_state" in output and "drop --resume" in output


def test_relative_data_is_recorded_absolute_and_checked_by_content(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    np.savez(data / "toy.npz", images=rng.uniform(-1, 1, (12, 1, 8, 8)).astype(np.float32))
    monkeypatch.chdir(data)
    assert (
        cli(
            "train-denoiser",
            "--data",
            "toy.npz",
            "--image-size",
            "8",
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--channels",
            "8,16",
            "--out",
            tmp_path / "den",
        )[0]
        == 0
    )
    assert json.loads((tmp_path / "den" / "cpsample.json").read_text())["settings"]["data"] == str(data / "toy.npz")
    monkeypatch.chdir(tmp_path)  # elsewhere: the classifier still finds the data
    classifier = [
        "train-classifier",
        "--model",
        tmp_path / "den",
        "--steps",
        "2",
        "--relabel-after",
        "1",
        "--batch-size",
        "4",
        "--channels",
        "8,16",
    ]
    code, output = cli(*classifier, "--out", tmp_path / "clf")
    assert code == 0, output
    np.savez(data / "toy.npz", images=rng.uniform(-1, 1, (12, 1, 8, 8)).astype(np.float32))  # the data changed since
    code, output = cli(*classifier, "--out", tmp_path / "clf2")
    assert code == 2 and "member images differ" in output


# --- privacy of the protection ------------------------------------------------------------------------------------


def test_samples_carry_no_trace_unless_asked(tmp_path):
    out = tmp_path / "s"
    assert cli(*GUARDED, "--out", out)[0] == 0
    with np.load(out / "samples.npz") as data:
        assert set(data.files) == {"images", "uint8"}
    assert not (out / "trace.npz").exists() and not (out / "trace.png").exists()


# --- clear errors instead of tracebacks ---------------------------------------------------------------------------


def test_no_cuda_gives_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, output = cli(*SAMPLE, "--device", "cuda", "--out", tmp_path / "s")
    assert code == 2 and "no CUDA GPU" in output


def test_a_truncated_cached_batch_names_the_file(tmp_path):
    out = tmp_path / "s"
    assert cli(*SAMPLE, "--out", out)[0] == 0
    batch = out / "batches" / "batch_00000.npz"
    batch.write_bytes(batch.read_bytes()[:50])
    code, output = cli(*SAMPLE, "--out", out)
    assert code == 2 and "batch_00000.npz: cached batch is damaged" in output


@pytest.mark.parametrize("damage", ["truncate", "bad json"])
def test_a_damaged_checkpoint_gives_one_line(trained, tmp_path, damage):
    folder = tmp_path / "m"
    shutil.copytree(trained, folder)
    if damage == "truncate":
        path = folder / "train_state" / "model.safetensors"
        path.write_bytes(path.read_bytes()[:100])
    else:
        (folder / "train_state" / "state.json").write_text("{not json")
    code, output = cli(*TRAIN, "--steps", "6", "--resume", "--out", folder)
    assert code == 2 and "damaged training checkpoint" in output


@pytest.mark.parametrize("damage", ["broken config", "pickle only"])
def test_a_damaged_model_folder_gives_one_line(trained, tmp_path, damage):
    folder = tmp_path / "m"
    shutil.copytree(trained, folder)
    if damage == "broken config":
        (folder / "unet" / "config.json").write_text("{")
    else:
        weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
        weights.rename(weights.with_suffix(".bin"))
    code, output = cli(*SAMPLE, "--model", folder, "--out", tmp_path / "s")
    assert code == 2 and "cannot load the model" in output and str(folder / "unet") in output


@pytest.mark.parametrize(
    "array", [np.zeros((4, 1, 8, 8), dtype=bool), np.zeros((4, 1, 8, 8), dtype=complex), np.full((4, 1, 8, 8), "a")]
)
def test_npz_of_non_pixel_values_is_refused(tmp_path, array):
    path = tmp_path / "bad.npz"
    np.savez(path, images=array)
    code, output = cli(*TRAIN, "--data", path, "--out", tmp_path / "m")
    assert code == 2 and "bad.npz[images]" in output and "expected uint8 or float" in output


def test_no_other_command_replaces_a_model_record(trained):
    from cpsample.provenance import write_record

    record = (trained / "cpsample.json").read_text()
    with pytest.raises(FileExistsError, match="never writes into a model folder"):
        write_record(trained, "evaluate", {})
    assert (trained / "cpsample.json").read_text() == record


def test_classifier_resume_with_other_labels_is_refused(trained, tmp_path):
    command = [
        "train-classifier",
        "--model",
        trained,
        "--steps",
        "2",
        "--relabel-after",
        "1",
        "--batch-size",
        "4",
        "--channels",
        "8,16",
        "--out",
        tmp_path / "clf",
    ]
    assert cli(*command)[0] == 0
    code, output = cli(*command, "--steps", "3", "--resume", "--label-seed", "5")
    assert code == 2 and "label_seed: 0 then, 5 now" in output


# --- issue 32: never destroy a user's work --------------------------------------------------------------------------


CLASSIFIER = [
    "train-classifier",
    "--model",
    "bundled",
    "--steps",
    "2",
    "--relabel-after",
    "1",
    "--batch-size",
    "4",
    "--channels",
    "8,16",
]


@pytest.fixture(scope="module")
def works(trained, tmp_path_factory):
    """A user's trained work: the tiny denoiser, a classifier of it (with a calibration), a tiny SD pipeline."""
    root = tmp_path_factory.mktemp("works")
    classifier = root / "clf"
    code, output = cli(*CLASSIFIER, "--model", trained, "--out", classifier)
    assert code == 0, output
    (classifier / "calibration.json").write_text(json.dumps({"alpha": 0.1, "scale": 10.0}))
    folders = {"denoiser": trained, "classifier": classifier}
    if _has_transformers():
        from cpsample.sampling.latent import build_tiny_sd_pipeline

        folders["pipeline"] = build_tiny_sd_pipeline(root / "pipe")
    return folders


def _has_transformers():
    import importlib.util

    return importlib.util.find_spec("transformers") is not None


def refused_commands(out, dummy):
    """Every command that takes --out, with just enough options to reach its --out check."""
    return {
        "sample": [*SAMPLE, "--out", out],
        "evaluate": ["evaluate", "--model", "bundled", "--samples", f"a={dummy}", "--out", out],
        "attack mia": ["attack", "mia", "--model", "bundled", "--out", out],
        "attack side": ["attack", "side", "--model", "bundled", "--out", out],
        "calibrate": ["calibrate", "--classifier", "bundled", "--steps", "3", "--out", out],
        "demo": ["demo", "--out", out],
        "make-tiny-sd": ["make-tiny-sd", "--out", out],
        "sample --prompt": ["sample", "--model", dummy, "--prompt", "x", "--guard", "none", "--out", out],
        "train-feature-net": ["train-feature-net", "--data", "digits", "--epochs", "1", "--out", out],
        "train-latent-classifier": ["train-latent-classifier", "--model", dummy, "--data", dummy, "--out", out],
        "train-denoiser": [*TRAIN, "--out", out],
        "train-classifier": [*CLASSIFIER, "--out", out],
        "train-conditional": ["train-conditional", "--data", "mnist", "--subset", "16", "--steps", "2", "--out", out],
    }


NEEDS_TRANSFORMERS = ("make-tiny-sd", "sample --prompt", "train-latent-classifier")


@pytest.mark.parametrize("target", ["denoiser", "classifier", "pipeline", "inside denoiser", "inside pipeline"])
def test_no_command_writes_into_a_model_classifier_or_pipeline_folder(works, tmp_path, target):
    """make-tiny-sd overwrote unet/, train-feature-net replaced cpsample.json, calibrate replaced calibration.json,
    sample-sd wrote into the pipeline; evaluate, attack mia/side wrote before refusing. Now each is refused up
    front, with or without --overwrite, and the folders' checksums are unchanged."""
    kind = target.split()[-1]
    if kind not in works:
        pytest.skip("needs transformers")
    folder = works[kind]
    out = folder / "unet" / "mine" if target.startswith("inside") else folder
    before = checksums(*works.values())
    for name, command in refused_commands(out, tmp_path / "none").items():
        own_model = (name, kind) in (
            ("train-denoiser", "denoiser"),
            ("train-classifier", "classifier"),
            ("make-tiny-sd", "pipeline"),
        )
        if (own_model and out == folder) or (name in NEEDS_TRANSFORMERS and not _has_transformers()):
            continue
        for extra in ([], ["--overwrite"]):
            code, output = cli(*command, *extra)
            assert code == 2 and "never writes into a model folder" in output, (name, extra, output)
            assert "Traceback" not in output
    assert checksums(*works.values()) == before


def test_a_training_command_replaces_only_its_own_kind_of_model(works, tmp_path):
    """train-classifier --overwrite may replace a classifier it trained, never a denoiser (nor the reverse)."""
    before = checksums(*works.values())
    code, output = cli(*CLASSIFIER, "--model", works["denoiser"], "--out", works["denoiser"], "--overwrite")
    assert code == 2 and "holds a denoiser" in output
    code, output = cli(*TRAIN, "--out", works["classifier"], "--overwrite")
    assert code == 2 and "holds a classifier" in output
    assert checksums(*works.values()) == before


@pytest.mark.parametrize(
    "name",
    [
        "evaluate",
        "attack mia",
        "attack side",
        "calibrate",
        "demo",
        "make-tiny-sd",
        "sample --prompt",
        "train-feature-net",
        "train-latent-classifier",
    ],
)
def test_every_command_refuses_a_non_empty_out_without_overwrite(works, tmp_path, name):
    if name in NEEDS_TRANSFORMERS and not _has_transformers():
        pytest.skip("needs transformers")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = checksums(out, *works.values())
    code, output = cli(*refused_commands(out, tmp_path / "none")[name])
    assert code == 2 and "notes.txt" in output and "--overwrite" in output, output
    assert checksums(out, *works.values()) == before
    help_text = cli(
        *refused_commands(out, tmp_path / "none")[name][: 2 if name.startswith("attack") else 1], "--help"
    )[1]
    assert "--overwrite" in help_text, f"{name} advises an --overwrite it lacks"


def test_overwrite_removes_an_earlier_demo_s_stale_grids(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "cpsample.json").write_text(json.dumps({"command": "demo", "settings": {}}))
    (out / "grid_cpsample-one-stage.png").write_bytes(b"old grid")
    (out / "mine.txt").write_text("not the demo's")
    code, output = cli(
        "demo",
        "--out",
        out,
        "--n-samples",
        "4",
        "--steps",
        "2",
        "--mia-members",
        "0",
        "--batch-size",
        "4",
        "--no-one-stage-row",
        "--overwrite",
    )
    assert code == 0, output
    assert not (out / "grid_cpsample-one-stage.png").exists() and (out / "mine.txt").read_text() == "not the demo's"
    assert (out / "report.html").exists()


def test_sample_overwrite_into_an_evaluate_folder_removes_its_private_report(tmp_path):
    samples = tmp_path / "s"
    assert cli(*SAMPLE, "--out", samples)[0] == 0
    report = tmp_path / "report"
    code, output = cli(
        "evaluate",
        "--model",
        "bundled",
        "--samples",
        f"plain={samples / 'samples.npz'}",
        "--quality-net",
        "none",
        "--permutation-rounds",
        "10",
        "--out",
        report,
    )
    assert code == 0, output
    assert (report / "report.html").exists()
    code, output = cli(*SAMPLE, "--out", report)
    assert code == 2 and "--overwrite" in output
    assert cli(*SAMPLE, "--out", report, "--overwrite")[0] == 0
    assert not any((report / name).exists() for name in ("report.html", "report.md", "report.json"))
    assert json.loads((report / "cpsample.json").read_text())["command"] == "sample"


def test_train_classifier_overwrite_drops_the_old_calibration(works, tmp_path):
    folder = tmp_path / "clf"
    shutil.copytree(works["classifier"], folder)
    assert (folder / "calibration.json").exists()
    code, output = cli(*CLASSIFIER, "--model", works["denoiser"], "--out", folder, "--overwrite")
    assert code == 0, output
    assert not (folder / "calibration.json").exists(), "the old model's calibration would be used with the new one"


def test_a_running_sample_locks_its_out(tmp_path):
    out = tmp_path / "s"
    assert cli(*SAMPLE, "--out", out)[0] == 0
    assert not (out / ".cpsample.lock").exists(), "the lock is dropped when the run ends"
    first = images(out)
    with run_holding_the_lock(out, "sample") as runner:  # another process, its run going on
        code, output = cli(*SAMPLE, "--seed", "1", "--out", out, "--overwrite")
        assert code == 2 and "in use by another run (`cpsample sample`, pid" in output and str(runner.pid) in output
        assert np.array_equal(images(out), first), "the running run's files are left alone"
        runner.kill()  # SIGKILL: no chance to release anything
        runner.wait()
    assert (out / ".cpsample.lock").exists(), "a killed run leaves its lock file"
    code, output = cli(*SAMPLE, "--seed", "1", "--out", out, "--overwrite")  # a killed run's lock does not block
    assert code == 0, output
    assert not (out / ".cpsample.lock").exists() and not (out / ".cpsample.lock.holder").exists()


# silent wrong results


def test_16_bit_grey_pngs_load_as_one_grey_channel(tmp_path):
    from cpsample.data import load_dataset

    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, value in enumerate((0, 32768, 65535)):
        Image.fromarray(np.full((8, 8), value, dtype=np.uint16)).save(folder / f"{i}.png")
    assert Image.open(folder / "1.png").mode.startswith("I")
    loaded = load_dataset(str(folder))
    assert loaded.images.shape == (3, 1, 8, 8)
    np.testing.assert_allclose(loaded.images[:, 0, 0, 0], [-1.0, 0.0, 1.0], atol=1e-4)


def test_a_cached_batch_holding_nan_is_refused(tmp_path):
    out = tmp_path / "s"
    assert cli(*SAMPLE, "--out", out)[0] == 0
    batch = out / "batches" / "batch_00000.npz"
    with np.load(batch) as data:
        arrays = dict(data)
    arrays["images"][0, 0, 0, 0] = np.nan
    np.savez(batch, **arrays)
    (out / "samples.npz").unlink()
    code, output = cli(*SAMPLE, "--out", out)
    assert code == 2 and "batch_00000.npz" in output and "NaN" in output
    assert not (out / "samples.npz").exists()


def test_a_classifier_without_split_json_is_refused(tmp_path, classifier_copy):
    (classifier_copy / "split.json").unlink()
    code, output = cli(*GUARDED, "--classifier", classifier_copy, "--out", tmp_path / "s")
    assert code == 2 and "no split.json" in output
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("value", ["5", "1.01", "-1"])
def test_an_amg_threshold_that_is_no_cosine_is_refused(tmp_path, value):
    code, output = cli(*SAMPLE, "--guard", "amg", "--option", f"threshold={value}", "--out", tmp_path / "s")
    assert code == 2 and "cosine similarity" in output
    assert not (tmp_path / "s").exists()


def test_a_unet_whose_sample_size_was_edited_is_refused(trained, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(trained, folder)
    config_path = folder / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    config["sample_size"] = 32
    config_path.write_text(json.dumps(config))
    code, output = cli(*SAMPLE, "--model", folder, "--out", tmp_path / "s")
    assert code == 2 and "sample_size 32" in output and "16x16" in output


def test_an_absurd_sample_count_is_refused_up_front(tmp_path):
    code, output = cli("sample", "--model", "bundled", "-n", str(10**12), "--out", tmp_path / "s")
    assert code == 2 and "GiB" in output
    assert not (tmp_path / "s").exists()


# tracebacks instead of one line


@pytest.mark.parametrize(
    "command",
    [SAMPLE, ["train-feature-net", "--data", "digits", "--epochs", "1"], ["attack", "mia", "--model", "bundled"]],
)
def test_device_meta_gives_one_line(tmp_path, command):
    code, output = cli(*command, "--device", "meta", "--out", tmp_path / "o")
    assert code == 2 and "meta" in output and "Traceback" not in output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("damage", ["pickled unet", "truncated unet", "bad model_index.json"])
def test_a_damaged_pipeline_gives_one_line(works, tmp_path, damage):
    if "pipeline" not in works:
        pytest.skip("needs transformers")
    folder = tmp_path / "pipe"
    shutil.copytree(works["pipeline"], folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    if damage == "pickled unet":
        import torch

        torch.save(load_file(weights), folder / "unet" / "diffusion_pytorch_model.bin")
        weights.unlink()
    elif damage == "truncated unet":
        weights.write_bytes(weights.read_bytes()[:200])
    else:
        (folder / "model_index.json").write_text("{ not json")
    code, output = cli(
        "sample",
        "--model",
        folder,
        "--prompt",
        "x",
        "--guard",
        "none",
        "-n",
        "1",
        "--steps",
        "2",
        "--out",
        tmp_path / "s",
    )
    assert code == 2 and "cannot load the Stable Diffusion pipeline" in output, output


@pytest.mark.parametrize(
    "command, option",
    [
        (["calibrate", "--classifier", "bundled", "--steps", "0"], "--steps"),
        (["train-feature-net", "--data", "digits", "--image-size", "0"], "--image-size"),
        (["demo", "--batch-size", "0"], "--batch-size"),
        ([*SAMPLE, "--seed", str(2**40)], "--seed"),
        ([*SAMPLE, "--seed", str(2**70)], "--seed"),
        ([*SAMPLE, "--seed", "-1"], "--seed"),
    ],
)
def test_bad_numbers_give_one_line(tmp_path, command, option):
    code, output = cli(*command, "--out", tmp_path / "o")
    assert code == 2 and option in output and "Traceback" not in output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ("empty file", "the file is empty"),
        ("no arrays", "holds no arrays"),
        ("no images", "holds no images"),
        ("pickled", "pickled Python objects"),
    ],
)
def test_bad_npz_files_give_one_clear_line(tmp_path, content, message):
    path = tmp_path / "bad.npz"
    if content == "empty file":
        path.write_bytes(b"")
    elif content == "no arrays":
        np.savez(path)
    elif content == "no images":
        np.savez(path, images=np.zeros((0, 1, 8, 8), dtype=np.float32))
    else:
        np.savez(path, images=np.array([np.zeros((8, 8)), 1], dtype=object))
    for command in ([*TRAIN, "--data", path], ["evaluate", "--model", "bundled", "--samples", f"a={path}"]):
        code, output = cli(*command, "--out", tmp_path / "o")
        assert code == 2 and "bad.npz" in output and message in output, output
        assert not (tmp_path / "o").exists()


def test_train_classifier_says_loudly_when_the_members_were_not_fitted(tmp_path):
    """Two steps cannot fit random labels: the result line says the paper's loss was NOT reached and a warning says
    what to change, never a quiet success."""
    code, output = cli(*CLASSIFIER, "--out", tmp_path / "clf")
    assert code == 0, output
    assert "did NOT reach the paper's < 0.05" in output, output
    assert "members were NOT fitted" in output and "To fix:" in output, output
    record = json.loads((tmp_path / "clf" / "cpsample.json").read_text())
    assert record["results"]["reached_paper_loss"] is False
