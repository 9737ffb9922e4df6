"""Issue "the next 20 fault cases", items 6 and 7: no traceback, and no message that blames the wrong cause. Each
case gives one clear line (exit code 2) or the right result; run on the bundled models or a tiny denoiser."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import SAMPLE, TRAIN
from helpers import cli as run_cli
from safetensors.torch import load_file

EVALUATE = ["evaluate", "--model", "bundled", "--permutation-rounds", "10", "--quality-net", "none"]
SAMPLE_NN = ["attack", "sample-nn", "--model", "bundled", "--members", "8"]
MIA = [
    "attack",
    "mia",
    "--model",
    "bundled",
    "--guard",
    "cpsample",
    "--classifier",
    "bundled",
    "--attack",
    "loss",
    "--t",
    "100",
    "--members",
    "4",
    "--draws",
    "1",
]


def cli(*args):
    return run_cli(*args, traceback_fails=True)  # a traceback: the test shows it


def one_line_error(code, output, *words):
    assert code == 2, output
    assert "error:" in output and "Traceback" not in output, output
    for word in words:
        assert word in output, (word, output)


@pytest.fixture()
def classifier_copy(tmp_path):
    """A copy of the bundled classifier whose calibration.json holds one stage only (so its knobs are used)."""
    from cpsample.models.bundle import resolve_model_dir

    folder = tmp_path / "clf"
    shutil.copytree(resolve_model_dir("bundled", "classifier"), folder)
    record = json.loads((folder / "calibration.json").read_text())
    record.pop("two_stage", None)
    (folder / "calibration.json").write_text(json.dumps(record))
    return folder


def set_calibration(folder, change=None, drop=None, two_stage=None):
    path = folder / "calibration.json"
    record = json.loads(path.read_text())
    record["settings"].update(change or {})
    for name in drop or ():
        del record["settings"][name]
    if two_stage is not None:
        record["two_stage"] = two_stage
    path.write_text(json.dumps(record))
    return path


# --- 6. tracebacks ----------------------------------------------------------------------------------------------


def test_a_plain_npy_array_of_images_is_read_as_samples(tmp_path):
    """np.save(images) is read like a samples.npz (TypeError before): same set, same result."""
    from cpsample.data.samples import load_samples

    images = np.random.default_rng(0).uniform(-1, 1, (6, 1, 16, 16)).astype(np.float32)
    np.save(tmp_path / "s.npy", images)
    np.savez(tmp_path / "s.npz", images=images)
    assert np.array_equal(load_samples(tmp_path / "s.npy").images, images)
    code, output = cli(*EVALUATE, "--samples", f"a={tmp_path / 's.npy'}", "--out", tmp_path / "e")
    assert code == 0, output
    for name in ("npy", "npz"):
        code, output = cli(*SAMPLE_NN, "--samples", f"a={tmp_path / f's.{name}'}", "--out", tmp_path / name)
        assert code == 0, output
    result = [json.loads((tmp_path / name / "result.json").read_text())["a"] for name in ("npy", "npz")]
    assert result[0]["member_scores"] == result[1]["member_scores"] and result[0]["n_samples"] == 6


@pytest.mark.parametrize(
    "content, message",
    [
        ("pickled", "pickled Python objects"),
        ("zero images", "holds no images"),
        ("strings", "expected uint8 or float"),
        ("huge values", "values span"),
        ("one image, no batch axis", "expected (N, H, W)"),
    ],
)
def test_a_bad_npy_samples_file_gives_one_line(tmp_path, content, message):
    path = tmp_path / "s.npy"
    array = {
        "pickled": np.array([np.zeros((4, 4)), 1], dtype=object),
        "zero images": np.zeros((0, 1, 16, 16), np.float32),
        "strings": np.array([["a"] * 16] * 16),
        "huge values": np.full((2, 1, 16, 16), 1e30, np.float32),
        "one image, no batch axis": np.zeros((16, 16), np.float32),
    }[content]
    np.save(path, array, allow_pickle=True)
    for command in (EVALUATE, SAMPLE_NN):
        one_line_error(*cli(*command, "--samples", f"a={path}", "--out", tmp_path / "o"), "s.npy", message)
        assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "value, message",
    [
        ("x", 'alpha is "x", but it must be a finite number'),
        (None, "alpha is null, but it must be a number"),
        (True, "alpha is true, but it must be a finite number"),
        ([0.1], "alpha is [0.1], but it must be a finite number"),
        (float("nan"), "alpha is NaN, but it must be a finite number"),
        (-0.1, "alpha is -0.1, but CPSample's alpha must be in [0, 0.5]"),
    ],
)
def test_a_calibration_with_a_bad_alpha_names_the_file(tmp_path, classifier_copy, value, message):
    """TypeError before in `sample --guard cpsample`, `attack mia --guard cpsample` and protect()."""
    from diffusers import DDPMPipeline

    from cpsample.models.bundle import resolve_model_dir
    from cpsample.sampling.protect import protect

    path = set_calibration(classifier_copy, {"alpha": value})
    for command in ([*SAMPLE, "--guard", "cpsample"], MIA):
        code, output = cli(*command, "--classifier", classifier_copy, "--out", tmp_path / "o")
        one_line_error(code, output, str(path), message, "cpsample calibrate --classifier", "delete the file")
        assert "--alpha" not in output and not (tmp_path / "o").exists()
    pipe = DDPMPipeline.from_pretrained(resolve_model_dir("bundled", "denoiser"))
    with pytest.raises(ValueError, match="calibration.json: alpha is"):
        protect(pipe, classifier_copy)


@pytest.mark.parametrize(
    "change, drop, message",
    [
        ({"scale": -1}, (), "scale is -1, but CPSample's scale must be >= 0"),
        ({"scale": "10"}, (), 'scale is "10", but it must be a finite number'),
        ({"tau": 0}, (), "tau is 0, but CPSample's tau must be > 0"),
        ({"tau": float("inf")}, (), "tau is Infinity, but it must be a finite number"),
        ({"max_t": 2.5}, (), "max_t is 2.5, but it must be a whole timestep"),
        ({"max_t": -3}, (), "max_t is -3, but CPSample's max_t must be >= 0"),
        ({}, ("tau",), "not a cpsample calibration"),
    ],
)
def test_other_bad_knobs_in_a_calibration_name_the_file(tmp_path, classifier_copy, change, drop, message):
    path = set_calibration(classifier_copy, change, drop)
    code, output = cli(*SAMPLE, "--guard", "cpsample", "--classifier", classifier_copy, "--out", tmp_path / "o")
    one_line_error(code, output, str(path), message)


def test_a_calibration_s_max_t_null_means_every_step(tmp_path, classifier_copy):
    set_calibration(classifier_copy, {"max_t": None})
    code, output = cli(*SAMPLE, "--guard", "cpsample", "--classifier", classifier_copy, "--out", tmp_path / "o")
    assert code == 0, output


@pytest.mark.parametrize(
    "two_stage, message",
    [
        ({"early_classifier": "bundled", "early_scale": "3"}, 'two_stage early_scale is "3", but it must be a finite'),
        (
            {"early_classifier": "bundled", "alpha": 5},
            "two_stage alpha is 5, but CPSample's alpha must be in [0, 0.5]",
        ),
        ({"early_classifier": 7}, "two_stage early_classifier is 7, but it must be a classifier folder"),
        ({"early_classifier": "bundled", "colour": 1}, "its two_stage entry makes no two-stage guard"),
        ({"early_classifier": "bundled", "max_t": 10, "min_t": 50}, "its two_stage entry makes no two-stage guard"),
        ([1, 2], "its two_stage entry is not a set of options"),
    ],
)
def test_a_bad_two_stage_entry_names_the_file(tmp_path, classifier_copy, two_stage, message):
    path = set_calibration(classifier_copy, two_stage=two_stage)
    code, output = cli(*SAMPLE, "--guard", "cpsample", "--classifier", classifier_copy, "--out", tmp_path / "o")
    one_line_error(code, output, str(path), message, "one_stage=true")


def test_an_out_under_a_file_gives_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    code, output = cli(*SAMPLE, "--out", tmp_path / "file" / "sub")
    one_line_error(code, output, "Not a directory", "a part of that path is a file")


@pytest.mark.parametrize(
    "error, message",
    [
        (PermissionError(errno.EACCES, "Permission denied"), "no permission to write there"),
        (OSError(errno.EROFS, "Read-only file system"), "that file system is read-only"),
    ],
)
def test_an_unwritable_out_gives_one_line(tmp_path, monkeypatch, error, message):
    """Root may write anywhere, so the refusal the file system would give is played by mkdir."""
    real = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self.name == "o":
            error.filename = str(self)
            raise error
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    for command in (SAMPLE, TRAIN, [*EVALUATE, "--samples", "a=x.npz"]):
        one_line_error(*cli(*command, "--out", tmp_path / "o"), str(tmp_path / "o"), message)


def test_a_symlink_loop_as_out_gives_one_line(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    one_line_error(*cli(*SAMPLE, "--out", tmp_path / "a"), "Symlink loop", "leads back to itself")


def test_a_full_disk_while_sampling_gives_one_line_and_the_same_command_finishes(tmp_path, monkeypatch):
    import cpsample.sampling.outputs as outputs

    real = outputs._write_npz

    def full(path, content):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(outputs, "_write_npz", full)
    out = tmp_path / "s"
    one_line_error(*cli(*SAMPLE, "--out", out), "samples.npz: No space left on device", "rerun the same command")
    monkeypatch.setattr(outputs, "_write_npz", real)
    assert cli(*SAMPLE, "--out", out)[0] == 0
    assert (out / "samples.npz").exists()


def failing_save_file(monkeypatch, fail_on: int):
    """safetensors' save_file in the training loop fails as on a full disk from its fail_on-th call on."""
    import safetensors

    import cpsample.training.loop as loop

    calls, real = [], loop.save_file

    def save_file(tensors, path, *args, **kwargs):
        calls.append(path)
        if len(calls) >= fail_on:
            Path(path).write_bytes(b"half")
            raise safetensors.SafetensorError(
                "Error while serializing: I/O error: No space left on device (os error 28)"
            )
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(loop, "save_file", save_file)
    return real


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    folder = tmp_path_factory.mktemp("straight") / "m"
    code, output = cli(*TRAIN, "--out", folder)
    assert code == 0, output
    return folder


def test_a_full_disk_while_training_resumes_from_the_last_good_state(tmp_path, monkeypatch, straight):
    """The state at step 2 saved (3 files), the one at step 4 not: no train_state.tmp is left, --resume trains steps
    3-4 only and ends with the uninterrupted run's weights."""
    import cpsample.training.loop as loop

    out = tmp_path / "m"
    real = failing_save_file(monkeypatch, fail_on=4)
    code, output = cli(*TRAIN, "--out", out)
    one_line_error(code, output, "train_state.tmp: No space left on device", "--resume")
    assert sorted(path.name for path in out.iterdir() if path.name != ".cpsample-out") == ["split.json", "train_state"]
    assert json.loads((out / "train_state" / "state.json").read_text())["step"] == 2
    monkeypatch.setattr(loop, "save_file", real)
    code, output = cli(*TRAIN, "--out", out)
    assert code == 2 and "--resume" in output  # the same command without --resume says how to continue
    code, output = cli(*TRAIN, "--resume", "--out", out)
    assert code == 0, output
    assert json.loads((out / "cpsample.json").read_text())["results"]["resumed_from"] == 2
    for name, tensor in load_file(straight / "train_state" / "model.safetensors").items():
        assert np.array_equal(load_file(out / "train_state" / "model.safetensors")[name].numpy(), tensor.numpy()), name


def test_a_full_disk_at_the_first_save_leaves_nothing_and_the_same_command_starts_again(tmp_path, monkeypatch):
    """Before: split.json and train_state.tmp stayed, and only --overwrite got past them."""
    import cpsample.training.loop as loop

    out = tmp_path / "m"
    real = failing_save_file(monkeypatch, fail_on=1)
    one_line_error(*cli(*TRAIN, "--out", out), "No space left on device")
    assert not out.exists()
    one_line_error(*cli(*TRAIN, "--resume", "--out", out), "holds no train_state", "drop --resume")
    monkeypatch.setattr(loop, "save_file", real)
    assert cli(*TRAIN, "--out", out)[0] == 0


def test_a_full_disk_while_exporting_leaves_no_half_model_and_resume_exports_it(tmp_path, monkeypatch):
    import cpsample.training.denoiser as denoiser

    real = denoiser.save_denoiser

    def half(folder, *args, **kwargs):
        (Path(folder) / "unet").mkdir()
        (Path(folder) / "unet" / "config.json").write_text("{}")
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(folder) / "unet"))

    monkeypatch.setattr(denoiser, "save_denoiser", half)
    out = tmp_path / "m"
    one_line_error(*cli(*TRAIN, "--out", out), "No space left on device")
    assert sorted(path.name for path in out.iterdir() if path.name != ".cpsample-out") == ["split.json", "train_state"]
    monkeypatch.setattr(denoiser, "save_denoiser", real)
    code, output = cli(*TRAIN, "--resume", "--out", out)
    assert code == 0, output
    assert json.loads((out / "cpsample.json").read_text())["results"]["resumed_from"] == 4
    assert (out / "unet").is_dir()


def test_a_full_disk_while_training_a_classifier_resumes(tmp_path, monkeypatch):
    import cpsample.training.loop as loop

    command = [
        "train-classifier",
        "--model",
        "bundled",
        "--steps",
        "4",
        "--batch-size",
        "4",
        "--save-every",
        "2",
        "--channels",
        "8,16",
        "--out",
        tmp_path / "c",
    ]
    real = failing_save_file(monkeypatch, fail_on=4)  # model, ema, optimizer, (targets fails) at step 2
    one_line_error(*cli(*command), "No space left on device")
    assert not (tmp_path / "c").exists()
    monkeypatch.setattr(loop, "save_file", real)
    failing_save_file(monkeypatch, fail_on=5)  # the step-2 state saved, the step-4 one not
    one_line_error(*cli(*command), "No space left on device", "--resume")
    assert json.loads((tmp_path / "c" / "train_state" / "state.json").read_text())["step"] == 2
    assert not (tmp_path / "c" / "train_state.tmp").exists()
    monkeypatch.setattr(loop, "save_file", real)
    code, output = cli(*command, "--resume")
    assert code == 0, output
    assert json.loads((tmp_path / "c" / "cpsample.json").read_text())["results"]["resumed_from"] == 2


def test_a_file_size_limit_in_a_real_process_gives_one_line(tmp_path):
    """The real thing: `ulimit -f` makes the kernel refuse the checkpoint's writes (EFBIG), as a full disk would."""
    code = "import sys; from cpsample.cli.main import app; sys.argv[0] = 'cpsample'; app()"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    arguments = " ".join(f"'{arg}'" for arg in [*TRAIN, "--out", str(tmp_path / "m")])
    result = subprocess.run(
        ["bash", "-c", f'ulimit -f 60; exec {sys.executable} -c "{code}" {arguments}'],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "File too large" in result.stderr
    assert not (tmp_path / "m").exists()


# --- 7. messages that blame the wrong cause -----------------------------------------------------------------------


def test_a_calibrated_alpha_of_5_blames_the_file_not_a_flag(tmp_path, classifier_copy):
    path = set_calibration(classifier_copy, {"alpha": 5})
    code, output = cli(*SAMPLE, "--guard", "cpsample", "--classifier", classifier_copy, "--out", tmp_path / "o")
    one_line_error(
        code,
        output,
        f"{path}: alpha is 5, but CPSample's alpha must be in [0, 0.5]",
        f"rerun `cpsample calibrate --classifier {classifier_copy}`",
    )
    assert "--alpha" not in output
    code, output = cli(
        *SAMPLE, "--guard", "cpsample", "--classifier", "bundled", "--alpha", "5", "--out", tmp_path / "o"
    )
    one_line_error(code, output, "--alpha must lie in [0, 0.5]")  # a flag given is still named as the flag


def test_staged_guard_on_bundled_rgb_says_it_ships_no_selective_classifier(tmp_path):
    code, output = cli(
        *SAMPLE,
        "--model",
        "bundled-rgb",
        "--classifier",
        "bundled-rgb",
        "--guard",
        "cpsample-staged",
        "--out",
        tmp_path / "o",
    )
    one_line_error(
        code,
        output,
        "bundled-rgb ships no selective classifier",
        "train-classifier --model bundled-rgb",
        "--negatives samples",
        "early_classifier=FOLDER",
    )
    assert "reinstall" not in output and "1-channel" not in output


@pytest.mark.parametrize("holds_samples", [False, True])
def test_a_folder_as_samples_is_called_a_folder(tmp_path, holds_samples):
    folder = tmp_path / "run"
    folder.mkdir()
    if holds_samples:
        np.savez(folder / "samples.npz", images=np.zeros((2, 1, 16, 16), np.float32))
    for command in ([*EVALUATE, "--samples", f"a={folder}"], [*SAMPLE_NN, "--samples", folder]):
        code, output = cli(*command, "--out", tmp_path / "o")
        one_line_error(code, output, f"{folder} is a folder", "expected a samples file")
        assert "does not exist" not in output
        assert (f"pass {folder / 'samples.npz'}" in output) == holds_samples


@pytest.mark.parametrize(
    "content, kind", [(b"images = [1, 2, 3]\n", "it holds text"), (bytes(range(256)), "it holds data of another kind")]
)
def test_a_file_named_npz_that_is_no_archive_says_so(tmp_path, content, kind):
    path = tmp_path / "x.npz"
    path.write_bytes(content)
    for command in ([*EVALUATE, "--samples", f"a={path}"], [*SAMPLE_NN, "--samples", path], [*TRAIN, "--data", path]):
        code, output = cli(*command, "--out", tmp_path / "o")
        one_line_error(code, output, f"{path}: not an .npz archive ({kind})")
        assert "allow_pickle" not in output


def test_an_npy_array_named_npz_is_read_as_samples_and_refused_as_data(tmp_path):
    path = tmp_path / "x.npz"
    with open(path, "wb") as file:
        np.save(file, np.zeros((2, 1, 16, 16), np.float32))
    assert cli(*SAMPLE_NN, "--samples", f"a={path}", "--out", tmp_path / "o")[0] == 0
    one_line_error(*cli(*TRAIN, "--data", path, "--out", tmp_path / "t"), "not an .npz archive (a single .npy array?)")


def test_init_with_other_channels_names_channels_not_the_size(tmp_path):
    from cpsample.models.bundle import resolve_model_dir

    rgb = resolve_model_dir("bundled-rgb", "denoiser")
    code, output = cli(*TRAIN, "--init", rgb, "--out", tmp_path / "m")
    one_line_error(
        code,
        output,
        "takes RGB images (3 channels) but the data are grey (1 channel)",
        "--image-size cannot change that",
    )
    assert "pass --image-size" not in output and not (tmp_path / "m").exists()


# --- more cases on these paths ------------------------------------------------------------------------------------


def test_rgb_samples_against_a_grey_model_name_channels_not_the_size(tmp_path):
    path = tmp_path / "rgb.npz"
    np.savez(path, images=np.zeros((3, 3, 32, 32), np.float32))
    for command in ([*EVALUATE, "--samples", f"a={path}"], [*SAMPLE_NN, "--samples", path]):
        code, output = cli(*command, "--out", tmp_path / "o")
        one_line_error(code, output, "are RGB (3 channels) but", "are grey (1 channel)")
        assert "resize" not in output


def test_a_dangling_symlink_as_out_or_a_link_loop_as_samples_gives_one_line(tmp_path):
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    one_line_error(*cli(*SAMPLE, "--out", tmp_path / "dangling"), "dangling: File exists", "symbolic link to nothing")
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    for command in ([*EVALUATE, "--samples", f"x={tmp_path / 'a'}"], [*SAMPLE_NN, "--samples", tmp_path / "a"]):
        one_line_error(*cli(*command, "--out", tmp_path / "o"), "is a symbolic link to nothing (or a loop of links)")


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "Expecting value"),
        ("[1, 2]", "not a cpsample calibration"),
        ('{"settings": null}', "not a cpsample"),
        ('{"settings": {"alpha": 0.1}}', "alpha, scale and tau"),
    ],
)
def test_a_calibration_that_is_no_record_names_the_file(tmp_path, classifier_copy, text, message):
    (classifier_copy / "calibration.json").write_text(text)
    code, output = cli(*SAMPLE, "--guard", "cpsample", "--classifier", classifier_copy, "--out", tmp_path / "o")
    one_line_error(code, output, str(classifier_copy / "calibration.json"), message)
