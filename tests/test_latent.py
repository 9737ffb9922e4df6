"""CPSample in latent space on a tiny random Stable Diffusion pipeline built locally (no downloads)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("transformers")

from cpsample.evaluation.nearcopy import find_near_copies  # noqa: E402
from cpsample.models.classifier import TimeClassifier  # noqa: E402
from cpsample.sampling.latent import (
    build_latent_guard,
    build_tiny_sd_pipeline,
    check_latent_classifier,  # noqa: E402
    load_private_images,
    load_sd_pipeline,
    per_prompt_similarity,
    read_prompts,
)
from cpsample.sampling.latent_pairing import member_latents  # noqa: E402
from cpsample.training.latent_classifier import train_latent_classifier  # noqa: E402
from cpsample.training.loop import TrainConfig  # noqa: E402

IMAGE, LATENT, PROMPTS = 32, 16, ["a red square", "Classic cars for sale"]


def sample_sd(pipe, prompts, guard=None, images_per_prompt=1, steps=50, seed=0, progress=False):
    """The pipeline sampled by `generate`, each prompt's images in one batch from the noise of `seed` (what
    cpsample.sampling.latent.sample_sd did before it was removed)."""
    from cpsample.sampling.adapters import LatentAdapter
    from cpsample.sampling.generate import SampleConfig, generate
    from cpsample.sampling.guards import NoGuard

    config = SampleConfig(n=images_per_prompt, steps=steps, batch_size=images_per_prompt, seed=seed, progress=progress)
    return generate(LatentAdapter(pipe).conditioned(prompts), guard or NoGuard(), config)


def _private_images(folder, count=6, seed=0):
    """Distinct coloured blocks on noise, as PNG files, with a captions file naming them."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    lines = []
    for i in range(count):
        pixels = rng.integers(0, 60, size=(IMAGE, IMAGE, 3), dtype=np.uint8)
        top, left = rng.integers(0, IMAGE - 12, size=2)
        pixels[top : top + 12, left : left + 12] = rng.integers(120, 255, size=3, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"private_{i}.png")
        lines.append(f"private_{i}.png\tblock number {i}")
    captions = folder.parent / "captions.txt"
    captions.write_text("\n".join(lines) + "\n")
    return folder, captions


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent")
    pipeline = build_tiny_sd_pipeline(root / "pipe")
    images, captions = _private_images(root / "private")
    summary = train_latent_classifier(
        pipeline,
        images,
        root / "clf",
        TrainConfig(steps=8, batch_size=6, save_every=100, seed=0),
        label_seed=0,
        relabel_after=4,
        captions_file=captions,
        block_out_channels=(8, 16),
        progress=False,
    )
    return {
        "root": root,
        "pipeline": pipeline,
        "images": images,
        "captions": captions,
        "classifier": root / "clf",
        "summary": summary,
        "pipe": load_sd_pipeline(pipeline),
    }


def test_tiny_pipeline_saves_safetensors_and_reloads_locally(setup):
    folder, pipe = setup["pipeline"], setup["pipe"]
    assert (folder / "model_index.json").is_file()
    assert list(folder.rglob("*.safetensors")) and not list(folder.rglob("*.bin"))
    assert pipe.vae_scale_factor == 2 and pipe.unet.config.sample_size == LATENT
    with pytest.raises(FileNotFoundError, match="no diffusers pipeline"):
        load_sd_pipeline(setup["root"] / "missing")
    from cpsample.models.bundle import resolve_model_dir
    from cpsample.models.denoiser import is_sd_pipeline

    assert is_sd_pipeline(folder) and not is_sd_pipeline(resolve_model_dir("bundled", "denoiser"))
    with pytest.raises(ValueError, match="names a DDPMPipeline, not a Stable Diffusion pipeline"):
        load_sd_pipeline(resolve_model_dir("bundled", "denoiser"))


def test_classifier_trains_on_scaled_vae_latents(setup):
    latents = member_latents(setup["classifier"])
    assert latents.shape == (6, 4, LATENT, LATENT) and np.isfinite(latents).all()
    record = json.loads((setup["classifier"] / "cpsample.json").read_text())
    assert record["command"] == "train-latent-classifier"
    assert record["settings"]["images"] == str(setup["images"]) and record["settings"]["latent_shape"] == [
        4,
        LATENT,
        LATENT,
    ]
    assert json.loads((setup["classifier"] / "captions.json").read_text())["private_3.png"] == "block number 3"
    guard = build_latent_guard(setup["classifier"], setup["pipe"])  # channels, size and noise schedule all fit
    assert guard.classifier.config.in_channels == 4
    assert len(setup["summary"]["per_timestep"]) > 0


def test_plain_loop_reproduces_the_diffusers_pipeline(setup):
    pipe = setup["pipe"]
    ours = sample_sd(pipe, PROMPTS[:1], None, images_per_prompt=2, steps=4, seed=5, progress=False)
    theirs = pipe(
        PROMPTS[0],
        num_images_per_prompt=2,
        num_inference_steps=4,
        guidance_scale=7.5,
        generator=torch.Generator().manual_seed(5),
        output_type="pt",
    ).images
    assert torch.allclose(ours.images * 0.5 + 0.5, theirs, atol=1e-5)


def test_protected_stable_diffusion_pipeline_matches_the_own_loop_bit_for_bit(setup):
    """The push on both CFG halves passes through the pipeline's mix: the same latents as CPSample after the mix."""
    from cpsample.sampling.protect import protect, protection_of, unprotect

    pipe = setup["pipe"]
    ours = sample_sd(
        pipe,
        PROMPTS[:1],
        build_latent_guard(setup["classifier"], pipe, alpha=0.5, scale=100.0),
        images_per_prompt=2,
        steps=5,
        seed=1,
        progress=False,
    )
    protect(pipe, setup["classifier"], alpha=0.5, scale=100.0)
    try:
        with pytest.raises(ValueError, match="unprotect"):  # the own loop would push twice
            sample_sd(pipe, PROMPTS[:1], None, progress=False)
        theirs = pipe(
            PROMPTS[0],
            num_images_per_prompt=2,
            num_inference_steps=5,
            guidance_scale=7.5,
            generator=torch.Generator().manual_seed(1),
            output_type="latent",
        ).images
        fired = np.stack(protection_of(pipe).guard.trace["fired"])
    finally:
        unprotect(pipe)
    assert torch.equal(ours.latents, theirs.float().cpu())
    assert fired.all() and np.array_equal(fired, ours.trace["fired"])


def test_sampling_with_and_without_cpsample(setup):
    pipe = setup["pipe"]
    plain = sample_sd(pipe, PROMPTS, None, images_per_prompt=2, steps=5, progress=False)
    guarded = sample_sd(
        pipe,
        PROMPTS,
        build_latent_guard(setup["classifier"], pipe, alpha=0.5, scale=100.0),
        images_per_prompt=2,
        steps=5,
        progress=False,
    )
    for result in (plain, guarded):
        assert result.images.shape == (4, 3, IMAGE, IMAGE) and torch.isfinite(result.images).all()
        assert result.prompt_index.tolist() == [0, 0, 1, 1]
    steps = len(guarded.timesteps)
    assert guarded.trace["p1"].shape == (steps, 4) and guarded.trace["fired"].shape == (steps, 4)
    assert ((guarded.trace["p1"] >= 0) & (guarded.trace["p1"] <= 1)).all()
    assert guarded.trace["fired"].all(), "alpha = 0.5 guides at every step (the paper's timing setting)"
    assert not torch.equal(plain.images, guarded.images)
    private = load_private_images(setup["images"], IMAGE)
    rows = per_prompt_similarity(guarded, private, threshold=0.95)
    assert [row["prompt"] for row in rows] == PROMPTS and all(-1 <= row["max_similarity"] <= 1 for row in rows)
    # each prompt's row is its own two images' nearest-private similarity and near-copy count, recomputed here
    found = find_near_copies(guarded.images.numpy(), private.images, threshold=0.95)
    for index, row in enumerate(rows):
        mine = slice(2 * index, 2 * index + 2)
        assert row["max_similarity"] == pytest.approx(found.similarity[mine].max(), abs=1e-5)
        assert row["mean_similarity"] == pytest.approx(found.similarity[mine].mean(), abs=1e-5)
        assert row["near_copies"] == int(found.copies[mine].sum()) and row["images"] == 2
        assert row["share_of_steps_guided"] == 1.0
        best = 2 * index + int(np.argmax(found.similarity[mine]))
        assert row["nearest_private"] == private.names[int(found.nearest[best])]


def test_alpha_zero_is_identical_to_plain_and_records_the_trace(setup):
    pipe = setup["pipe"]
    plain = sample_sd(pipe, PROMPTS, None, images_per_prompt=2, steps=5, seed=1, progress=False)
    watched = sample_sd(
        pipe,
        PROMPTS,
        build_latent_guard(setup["classifier"], pipe, alpha=0.0),
        images_per_prompt=2,
        steps=5,
        seed=1,
        progress=False,
    )
    assert torch.equal(plain.images, watched.images)
    assert watched.trace["fired"].sum() == 0 and watched.trace["p1"].shape[1] == 4


def test_wrong_classifier_and_bad_prompts_are_refused(setup, tmp_path):
    pixel_classifier = TimeClassifier(sample_size=LATENT, in_channels=1, block_out_channels=(8, 16), norm_num_groups=8)
    with pytest.raises(ValueError, match="1-channel inputs but this pipeline's latents have 4"):
        check_latent_classifier(pixel_classifier, setup["pipe"])
    small = TimeClassifier(sample_size=8, in_channels=4, block_out_channels=(8, 16), norm_num_groups=8)
    with pytest.raises(ValueError, match="8x8 latents"):
        check_latent_classifier(small, setup["pipe"])
    bad = tmp_path / "prompts.txt"
    bad.write_text("one\ttwo\tthree\n")
    with pytest.raises(ValueError, match="prompts.txt:1"):
        read_prompts(bad)


def test_cli_table2_workflow(setup, tmp_path):
    from cpsample.cli.main import app

    runner = CliRunner()
    pipeline = tmp_path / "pipe"
    assert runner.invoke(app, ["make-tiny-sd", "--out", str(pipeline)]).exit_code == 0
    classifier = tmp_path / "clf"
    result = runner.invoke(
        app,
        [
            "train-latent-classifier",
            "--model",
            str(pipeline),
            "--data",
            str(setup["images"]),
            "--captions",
            str(setup["captions"]),
            "--steps",
            "4",
            "--relabel-after",
            "2",
            "--batch-size",
            "6",
            "--channels",
            "8,16",
            "--out",
            str(classifier),
        ],
    )
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # 4 steps fit nothing: said as such, with what to change
    assert "did NOT reach" in said and "members were NOT fitted" in said and "--steps, with --resume" in said, said
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(
        "# Table 2 style: original caption<TAB>modified caption\n"
        "Classic cars for sale\tClassic car for sale\na red square\n"
    )
    out = tmp_path / "sd"
    result = runner.invoke(
        app,
        [
            "sample",
            "--model",
            str(pipeline),
            "--prompts-file",
            str(prompts),
            "--guard",
            "cpsample",
            "--classifier",
            str(classifier),
            "--alpha",
            "0.5",
            "--scale",
            "100",
            "-n",
            "2",
            "--steps",
            "3",
            "--compare-plain",
            "--trace",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    for folder in (out, out / "plain"):
        assert {"grid.png", "samples.npz", "trace.npz", "trace.png"} <= {p.name for p in folder.iterdir()}
    record = json.loads((out / "cpsample.json").read_text())
    private = json.loads((out / "private.json").read_text())  # per-prompt similarity: not in the shareable record
    rows = private["results"]["cpsample"]["per_prompt"]
    assert [row["role"] for row in rows] == ["original", "modified", "prompt"]
    assert record["results"]["plain"]["share_of_steps_guided"] == 0.0
    # alpha 0.5 guides every step of every image, and moves the guarded images off the plain ones of the same seed
    assert record["results"]["share_of_steps_guided"] == 1.0
    with np.load(out / "samples.npz") as guarded, np.load(out / "plain" / "samples.npz") as plain:
        assert guarded["images"].shape == plain["images"].shape == (6, 3, IMAGE, IMAGE)
        assert guarded["prompt_index"].tolist() == [0, 0, 1, 1, 2, 2]
        assert (np.abs(guarded["latents"] - plain["latents"]).reshape(6, -1).max(axis=1) > 1e-3).all()
        # the per-prompt similarities recorded are those of the saved images to the private ones
        private = load_private_images(setup["images"], IMAGE)
        found = find_near_copies(guarded["images"], private.images)
    for index, row in enumerate(rows):
        assert row["max_similarity"] == pytest.approx(found.similarity[2 * index : 2 * index + 2].max(), abs=1e-5)
    missing = runner.invoke(
        app,
        [
            "sample",
            "--model",
            str(tmp_path / "nowhere"),
            "--prompt",
            "x",
            "--guard",
            "none",
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert missing.exit_code == 2 and "no diffusers pipeline" in " ".join(missing.output.split())


def test_sample_on_a_pipeline_runs_prints_and_records_the_same_knobs(setup, tmp_path):
    """Uncalibrated: the paper's latent setting (alpha 0.5, s 2000); calibrated: calibration.json; given: as given.
    Whatever `sample` prints and records for a pipeline is what the samples were drawn with."""
    import shutil

    from cpsample.cli.main import app  # (its callback sets up the logging the knobs are said through)
    from cpsample.sampling.spec import write_calibration

    classifier = tmp_path / "clf"
    shutil.copytree(setup["classifier"], classifier)

    def run(name, *extra):
        out = tmp_path / name
        result = CliRunner().invoke(
            app,
            [
                "sample",
                "--model",
                str(setup["pipeline"]),
                "--prompt",
                PROMPTS[0],
                "--guard",
                "cpsample",
                "--classifier",
                str(classifier),
                "-n",
                "2",
                "--steps",
                "3",
                "--seed",
                "2",
                "--out",
                str(out),
                *extra,
            ],
        )
        assert result.exit_code == 0, result.output
        record = json.loads((out / "cpsample.json").read_text())["settings"]
        return " ".join(result.output.split()), record, np.load(out / "samples.npz")["latents"]

    def direct(**knobs):
        guard = build_latent_guard(classifier, setup["pipe"], **knobs)
        return sample_sd(
            setup["pipe"], PROMPTS[:1], guard, images_per_prompt=2, steps=3, seed=2, progress=False
        ).latents.numpy()

    output, record, latents = run("uncalibrated")
    assert "cpsample: alpha 0.5, scale 2000, tau 0.001, checks at every step (knobs: uncalibrated defaults)" in output
    assert "alpha 0.1" not in output and "scale 10," not in output
    assert record["knobs_from"] == "uncalibrated defaults"
    assert record["guard_settings"] == {
        "guard": "cpsample",
        "alpha": 0.5,
        "scale": 2000.0,
        "tau": 0.001,
        "max_t": None,
    }
    assert np.array_equal(latents, direct(alpha=0.5, scale=2000.0, tau=0.001))

    write_calibration(classifier, {"alpha": 0.2, "scale": 300.0, "tau": 0.01, "max_t": 700}, {})
    output, record, latents = run("calibrated")
    assert (
        f"cpsample: alpha 0.2, scale 300, tau 0.01, checks at t <= 700 (knobs: {classifier / 'calibration.json'})"
        in output
    )
    knobs = record["guard_settings"]
    assert (knobs["alpha"], knobs["scale"], knobs["tau"], knobs["max_t"]) == (0.2, 300.0, 0.01, 700)
    guard = build_latent_guard(classifier, setup["pipe"])
    assert (guard.alpha, guard.scale, guard.tau, guard.max_t) == (0.2, 300.0, 0.01, 700)
    assert np.array_equal(latents, direct())

    output, record, latents = run("given", "--alpha", "0.4", "--scale", "50")
    assert "cpsample: alpha 0.4, scale 50, tau 0.01, checks at every step" in output  # (a calibrated max_t is alpha's)
    knobs = record["guard_settings"]
    assert (knobs["alpha"], knobs["scale"], knobs["tau"], knobs["max_t"]) == (0.4, 50.0, 0.01, None)
    assert np.array_equal(latents, direct(alpha=0.4, scale=50.0, tau=0.01))


def test_calibrate_a_latent_classifier_end_to_end(setup, tmp_path):
    """`cpsample calibrate --classifier LATENT` finds the pipeline, samples it with the classifier's captions, counts
    near-copies of the private images as `sample` does, and saves calibration.json, which `sample` then runs."""
    import shutil

    from cpsample.calibration.search import GridSettings
    from cpsample.cli.main import app

    classifier = tmp_path / "clf"
    shutil.copytree(setup["classifier"], classifier)
    runner = CliRunner()
    out = tmp_path / "cal"
    result = runner.invoke(
        app,
        [
            "calibrate",
            "--classifier",
            str(classifier),
            "--out",
            str(out),
            "--n-samples",
            "4",
            "--steps",
            "3",
            "--alphas",
            "0.5",
            "--scales",
            "10,100",
            "--reduction",
            "0",
            "--finalists",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((classifier / "calibration.json").read_text())
    chosen = saved["measured"]
    assert saved["settings"]["alpha"] == chosen["alpha"] == 0.5 and saved["settings"]["scale"] == chosen["scale"]
    assert saved["model"] == str(setup["pipeline"].resolve()) and saved["scheduler"] == "default"
    assert saved["prompts"] == [f"block number {i}" for i in range(6)]  # the classifier's captions
    rows = json.loads((out / "calibration_run.json").read_text())["rows"]
    assert [row["guard"] for row in rows] == ["none", "cpsample", "cpsample"] and all(row["n"] == 6 for row in rows)
    assert rows[1]["steps_guided"] == 1.0 and rows[0]["frechet_distance"] is None  # alpha 0.5 guides every step
    assert (out / "calibration.png").is_file()
    sampled = runner.invoke(
        app,
        [
            "sample",
            "--model",
            str(setup["pipeline"]),
            "--prompt",
            PROMPTS[0],
            "--guard",
            "cpsample",
            "--classifier",
            str(classifier),
            "-n",
            "1",
            "--steps",
            "2",
            "--out",
            str(tmp_path / "sd"),
        ],
    )
    assert sampled.exit_code == 0, sampled.output
    record = json.loads((tmp_path / "sd" / "cpsample.json").read_text())["settings"]
    knobs = record["guard_settings"]
    assert (knobs["alpha"], knobs["scale"], knobs["max_t"]) == (0.5, chosen["scale"], saved["settings"]["max_t"])
    assert record["knobs_from"] == str(classifier / "calibration.json")

    settings = GridSettings(model=str(setup["pipeline"]), classifier=str(classifier), prompts=("x",))
    assert settings.latent and settings.quality_net is None and settings.scheduler == "default"
    with pytest.raises(ValueError, match="two-stage guard"):
        GridSettings(model=str(setup["pipeline"]), classifier=str(classifier), early_classifier="bundled")
    no_captions = tmp_path / "bare"
    shutil.copytree(setup["classifier"], no_captions)
    (no_captions / "captions.json").unlink()
    with pytest.raises(ValueError, match="give the prompts"):
        GridSettings(model=str(setup["pipeline"]), classifier=str(no_captions))
    assert not GridSettings(model="bundled").latent


def test_a_pipeline_is_calibrated_on_the_latent_grid_by_default(setup):
    """Latent pushes need larger scales: left out, a pipeline's grid is LATENT_ALPHAS x LATENT_SCALES, a pixel
    model's ALPHAS x SCALES; given alphas and scales are kept."""
    from cpsample.calibration import grid
    from cpsample.calibration.search import GridSettings, grid_candidates

    def tried(**given):
        return {(row["alpha"], row["scale"]) for row in grid_candidates(GridSettings(**given))[1:]}

    latent = dict(model=str(setup["pipeline"]), classifier=str(setup["classifier"]))
    assert tried(**latent) == {(a, s) for a in grid.LATENT_ALPHAS for s in grid.LATENT_SCALES}
    assert tried(**latent, alphas=[0.5], scales=[10.0]) == {(0.5, 10.0)}
    assert tried() == {(a, s) for a in grid.ALPHAS for s in grid.SCALES}
