"""Fault cases on the latent (Stable Diffusion) path and in the sampling commands' shareable records.

A latent classifier belongs to one VAE and one private image set: every entry point pairing it with a pipeline
(sample, calibrate, protect) refuses another VAE or another image set with one line (check_latent_pairing).
A sampling run's cpsample.json is shareable: what it measured against the private images goes to private.json.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("transformers")

from cpsample.cli.main import app as main_app  # noqa: E402
from cpsample.data.split import images_digest  # noqa: E402
from cpsample.sampling.latent import (
    build_tiny_sd_pipeline,
    load_private_images,  # noqa: E402
    load_sd_pipeline,
)
from cpsample.sampling.latent_pairing import check_latent_pairing  # noqa: E402

IMAGE = 32
README = Path(__file__).resolve().parents[1] / "README.md"
SIMILARITY_KEYS = (
    "per_prompt",
    "nearest_private",
    "max_similarity",
    "mean_similarity",
    "near_copies",
    "nearest_member_cosine",
)


def _images(folder: Path, count: int = 4, seed: int = 0, prefix: str = "private") -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(count):
        pixels = rng.integers(0, 60, size=(IMAGE, IMAGE, 3), dtype=np.uint8)
        top, left = rng.integers(0, IMAGE - 12, size=2)
        pixels[top : top + 12, left : left + 12] = rng.integers(120, 255, size=3, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{prefix}_{i}.png")
    return folder


def _app() -> typer.Typer:
    from cpsample.cli.main import app

    return app


def _line(result) -> str:
    return " ".join(result.output.split())


def _refused(result, *needles: str) -> str:
    """Exit code 2 and one `error: ...` message (the rest of the output is progress bars and notes)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.output.count("error:") == 1, result.output
    text = _line(result)
    text = text[text.index("error:") :]
    for needle in needles:
        assert needle in text, (needle, text)
    return text


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two tiny pipelines with different VAEs (seeds 0 and 1) and a classifier trained for the first one, from a
    working directory where --images is given as a relative path."""
    root = tmp_path_factory.mktemp("fault-latent")
    pipeline, other = build_tiny_sd_pipeline(root / "pipe"), build_tiny_sd_pipeline(root / "other-pipe", seed=1)
    images = _images(root / "work" / "private")
    (root / "captions.txt").write_text("".join(f"private_{i}.png\tblock number {i}\n" for i in range(4)))
    here = os.getcwd()
    os.chdir(root / "work")
    try:
        result = CliRunner().invoke(
            _app(),
            [
                "train-latent-classifier",
                "--model",
                str(pipeline),
                "--data",
                "private",
                "--captions",
                str(root / "captions.txt"),
                "--steps",
                "4",
                "--relabel-after",
                "2",
                "--batch-size",
                "4",
                "--channels",
                "8,16",
                "--out",
                str(root / "clf"),
            ],
        )
    finally:
        os.chdir(here)
    assert result.exit_code == 0, result.output
    return {"root": root, "pipeline": pipeline, "other": other, "images": images, "classifier": root / "clf"}


def _sample_sd(
    setup, out: Path, *extra: str, pipeline: Path | None = None, classifier: Path | None = None, guard="cpsample"
):
    return CliRunner().invoke(
        _app(),
        [
            "sample",
            "--model",
            str(pipeline or setup["pipeline"]),
            "--prompt",
            "a red square",
            "--guard",
            guard,
            "-n",
            "1",
            "--steps",
            "2",
            *(["--alpha", "0.5", "--scale", "10"] if guard == "cpsample" else []),
            "--classifier",
            str(classifier or setup["classifier"]),
            "--out",
            str(out),
            *extra,
        ],
    )


def _record(folder: Path) -> dict:
    return json.loads((folder / "cpsample.json").read_text())


def _copy_classifier(setup, folder: Path, **changes) -> Path:
    """A copy of the classifier whose cpsample.json has settings changed (a value None removes the key)."""
    shutil.copytree(setup["classifier"], folder)
    record = _record(folder)
    for key, value in changes.items():
        if value is None:
            record["settings"].pop(key, None)
        else:
            record["settings"][key] = value
    (folder / "cpsample.json").write_text(json.dumps(record))
    return folder


# --- 4. a latent classifier belongs to one VAE and one private image set --------------------------------------


def test_train_latent_classifier_records_absolute_paths_and_content_digests(setup):
    settings = _record(setup["classifier"])["settings"]
    assert settings["images"] == str(setup["images"].resolve()) and Path(settings["captions"]).is_absolute()
    assert settings["images_digest"] == images_digest(load_private_images(setup["images"], IMAGE).images)
    assert set(settings["vae_digest"]) == {"float32", "bfloat16", "float16"}
    assert len(set(settings["vae_digest"].values())) == 3


def test_sample_on_a_pipeline_refuses_a_classifier_trained_on_another_vae(setup, tmp_path):
    for guard in ("cpsample", "none"):  # --guard none still pairs them: the classifier monitors every step
        out = tmp_path / guard
        result = _sample_sd(setup, out, guard=guard, pipeline=setup["other"])
        _refused(
            result,
            "was trained on the latents of another VAE",
            str(setup["classifier"]),
            str(setup["other"]),
            "train-latent-classifier --model",
        )
        assert not (out / "samples.npz").exists() and not (out / "cpsample.json").exists()


def test_calibrate_refuses_a_classifier_trained_on_another_vae(setup, tmp_path):
    classifier = tmp_path / "clf"
    shutil.copytree(setup["classifier"], classifier)
    result = CliRunner().invoke(
        main_app,
        [
            "calibrate",
            "--model",
            str(setup["other"]),
            "--classifier",
            str(classifier),
            "--out",
            str(tmp_path / "cal"),
            "--n-samples",
            "2",
            "--steps",
            "2",
            "--alphas",
            "0.5",
            "--scales",
            "10",
            "--reduction",
            "0",
            "--finalists",
            "0",
        ],
    )
    _refused(result, "another VAE", str(classifier))
    assert not (classifier / "calibration.json").exists()


def test_protect_refuses_a_classifier_trained_on_another_vae(setup):
    from cpsample.sampling.protect import protect, protection_of, unprotect

    other = load_sd_pipeline(setup["other"])
    with pytest.raises(ValueError, match="another VAE"):
        protect(other, setup["classifier"], alpha=0.5, scale=10.0)
    assert protection_of(other) is None
    own = load_sd_pipeline(setup["pipeline"])
    assert protection_of(protect(own, setup["classifier"], alpha=0.5, scale=10.0)) is not None
    unprotect(own)


def test_the_vae_check_holds_in_half_precision(setup):
    """The digest is recorded per dtype: the right VAE passes in bfloat16 and float16, another one does not."""
    for dtype in ("bfloat16", "float16"):
        check_latent_pairing(setup["classifier"], load_sd_pipeline(setup["pipeline"], dtype=dtype))
        with pytest.raises(ValueError, match="another VAE"):
            check_latent_pairing(setup["classifier"], load_sd_pipeline(setup["other"], dtype=dtype))


def test_sample_on_a_pipeline_from_another_directory_measures_against_the_trained_images(setup, tmp_path, monkeypatch):
    """--images was relative at training: a `private` folder in another working directory is not the one."""
    _images(tmp_path / "private", seed=5, prefix="decoy")
    monkeypatch.chdir(tmp_path)
    result = _sample_sd(setup, tmp_path / "sd")
    assert result.exit_code == 0, result.output
    assert _record(tmp_path / "sd")["settings"]["private"] == str(setup["images"].resolve())
    rows = json.loads((tmp_path / "sd" / "private.json").read_text())["results"]["cpsample"]["per_prompt"]
    assert rows[0]["nearest_private"].startswith("private_")
    # Given as --private, the other folder is refused: it is not what the classifier protects.
    _refused(
        _sample_sd(setup, tmp_path / "decoy", "--private", "private"),
        "are not those",
        str(setup["classifier"]),
        "--private",
    )


def test_a_changed_missing_or_emptied_image_set_is_refused(setup, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(setup["images"], images)
    classifier = _copy_classifier(setup, tmp_path / "clf", images=str(images))
    assert _sample_sd(setup, tmp_path / "same", classifier=classifier).exit_code == 0
    pixels = np.array(Image.open(images / "private_2.png"))
    pixels[:4, :4] = 255 - pixels[:4, :4]  # one changed corner
    Image.fromarray(pixels).save(images / "private_2.png")
    _refused(
        _sample_sd(setup, tmp_path / "changed", classifier=classifier), "are not those", str(classifier), str(images)
    )
    calibrated = CliRunner().invoke(
        main_app,
        [
            "calibrate",
            "--classifier",
            str(classifier),
            "--out",
            str(tmp_path / "cal"),
            "--n-samples",
            "2",
            "--steps",
            "2",
            "--alphas",
            "0.5",
            "--scales",
            "10",
            "--reduction",
            "0",
            "--finalists",
            "0",
        ],
    )
    _refused(calibrated, "are not those")
    assert not (classifier / "calibration.json").exists()
    (images / "private_3.png").unlink()  # one image gone
    _refused(_sample_sd(setup, tmp_path / "fewer", classifier=classifier), "(3 images")
    for path in images.iterdir():
        path.unlink()
    _refused(_sample_sd(setup, tmp_path / "emptied", classifier=classifier), str(images))
    images.rmdir()
    _refused(_sample_sd(setup, tmp_path / "gone", classifier=classifier), str(images))


def test_classifier_folders_without_digests_keep_working_and_are_checked_on_what_they_record(
    setup, tmp_path, monkeypatch
):
    """Made before the digests: the names, the scaling factor and the stored latent of the first image are checked."""
    legacy = _copy_classifier(setup, tmp_path / "legacy", images_digest=None, vae_digest=None)
    result = _sample_sd(setup, tmp_path / "ok", classifier=legacy)
    assert result.exit_code == 0, result.output
    _refused(
        _sample_sd(setup, tmp_path / "vae", classifier=legacy, pipeline=setup["other"]),
        "other latents of private_0.png",
        "another VAE",
    )
    # A relative --images (as recorded then) read from another working directory, where other images share the names.
    relative = _copy_classifier(setup, tmp_path / "relative", images_digest=None, vae_digest=None, images="private")
    _images(tmp_path / "elsewhere" / "private", seed=7)
    monkeypatch.chdir(tmp_path / "elsewhere")
    _refused(_sample_sd(setup, tmp_path / "cwd", classifier=relative), "other latents of private_0.png")
    monkeypatch.chdir(setup["images"].parent)
    assert _sample_sd(setup, tmp_path / "cwd-ok", classifier=relative).exit_code == 0
    renamed = tmp_path / "renamed"
    shutil.copytree(setup["images"], renamed)
    (renamed / "private_0.png").rename(renamed / "other_0.png")
    _refused(_sample_sd(setup, tmp_path / "names", "--private", str(renamed), classifier=legacy), "by their names")
    scaled = _copy_classifier(setup, tmp_path / "scaled", images_digest=None, vae_digest=None, scaling_factor=0.5)
    _refused(_sample_sd(setup, tmp_path / "scale", classifier=scaled), "scaled by 0.5")


def test_a_classifier_folder_without_its_record_is_refused_with_one_line(setup, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(setup["classifier"], bare)
    (bare / "cpsample.json").unlink()
    _refused(_sample_sd(setup, tmp_path / "sd", classifier=bare), "--private")
    # With --private the images are known; the VAE cannot be checked, the rest runs.
    result = _sample_sd(setup, tmp_path / "sd2", "--private", str(setup["images"]), classifier=bare)
    assert result.exit_code == 0, result.output


# --- 5. no private measurement in a shareable record ------------------------------------------------------------


def _shareable_section() -> str:
    text = README.read_text()
    start = text.index("## What is safe to share")
    return text[start : text.index("\n## ", start + 1)]


def _assert_shareable(record_text: str, names: list[str]) -> None:
    for key in SIMILARITY_KEYS:
        assert f'"{key}"' not in record_text, key
    for name in names:
        assert name not in record_text, name


def test_sample_on_a_pipeline_keeps_private_measurements_out_of_cpsample_json(setup, tmp_path):
    out = tmp_path / "sd"
    result = _sample_sd(setup, out, "--compare-plain", "--trace")
    assert result.exit_code == 0, result.output
    names = load_private_images(setup["images"], IMAGE).names
    _assert_shareable((out / "cpsample.json").read_text(), names)
    _assert_shareable(
        (out / "plain" / "cpsample.json").read_text() if (out / "plain" / "cpsample.json").exists() else "", names
    )
    private = json.loads((out / "private.json").read_text())
    assert private["results"]["note"].startswith("private:")
    for run in ("cpsample", "plain"):
        row = private["results"][run]["per_prompt"][0]
        assert row["nearest_private"] in names and -1 <= row["max_similarity"] <= 1
    assert _record(out)["results"]["private_record"] == str(out / "private.json")
    # README's list names every file the command wrote, and private.json as not safe to share.
    section = _shareable_section()
    written = {path.name for path in out.rglob("*") if path.is_file() and path.name != ".cpsample.lock"}
    kept = {path.name for path in (out / "batches").iterdir()}  # README names the folder: `--out/batches/`
    assert all(f"`{name}`" in section for name in written - kept), written
    assert "`private.json`" in section.split("**Not safe to share:**")[1]
    assert "`--out/batches/`" in section.split("**Not safe to share:**")[1]
    # --overwrite clears it: a run that measures nothing leaves no stale private.json behind.
    again = CliRunner().invoke(
        _app(),
        [
            "sample",
            "--model",
            str(setup["pipeline"]),
            "--prompt",
            "x",
            "-n",
            "1",
            "--steps",
            "2",
            "--guard",
            "none",
            "--out",
            str(out),
            "--overwrite",
        ],
    )
    assert again.exit_code == 0, again.output
    assert not (out / "private.json").exists() and not (out / "plain").exists()


def test_sampling_a_conditional_model_writes_only_shareable_files(tmp_path):
    """`sample` on a class-conditional model measures nothing against the members: every file it writes is one the
    README lists as shareable, and its record names no member."""
    rng = np.random.default_rng(0)
    labels = np.arange(24) % 3
    images = rng.uniform(-1, -0.6, size=(24, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "toy.npz", images=images, labels=labels)
    from cpsample.cli.main import app

    runner = CliRunner()
    model = tmp_path / "model"
    result = runner.invoke(
        app,
        [
            "train-conditional",
            "--data",
            str(tmp_path / "toy.npz"),
            "--image-size",
            "8",
            "--steps",
            "2",
            "--subset",
            "16",
            "--batch-size",
            "4",
            "--channels",
            "8,16",
            "--out",
            str(model),
        ],
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "samples"
    command = [
        "sample",
        "--model",
        str(model),
        "--classes",
        "0,2",
        "-n",
        "2",
        "--steps",
        "2",
        "--out",
        str(out),
    ]
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    from cpsample.models.bundle import training_data

    dataset, split = training_data(model)
    _assert_shareable((out / "cpsample.json").read_text(), [dataset.names[i] for i in split.members])
    assert not (out / "private.json").exists()
    section = _shareable_section()
    written = {path.name for path in out.iterdir() if path.is_file() and path.name != ".cpsample.lock"}
    assert all(f"`{name}`" in section for name in written), written
    # Its finished run is still recognised as its own: a rerun reuses it.
    again = runner.invoke(app, command)
    assert again.exit_code == 0 and "(0 denoiser calls)" in again.output, again.output


def test_a_corrupt_classifier_record_is_named_in_one_line(setup, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(setup["classifier"], broken)
    (broken / "cpsample.json").write_text("{not json")
    _refused(
        _sample_sd(setup, tmp_path / "sd", classifier=broken),
        str(broken / "cpsample.json"),
        "not a readable cpsample record",
        "--private",
    )


def test_resuming_a_latent_classifier_on_another_vae_or_other_images_is_refused(setup, tmp_path):
    def train(out, steps, *extra, pipeline=None, images=None):
        return CliRunner().invoke(
            _app(),
            [
                "train-latent-classifier",
                "--model",
                str(pipeline or setup["pipeline"]),
                "--data",
                str(images or setup["images"]),
                "--relabel-after",
                "2",
                "--batch-size",
                "4",
                "--channels",
                "8,16",
                "--save-every",
                "2",
                "--steps",
                str(steps),
                "--out",
                str(out),
                *extra,
            ],
        )

    assert train(tmp_path / "clf", 2).exit_code == 0
    _refused(
        train(tmp_path / "clf", 4, "--resume", pipeline=setup["other"]), "--resume with other settings", "vae_sha256"
    )
    changed = tmp_path / "changed"
    shutil.copytree(setup["images"], changed)
    (changed / "private_0.png").unlink()
    shutil.copy(setup["images"] / "private_1.png", changed / "private_0.png")
    _refused(train(tmp_path / "clf", 4, "--resume", images=changed), "images_sha256")
    assert train(tmp_path / "clf", 4, "--resume").exit_code == 0
