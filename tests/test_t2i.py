"""The text-to-image trainer (train-t2i) and the user's flow on what it writes: a latent classifier on the model's own
members and captions, sampling its captions, evaluating with prompt agreement. Tiny runs on bundled Twemoji."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.torch import load_file

pytest.importorskip("transformers")

from helpers import cli  # noqa: E402

TRAIN = [
    "train-t2i",
    "--data",
    "twemoji",
    "--subset",
    "8",
    "--batch-size",
    "4",
    "--vae-steps",
    "3",
    "--save-every",
    "2",
]


@pytest.fixture(scope="module")
def t2i(tmp_path_factory):
    folder = tmp_path_factory.mktemp("t2i") / "model"
    code, text = cli(*TRAIN, "--steps", "6", "--out", folder, traceback_fails=True)
    assert code == 0, text
    return folder


def test_the_model_loads_as_a_stable_diffusion_pipeline_with_its_captions(t2i):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(t2i, local_files_only=True)
    captions = [line.split("\t") for line in (t2i / "captions.txt").read_text().splitlines()]
    prompts = (t2i / "prompts.txt").read_text().splitlines()
    assert len(captions) == 8 and [caption for _, caption in captions] == prompts
    split = json.loads((t2i / "split.json").read_text())
    assert [name for name, _ in captions] == [f"twemoji:{i}" for i in split["members"]]
    # The tokenizer was learned from the captions: each caption word is one token.
    for caption in prompts:
        assert len(pipe.tokenizer.tokenize(caption)) == len(caption.replace("-", " ").split())
    # A word no caption ends with still tokenizes without the unknown token.
    ids = pipe.tokenizer("zebra 7 x").input_ids
    assert pipe.tokenizer.unk_token_id not in ids[1:-1]
    assert pipe.vae.config.scaling_factor != 0.18215  # set from the latents, not Stable Diffusion's constant


def test_a_killed_run_resumes_to_the_same_weights(t2i, tmp_path):
    """Stopped inside the UNet stage and resumed, the run ends where the uninterrupted one did, bit for bit."""
    resumed = tmp_path / "resumed"
    assert cli(*TRAIN, "--steps", "4", "--out", resumed)[0] == 0
    code, text = cli(*TRAIN, "--steps", "6", "--out", resumed, "--resume")
    assert code == 0, text
    for part in ("unet", "vae", "text_encoder"):
        name = "model.safetensors" if part == "text_encoder" else "diffusion_pytorch_model.safetensors"
        straight, again = load_file(t2i / part / name), load_file(resumed / part / name)
        assert all(bool((straight[key] == again[key]).all()) for key in straight), part


def test_captions_are_required_for_a_folder(tmp_path):
    from PIL import Image

    folder = tmp_path / "pictures"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    (tmp_path / "captions.txt").write_text("0.png\ta dark square\n1.png\ta grey square\n")
    code, text = cli(*TRAIN, "--data", folder, "--subset", "3", "--steps", "4", "--out", tmp_path / "a")
    assert code != 0 and "--captions" in text
    code, text = cli(
        *TRAIN, "--data", folder, "--subset", "3", "--steps", "4", "--captions", tmp_path / "captions.txt",
        "--out", tmp_path / "b",
    )  # fmt: skip
    assert code != 0 and "1 of 3 images have no caption (2.png)" in text


@pytest.fixture(scope="module")
def t2i_classifier(t2i, tmp_path_factory):
    """A tiny latent classifier of the tiny model, trained with no --data: the model's own members."""
    classifier = tmp_path_factory.mktemp("t2i-clf") / "clf"
    code, text = cli(
        "train-latent-classifier", "--model", t2i, "--out", classifier, "--steps", "4", "--relabel-after", "2",
        "--batch-size", "4", traceback_fails=True,
    )  # fmt: skip
    assert code == 0, text
    return classifier


def test_the_flow_on_the_model_own_members(t2i, t2i_classifier, tmp_path):
    """train-latent-classifier takes the model's members and captions by default; sample draws its captions;
    evaluate reads prompt agreement (the category of the picture each prompt captions)."""
    classifier = t2i_classifier
    record = json.loads((classifier / "cpsample.json").read_text())["settings"]
    assert record["images"] == str(t2i.resolve()) and record["captions"].endswith("captions.txt")
    assert len(json.loads((classifier / "captions.json").read_text())) == 8
    samples = tmp_path / "plain"
    code, text = cli("sample", "--model", t2i, "-n", "1", "--steps", "2", "--out", samples, traceback_fails=True)
    assert code == 0, text
    with np.load(samples / "samples.npz") as archive:
        assert list(archive["prompts"]) == (t2i / "prompts.txt").read_text().splitlines()
        assert len(archive["images"]) == 8
    code, text = cli(
        "evaluate", "--model", t2i, "--samples", samples / "samples.npz", "--permutation-rounds", "5",
        "--out", tmp_path / "eval", traceback_fails=True,
    )  # fmt: skip
    assert code == 0, text
    quality = json.loads((tmp_path / "eval" / "report.json").read_text())["methods"]["plain"]["quality"]
    assert quality["class_agreement"]["n"] == 8


# --- the bundled text-to-image model -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundled_t2i_runs():
    """Plain and the shipped default on 20 of bundled-t2i's training captions, one image each, from the same noise
    (seed 12345: the calibration never saw it)."""
    from cpsample.models.bundle import resolve_model_dir, training_data
    from cpsample.sampling.adapters import load_adapter
    from cpsample.sampling.generate import SampleConfig, generate
    from cpsample.sampling.latent import nearest_private
    from cpsample.sampling.run import own_prompts

    dataset, split = training_data(resolve_model_dir("bundled-t2i", "denoiser"))
    members = dataset.take(split.members)
    prompts = own_prompts("bundled-t2i").read_text().splitlines()[:20]
    adapter = load_adapter("bundled-t2i").conditioned(prompts)
    config = SampleConfig(n=1, steps=50, batch_size=1, seed=12345, progress=False)
    plain = generate(adapter, "none", config)
    guarded = generate(adapter, "cpsample", config, classifier="bundled-t2i")
    copies = {
        name: nearest_private(run.images, members).copies for name, run in (("plain", plain), ("guarded", guarded))
    }
    return {"plain": plain, "guarded": guarded, "copies": copies, "members": members, "prompts": prompts}


def test_bundled_t2i_copies_its_training_captions_and_the_default_removes_the_copies(bundled_t2i_runs):
    """docs/text-to-image.md: prompted with a member's caption, bundled-t2i draws that member; the shipped
    calibration removes those near-copies."""
    copies = bundled_t2i_runs["copies"]
    plain, guarded = int(copies["plain"].sum()), int(copies["guarded"].sum())
    assert plain >= 4, f"the bundled text-to-image model must copy: {plain}/20 near-copies plain"
    assert guarded <= plain // 4, (plain, guarded)
    assert bundled_t2i_runs["guarded"].trace["fired"].any(axis=0).mean() > 0.2


def test_the_protect_recipe_runs_on_bundled_t2i(bundled_t2i_runs):
    """docs/text-to-image.md, 'Your own Stable Diffusion fine-tune': protect(pipe, classifier), then a normal
    pipe(prompt) call samples with the classifier's calibrated setting."""
    import torch
    from diffusers import StableDiffusionPipeline

    import cpsample
    from cpsample.models.bundle import resolve_model_dir

    pipe = StableDiffusionPipeline.from_pretrained(resolve_model_dir("bundled-t2i", "denoiser"), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    from cpsample.sampling.spec import read_calibration

    classifier = resolve_model_dir("bundled-t2i", "classifier")
    cpsample.protect(pipe, classifier)
    settings = cpsample.protection_of(pipe).guard.settings()
    chosen = read_calibration(classifier)["settings"]
    assert {key: settings[key] for key in ("alpha", "scale", "tau")} == {
        key: chosen[key] for key in ("alpha", "scale", "tau")
    }
    prompt = bundled_t2i_runs["prompts"][0]
    images = pipe(prompt, num_inference_steps=10, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()
    assert cpsample.protection_of(pipe).guard.trace["fired"], "the guard was asked at every step"


def test_the_weights_attack_runs_in_latent_space_on_the_model_own_split(t2i, tmp_path):
    """attack mia on a train-t2i pipeline: members and held-out images as caption-conditioned latents; a pipeline
    without a split is refused with the way out."""
    code, text = cli(
        "attack", "mia", "--model", t2i, "--attack", "loss", "--t", "100", "--draws", "1", "--members", "4",
        "--out", tmp_path / "mia", traceback_fails=True,
    )  # fmt: skip
    assert code == 0, text
    result = json.loads((tmp_path / "mia" / "result.json").read_text())["loss"]
    assert result["n_members"] == result["n_nonmembers"] == 4
    assert result["settings"]["space"].startswith("VAE latents")

    from cpsample.sampling.latent import build_tiny_sd_pipeline

    code, text = cli("attack", "mia", "--model", build_tiny_sd_pipeline(tmp_path / "random"), "--out", tmp_path / "x")
    assert code != 0 and "no split.json" in text and "sample-nn" in text


def test_bundled_t2i_gives_its_members_away_to_whoever_holds_the_weights():
    """The loss attack on bundled-t2i separates its 100 members from 100 held-out pictures (the model memorised its
    captions); under CPSample the guard acts on every member and the attack still wins: the README's threat models."""
    from cpsample.attacks import run_mia

    plain = run_mia("bundled-t2i", attack="loss", timesteps=[200], draws=1, progress=False)["loss"]
    assert plain.auc > 0.95 and plain.n_members == 100
    guarded = run_mia(
        "bundled-t2i", "cpsample", "bundled-t2i", attack="loss", timesteps=[200], draws=1, progress=False
    )["loss"]
    assert guarded.guard_fired[200]["members"] > 0.9
    assert guarded.auc > 0.9


def test_the_demo_runs_on_a_text_to_image_model(t2i, t2i_classifier, tmp_path):
    """demo --model on a train-t2i pipeline: its captions as prompts, plain / CPSample / rejection per prompt, prompt
    agreement, and both threat models' attacks on its own split."""
    code, text = cli(
        "demo", "--model", t2i, "--classifier", t2i_classifier, "--n-samples", "8", "--steps", "2",
        "--mia-members", "4", "--out", tmp_path / "demo", traceback_fails=True,
    )  # fmt: skip
    assert code == 0, text
    assert "prompt agreement" in text
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert list(report["methods"]) == ["plain", "cpsample", "rejection"]
    assert all(method["quality"]["class_agreement"]["n"] == 8 for method in report["methods"].values())
    assert report["prompts"] == {"count": 8, "images_per_prompt": 1, "file": str(t2i / "prompts.txt")}
    rejection = report["costs"]["rejection"]
    assert (
        rejection["drawn"] == 8 + rejection["rejected"]
        and rejection["leftover"] == report["methods"]["rejection"]["replication"]["count"]
    )
    threat_models = {row["threat model"] for row in report["membership_inference"]["rows"]}
    assert len(threat_models) == 2
    with np.load(tmp_path / "demo" / "samples.npz") as archive:
        assert sorted(archive.files) == ["cpsample", "plain", "rejection"]


def test_amg_searches_the_member_latents_of_a_text_to_image_model(t2i, tmp_path):
    """AMG on a pipeline: the nearest member latent at every step, d x0 / d x_t as the identity (no gradient through
    the pipeline's UNet); at threshold -0.99 it guides every sample. A pipeline of unknown members is refused."""
    import torch

    from cpsample.sampling.adapters import load_adapter
    from cpsample.sampling.generate import SampleConfig, generate
    from cpsample.sampling.latent import build_tiny_sd_pipeline
    from cpsample.sampling.spec import GuardSpec

    adapter = load_adapter(t2i).conditioned(["smile"])
    config = SampleConfig(n=2, steps=3, seed=1, progress=False)
    guided = generate(adapter, GuardSpec.create("amg", threshold=-0.99), config)
    plain = generate(adapter, "none", config)
    assert guided.guard_settings["jacobian"] == "identity" and guided.guard_settings["training_images"] == 8
    assert guided.guard_settings["features"] == "pixels of latents"
    assert guided.trace["fired"].all()
    assert not torch.equal(torch.as_tensor(guided.latents), torch.as_tensor(plain.latents))

    random = load_adapter(build_tiny_sd_pipeline(tmp_path / "random")).conditioned(["smile"])
    with pytest.raises(ValueError, match="does not say which they are"):
        generate(random, "amg", config)


def test_side_attacks_a_text_to_image_model_through_its_unconditional_branch(t2i, t2i_classifier, tmp_path):
    """attack side on a train-t2i pipeline: an attacker without the captions samples the empty prompt, clusters the
    decoded pool, guides in latent space and counts copies of the members on decoded pixels; --guard cpsample puts
    the latent classifier's guard after the attacker's. A pipeline of unknown members is refused."""
    side = ["attack", "side", "--model", t2i, "--n-samples", "6", "--clusters", "2", "--min-cohesion", "-1",
            "--train-steps", "3", "--attack-steps", "3", "--per-class", "2"]  # fmt: skip
    code, text = cli(*side, "--out", tmp_path / "plain", traceback_fails=True)
    assert code == 0, text
    plain = json.loads((tmp_path / "plain" / "result.json").read_text())
    assert plain["pool"]["n"] == 6 and plain["attack"]["n"] == 2 * plain["clusters"]["kept"]
    assert plain["classifier"]["num_labels"] == plain["clusters"]["kept"]
    assert 0 < plain["pool"]["similarity_max"] <= 1  # decoded pixels against the 8 members, not latents
    from PIL import Image

    assert Image.open(tmp_path / "plain" / "pool.png").mode == "RGB"  # the decoded pool, not 4-channel latents

    code, text = cli(*side, "--guard", "cpsample", "--classifier", t2i_classifier, "--out", tmp_path / "guarded")
    assert code == 0, text
    guarded = json.loads((tmp_path / "guarded" / "result.json").read_text())
    assert guarded["defence"]["guard"] == "cpsample" and guarded["pool"]["n"] == 6

    from cpsample.sampling.latent import build_tiny_sd_pipeline

    random = build_tiny_sd_pipeline(tmp_path / "random")
    code, text = cli("attack", "side", "--model", random, "--out", tmp_path / "x")
    assert code != 0 and "does not say which they are" in text
