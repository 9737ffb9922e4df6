"""Model adapters and the one `generate`: the right kind from a folder, the same images as the entry points of old
(and as the loops under them), a latent run that resumes, and one `cpsample sample` for every kind."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import cli

from cpsample.models.bundle import resolve_model_dir
from cpsample.sampling.adapters import (
    ADAPTERS,
    ConditionalAdapter,
    LatentAdapter,
    ModelAdapter,
    PixelAdapter,
    load_adapter,
)
from cpsample.sampling.conditional import generate_conditional, load_conditional, sample_labels
from cpsample.sampling.generate import SampleConfig, generate
from cpsample.sampling.pipeline import generate as generate_pixel
from cpsample.sampling.sampler import make_scheduler, sample, unet_denoiser
from cpsample.sampling.spec import GuardSpec

PROMPTS = ["a red square", "Classic cars for sale"]
TINY = ["--steps", "4", "--batch-size", "8", "--channels", "8,16", "--seed", "0"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny class-conditional model (digits, 8x8) and its classifier, trained in seconds by the CLI."""
    root = tmp_path_factory.mktemp("adapters")
    model, classifier = root / "cond", root / "cond-clf"
    code, text = cli("train-conditional", "--data", "digits", "--image-size", "8", "--subset", "32", *TINY,
                     "--out", model)  # fmt: skip
    assert code == 0, text
    code, text = cli("train-classifier", "--model", model, *TINY, "--out", classifier)
    assert code == 0, text
    return {"root": root, "conditional": model, "classifier": classifier}


@pytest.fixture(scope="module")
def pipeline(folders):
    pytest.importorskip("transformers")
    from cpsample.sampling.latent import build_tiny_sd_pipeline

    return build_tiny_sd_pipeline(folders["root"] / "pipe")


def test_load_adapter_picks_the_kind_from_the_folder(folders, pipeline):
    assert type(load_adapter("bundled")) is PixelAdapter
    assert type(load_adapter(resolve_model_dir("bundled", "denoiser"))) is PixelAdapter  # DDPMPipeline index
    conditional = load_adapter(folders["conditional"])
    assert type(conditional) is ConditionalAdapter and conditional.class_info.num_classes == 10
    latent = load_adapter(pipeline)
    assert type(latent) is LatentAdapter and latent.sample_shape == (4, 16, 16) and latent.image_shape == (3, 32, 32)
    for adapter in (load_adapter("bundled"), conditional, latent):
        assert isinstance(adapter, ModelAdapter) and ADAPTERS[adapter.kind] is type(adapter)
    with pytest.raises(ValueError, match="unconditional denoiser: it takes no class labels"):
        load_adapter("bundled").conditioned([0])
    with pytest.raises(ValueError, match="unknown class 12"):
        conditional.conditioned([0, 12])
    with pytest.raises(ValueError, match="no empty ones"):
        latent.conditioned(["a", " "])


def test_pixel_generate_equals_the_entry_point_and_the_loop_under_it():
    spec = GuardSpec.create("cpsample", alpha=0.3, scale=30.0)
    config = SampleConfig(n=5, steps=6, batch_size=2, seed=3, progress=False)
    ours = generate(load_adapter("bundled"), spec, config)
    old = generate_pixel(n=5, steps=6, batch_size=2, seed=3, guard="cpsample", alpha=0.3, scale=30.0, progress=False)
    assert torch.equal(ours.images, old.images) and ours.denoiser_calls == old.denoiser_calls == 5 * 6
    assert all(np.array_equal(ours.trace[key], old.trace[key]) for key in ("p1", "fired"))
    model = load_adapter("bundled").model
    guard = load_adapter("bundled").guard(spec, None, "cpu")
    loop = sample(
        unet_denoiser(model.unet),
        lambda: make_scheduler("ddim", model.schedule.config, 6),
        5,
        (1, 16, 16),
        guard,
        batch_size=2,
        seed=3,
        progress=False,
    )
    assert torch.equal(ours.images, loop.images)
    assert ours.labels is None and ours.latents is None and ours.prompt_index is None
    by_name = generate("bundled", "none", SampleConfig(n=2, steps=2, progress=False))  # a name loads its adapter
    assert by_name.images.shape == (2, 1, 16, 16)


def test_conditional_generate_equals_the_entry_point_and_the_loop_under_it(folders):
    adapter = load_adapter(folders["conditional"]).conditioned([2, 0, 1], guidance_scale=2.0)
    config = SampleConfig(n=2, steps=5, batch_size=4, seed=1, progress=False)
    spec = GuardSpec.create("cpsample", alpha=0.5, scale=10.0)
    ours = generate(adapter, spec, config, classifier=str(folders["classifier"]))
    labels = [2, 2, 0, 0, 1, 1]
    old = generate_conditional(
        folders["conditional"], labels, 2.0, guard="cpsample", classifier=str(folders["classifier"]), alpha=0.5,
        scale=10.0, steps=5, batch_size=4, seed=1, progress=False,
    )  # fmt: skip
    assert torch.equal(ours.images, old.images) and ours.labels.tolist() == labels
    assert ours.denoiser_calls == 2 * 6 * 5 and ours.trace["fired"].all()
    unet, schedule, info = load_conditional(folders["conditional"])
    loop = sample_labels(
        unet,
        labels,
        info.null_label,
        lambda: make_scheduler("ddim", schedule.config, 5),
        (1, 8, 8),
        2.0,
        adapter.guard(spec, str(folders["classifier"])),
        batch_size=4,
        seed=1,
        progress=False,
    )
    assert torch.equal(ours.images, loop.images)
    with pytest.raises(ValueError, match="needs --classifier"):
        generate(adapter, "cpsample", config)
    every = generate(load_adapter(folders["conditional"]), "none", SampleConfig(n=1, steps=2, progress=False))
    assert every.labels.tolist() == list(range(10))  # no labels given: one image of each class


def test_latent_generate_equals_the_diffusers_pipeline(pipeline):
    from cpsample.sampling.latent import load_sd_pipeline

    pipe = load_sd_pipeline(pipeline)
    adapter = LatentAdapter(pipe).conditioned(PROMPTS[:1])
    ours = generate(adapter, "none", SampleConfig(n=2, steps=4, seed=5, progress=False))
    assert ours.prompts == PROMPTS[:1] and ours.prompt_index.tolist() == [0, 0] and ours.denoiser_calls == 2 * 5 * 2
    theirs = pipe(
        PROMPTS[0],
        num_images_per_prompt=2,
        num_inference_steps=4,
        guidance_scale=7.5,
        generator=torch.Generator().manual_seed(5),
        output_type="latent",
    ).images
    assert torch.equal(ours.latents, theirs.float().cpu())


def test_a_killed_latent_run_resumes_to_the_uninterrupted_images(pipeline, tmp_path, monkeypatch):
    adapter = load_adapter(pipeline).conditioned(PROMPTS)
    config = SampleConfig(n=3, steps=3, batch_size=2, seed=4, progress=False)  # 2 prompts x 2 chunks: 4 batches
    whole = generate(adapter, "none", config)
    assert whole.prompt_index.tolist() == [0, 0, 0, 1, 1, 1]

    decode, calls = LatentAdapter.decode, []

    class Killed(Exception):
        pass

    def killed_after_the_first_batch(self, x):
        calls.append(len(x))
        if len(calls) > 1:
            raise Killed
        return decode(self, x)

    kept = SampleConfig(n=3, steps=3, batch_size=2, seed=4, progress=False, work_dir=tmp_path)
    monkeypatch.setattr(LatentAdapter, "decode", killed_after_the_first_batch)
    with pytest.raises(Killed):
        generate(adapter, "none", kept)
    monkeypatch.setattr(LatentAdapter, "decode", decode)
    assert sorted(path.name for path in (tmp_path / "batches").glob("batch_*")) == ["batch_00000.npz"]
    resumed = generate(adapter, "none", kept)
    # only the 4 images of the 3 lost batches were drawn again (PNDM: 3 steps are 4 UNet calls, each on [x, x])
    assert resumed.denoiser_calls == 4 * 4 * 2
    assert torch.equal(resumed.images, whole.images) and torch.equal(resumed.latents, whole.latents)
    with pytest.raises(FileExistsError, match="changed: .*prompts"):
        generate(adapter.conditioned(PROMPTS[:1]), "none", kept)


def test_sample_with_a_prompts_file_writes_what_generate_draws(pipeline, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square\nClassic cars for sale\tClassic car for sale\n")
    common = ["--prompts-file", prompts, "-n", "2", "--steps", "3", "--seed", "7", "--guard", "none"]
    texts = ["a red square", "Classic cars for sale", "Classic car for sale"]
    old = generate(
        load_adapter(pipeline).conditioned(texts), "none", SampleConfig(n=2, steps=3, seed=7, progress=False)
    )
    code, text = cli("sample", "--model", pipeline, *common, "--out", tmp_path / "one")
    assert code == 0, text
    with np.load(tmp_path / "one" / "samples.npz") as new:
        assert sorted(new.files) == ["images", "latents", "prompt_index", "prompts", "uint8"]
        assert np.array_equal(new["images"], old.images.numpy()) and np.array_equal(new["latents"], old.latents)
        assert new["prompt_index"].tolist() == old.prompt_index.tolist()
    record = json.loads((tmp_path / "one" / "cpsample.json").read_text())
    assert record["settings"]["prompts"] == ["a red square", "Classic cars for sale", "Classic car for sale"]
    assert record["settings"]["scheduler"] == "default" and record["settings"]["cfg_scale"] == 7.5
    again = cli("sample", "--model", pipeline, *common, "--out", tmp_path / "one")  # finished: every batch reused
    assert again[0] == 0 and "(0 denoiser calls)" in again[1], again[1]


@pytest.mark.parametrize(
    "model, extra, message",
    [
        (
            "bundled",
            ["--classes", "0"],
            "--classes applies to a class-conditional denoiser; bundled is",
        ),
        ("bundled", ["--prompt", "x"], "--prompt / --prompts-file applies to a Stable Diffusion pipeline"),
        ("bundled", ["--cfg-scale", "2"], "--cfg-scale applies to conditional models"),
        ("conditional", ["--prompt", "x"], "is a class-conditional denoiser"),
        ("pipeline", ["--classes", "1"], "is a Stable Diffusion pipeline"),
        ("pipeline", [], "give --prompt (repeatable) or --prompts-file"),
    ],
)
def test_sample_refuses_conditions_the_model_does_not_take(request, tmp_path, model, extra, message):
    if model != "bundled":
        model = request.getfixturevalue("folders")[model] if model == "conditional" else request.getfixturevalue(model)
    code, text = cli("sample", "--model", model, *extra, "-n", "1", "--steps", "1", "--out", tmp_path / "s")
    assert code == 2 and message in text, text
