"""Training: the exported checkpoints are safetensors, a killed run resumes exactly, the classifier learns random
labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from cpsample.data import make_split
from cpsample.models import load_denoiser
from cpsample.models.classifier import load_classifier
from cpsample.training.classifier import per_timestep_report, train_classifier
from cpsample.training.denoiser import train_denoiser
from cpsample.training.loop import TrainConfig

TINY = (16, 32, 32)


def _train(mnist16, out, steps, resume=False, count=16):
    split = make_split(len(mnist16), count, seed=0, source="mnist")
    config = TrainConfig(steps=steps, batch_size=8, seed=0, save_every=5)
    return train_denoiser(
        mnist16.take(split.members), split, out, config, resume=resume, block_out_channels=TINY, data_spec="mnist"
    )


def test_denoiser_export_is_safetensors_and_reloads(tmp_path, mnist16):
    summary = _train(mnist16, tmp_path / "run", steps=6)
    assert summary["steps"] == 6
    files = {p.name for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert "diffusion_pytorch_model.safetensors" in files
    assert not any(name.endswith((".bin", ".pt", ".pth", ".ckpt")) for name in files)
    unet, schedule = load_denoiser(tmp_path / "run")
    assert unet.config.block_out_channels == list(TINY) and schedule.config.prediction_type == "epsilon"
    record = json.loads((tmp_path / "run" / "cpsample.json").read_text())
    assert record["settings"]["seed"] == 0 and "torch" in record["versions"]
    with pytest.raises(FileExistsError, match="--resume"):
        _train(mnist16, tmp_path / "run", steps=6)


@pytest.mark.parametrize("which", ["trained", "bundled"])
def test_denoiser_folders_load_as_diffusers_ddpm_pipelines(tmp_path, mnist16, bundled_dirs, which):
    """model_index.json makes a denoiser folder a DDPMPipeline, and says it is not a Stable Diffusion pipeline."""
    from diffusers import DDPMPipeline

    from cpsample.models.denoiser import is_sd_pipeline, pipeline_class

    if which == "trained":
        _train(mnist16, tmp_path / "run", steps=2)
        folder = tmp_path / "run"
    else:
        folder = bundled_dirs[0]
    assert pipeline_class(folder) == "DDPMPipeline" and not is_sd_pipeline(folder)
    pipe = DDPMPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert images.shape == (2, 16, 16, 1) and images.min() >= 0 and images.max() <= 1 and images.std() > 0


def assert_safetensors_and_json_only(state: Path) -> None:
    """Every file of a train_state reads as safetensors or JSON: resuming it never needs the unpickler."""
    files = sorted(path for path in state.rglob("*") if path.is_file())
    assert files, f"{state} is empty"
    for path in files:
        if path.suffix == ".json":
            json.loads(path.read_text())
            continue
        assert path.suffix == ".safetensors", f"{path.name}: neither safetensors nor JSON"
        with safe_open(str(path), framework="pt") as tensors:  # parses the header: a pickle or zip would fail here
            assert list(tensors.keys()), path.name


def test_killed_run_resumes_to_the_same_weights(tmp_path, mnist16):
    _train(mnist16, tmp_path / "straight", steps=10)
    _train(mnist16, tmp_path / "killed", steps=5)  # stands in for a run killed after its step-5 checkpoint
    summary = _train(mnist16, tmp_path / "killed", steps=10, resume=True)
    assert summary["resumed_from"] == 5
    for run in ("straight", "killed"):
        assert_safetensors_and_json_only(tmp_path / run / "train_state")
    straight = load_file(tmp_path / "straight" / "train_state" / "model.safetensors")
    resumed = load_file(tmp_path / "killed" / "train_state" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=1e-6)
    # bit for bit: the EMA (what is exported and sampled), its step count, the optimizer and the exported UNet
    runs = [tmp_path / "straight", tmp_path / "killed"]
    for part in ("model", "ema", "optimizer"):
        expected, got = (load_file(run / "train_state" / f"{part}.safetensors") for run in runs)
        assert expected.keys() == got.keys() and all(torch.equal(got[k], expected[k]) for k in expected), part
    states = [json.loads((run / "train_state" / "state.json").read_text()) for run in runs]
    assert states[0]["ema_step"] == states[1]["ema_step"] == 10
    exported = [load_file(run / "unet" / "diffusion_pytorch_model.safetensors") for run in runs]
    assert exported[0].keys() == exported[1].keys()
    assert all(torch.equal(exported[1][k], exported[0][k]) for k in exported[0])
    ema = load_file(tmp_path / "killed" / "train_state" / "ema.safetensors")
    assert all(torch.equal(exported[1][name], ema[name]) for name in ema), "the exported UNet carries the EMA weights"
    assert any(not torch.equal(ema[name], resumed[name]) for name in ema), "EMA and raw weights differ after 10 steps"


@pytest.mark.parametrize("killed_at", [4, 8])  # before and after the relabelling at step 6
def test_killed_classifier_resumes_to_the_same_weights_and_labels(tmp_path, mnist16, killed_at):
    """The classifier resumes through the same frame as the denoiser, its relabelling phase included."""
    from cpsample.models import build_noise_schedule

    split = make_split(len(mnist16), 8, seed=1, source="mnist")

    def train(name, steps, resume=False):
        config = TrainConfig(steps=steps, batch_size=8, seed=0, save_every=100)
        return train_classifier(
            mnist16.take(split.members),
            split,
            build_noise_schedule(),
            tmp_path / name,
            config,
            label_seed=5,
            relabel_after=6,
            block_out_channels=(8, 16),
            resume=resume,
        )

    straight = train("straight", 10)
    train("killed", killed_at)  # stands in for a run killed after its last checkpoint
    resumed = train("killed", 10, resume=True)
    assert resumed["resumed_from"] == killed_at and resumed["relabelled"] == straight["relabelled"] > 0
    assert_safetensors_and_json_only(tmp_path / "killed" / "train_state")
    for part in ("model", "ema", "optimizer", "targets"):
        expected, got = (
            load_file(tmp_path / run / "train_state" / f"{part}.safetensors") for run in ("straight", "killed")
        )
        assert expected.keys() == got.keys() and all(torch.equal(got[k], expected[k]) for k in expected), part
    assert (tmp_path / "killed" / "labels.json").read_text() == (tmp_path / "straight" / "labels.json").read_text()


def test_classifier_memorises_random_labels(tmp_path, mnist16):
    from cpsample.models import build_noise_schedule

    split = make_split(len(mnist16), 8, seed=1, source="mnist")
    members = mnist16.take(split.members)
    config = TrainConfig(steps=120, batch_size=16, lr=2e-3, ema_decay=0.9, seed=0, save_every=1000)
    summary = train_classifier(
        members,
        split,
        build_noise_schedule(),
        tmp_path / "clf",
        config,
        label_seed=5,
        relabel_after=80,
        block_out_channels=TINY,
    )
    labels = json.loads((tmp_path / "clf" / "labels.json").read_text())
    assert len(labels["initial_labels"]) == 8 and set(labels["initial_labels"]) <= {0, 1}
    model = load_classifier(tmp_path / "clf")
    report = per_timestep_report(
        model, members.tensor(), torch.tensor(labels["labels"]), build_noise_schedule(), timesteps=(0, 999)
    )
    # At t=0 the labels are learnable (accuracy 1); at t=999 the image is gone, so no better than the label balance.
    assert report[0]["accuracy"] == 1.0
    assert report[0]["loss"] < report[1]["loss"]
    assert summary["per_timestep"][0]["t"] == 0


def test_fine_tune_from_init_leaves_pretraining_images_out_of_the_split(tmp_path):
    from typer.testing import CliRunner

    from cpsample.cli.main import app
    from cpsample.data import Split

    runner = CliRunner()
    common = ["--data", "mnist", "--image-size", "16", "--batch-size", "8", "--channels", "16,32,32", "--seed", "0"]
    pre = runner.invoke(
        app, ["train-denoiser", "--out", str(tmp_path / "pre"), "--subset", "300", "--steps", "3", *common]
    )
    assert pre.exit_code == 0, pre.output
    tuned = runner.invoke(
        app,
        [
            "train-denoiser",
            "--out",
            str(tmp_path / "ft"),
            "--subset",
            "20",
            "--steps",
            "2",
            "--init",
            str(tmp_path / "pre"),
            *common,
        ],
    )
    assert tuned.exit_code == 0, tuned.output
    pretrained_on = set(Split.load(tmp_path / "pre" / "split.json").members)
    split = Split.load(tmp_path / "ft" / "split.json")
    assert split.pretraining["indices"] == sorted(pretrained_on) and split.pretraining["model"] == str(
        (tmp_path / "pre").resolve()
    )
    assert not pretrained_on & set(split.members) and not pretrained_on & set(split.nonmembers)
    assert len(split.members) == 20 and len(split.members) + len(split.nonmembers) == 5000 - 300
    # It starts from the pretrained weights (two steps move them only a little), not from a fresh initialisation.
    start, _ = load_denoiser(tmp_path / "pre")
    tuned_unet, _ = load_denoiser(tmp_path / "ft")
    drift = max((a - b).abs().max().item() for a, b in zip(start.parameters(), tuned_unet.parameters()))
    assert drift < 0.05
    wrong_size = runner.invoke(
        app,
        [
            "train-denoiser",
            "--out",
            str(tmp_path / "bad"),
            "--subset",
            "20",
            "--steps",
            "2",
            "--init",
            str(tmp_path / "pre"),
            *common[:2],
            "--image-size",
            "8",
        ],
    )
    assert wrong_size.exit_code == 2 and "--image-size 16" in wrong_size.output


def test_negatives_make_the_classifier_unsure_away_from_members(tmp_path, mnist16):
    from cpsample.evaluation import NearCopyDetector
    from cpsample.models import build_noise_schedule
    from cpsample.workflows.negatives import load_negatives

    split = make_split(len(mnist16), 8, seed=1, source="mnist")
    members = mnist16.take(split.members)
    # Public images that include the members themselves: those are dropped, the rest are far from every member.
    negatives = load_negatives("mnist", members.images, 8, "bundled", 16, seed=0)
    assert negatives.shape == (8, 1, 16, 16) and not NearCopyDetector(members.images, 0.95)(negatives).any()
    config = TrainConfig(steps=300, batch_size=16, lr=2e-3, ema_decay=0.9, seed=0, save_every=1000)
    confidence = {}
    for name, extra in (("paper", {}), ("selective", {"negatives": negatives, "negatives_source": "mnist"})):
        summary = train_classifier(
            members,
            split,
            build_noise_schedule(),
            tmp_path / name,
            config,
            label_seed=5,
            relabel_after=200,
            block_out_channels=TINY,
            **extra,
        )
        assert summary["negatives"] == (8 if extra else 0) and summary["per_timestep"][0]["accuracy"] == 1.0
        model = load_classifier(tmp_path / name)
        with torch.no_grad():

            def sure(images):
                return float(
                    model(torch.as_tensor(images), torch.zeros(len(images), dtype=torch.long))
                    .softmax(-1)
                    .max(-1)
                    .values.mean()
                )

            confidence[name] = (sure(members.images), sure(negatives))
    # Same members, same labels and steps: the negatives leave the members' labels known, the non-members unsure.
    assert confidence["selective"][0] > 0.8
    assert confidence["selective"][1] < confidence["paper"][1] - 0.1, confidence


def test_classifier_trained_at_low_noise_only_sees_low_noise(tmp_path, mnist16):
    from cpsample.models import build_noise_schedule
    from cpsample.training.classifier import noisy_ce_loss

    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x, t):
            seen.append(t.clone())
            return torch.zeros(len(x), 2)

    images, labels = torch.as_tensor(mnist16.images[:64]), torch.zeros(64, dtype=torch.long)
    for max_t in (None, 100):
        seen.clear()
        for draw in range(5):
            noisy_ce_loss(build_noise_schedule(), max_t)(Spy(), images, labels, torch.Generator().manual_seed(draw))
        drawn = torch.cat(seen)
        assert int(drawn.min()) >= 0 and int(drawn.max()) <= (999 if max_t is None else 100)
        if max_t is None:
            assert int(drawn.max()) > 500  # every noise level, as the paper trains
    # The scaled recipe's low-noise bias: most draws at low noise, every level up to max_t still trained.
    seen.clear()
    for draw in range(20):
        loss = noisy_ce_loss(build_noise_schedule(), 500, low_noise_bias=3.0)
        loss(Spy(), images, labels, torch.Generator().manual_seed(draw))
    drawn = torch.cat(seen).float()
    assert float(drawn.median()) < 100 and 250 < float(drawn.max()) <= 500, (drawn.median(), drawn.max())
    split = make_split(len(mnist16), 8, seed=1, source="mnist")
    config = TrainConfig(steps=2, batch_size=8, seed=0, save_every=1000)
    with pytest.raises(ValueError, match="max_t must lie between"):
        train_classifier(
            mnist16.take(split.members),
            split,
            build_noise_schedule(),
            tmp_path / "c",
            config,
            label_seed=0,
            relabel_after=1,
            max_t=50,
            block_out_channels=TINY,
        )


def test_recipe_auto_keeps_the_paper_recipe_where_it_fits_and_scales_above():
    """auto: the paper's recipe up to the 200 members it is measured to fit, the scaled one above; explicit values
    override either (as the golden test's --steps/--batch-size/--channels do)."""
    from cpsample.training.recipes import PAPER_FITS_UP_TO, recipe_settings

    paper, settings = recipe_settings("auto", PAPER_FITS_UP_TO)
    assert paper.name == "paper" and settings["max_t"] is None and not settings["lr_decay"]
    assert (settings["steps"], settings["lr"], settings["channels"]) == (6000, 1e-3, (32, 64, 64))
    scaled, settings = recipe_settings("auto", 1000, steps=50, channels=(8, 16))
    assert scaled.name == "scaled" and settings["max_t"] == 500 and settings["lr_decay"]
    # Up to 1,000 members t is uniform on [0, 500]; above, low noise and misfit members are drawn more often.
    assert (settings["low_noise_bias"], settings["hard_examples"]) == (1.0, False)
    large = recipe_settings("auto", 4000)[1]
    assert (large["low_noise_bias"], large["hard_examples"], large["steps"]) == (3.0, True, 48000)
    # The schedules measured to fit, and growing in between and beyond them
    steps = [recipe_settings("scaled", n)[1]["steps"] for n in (1000, 1500, 2000, 3000, 4000, 8000)]
    assert steps[0] == 7000 and steps[2] == 13000 and steps == sorted(steps) and steps[-1] > 2 * 48000
    assert (settings["steps"], settings["channels"], settings["lr"]) == (50, (8, 16), 3e-3)
    assert recipe_settings("scaled", 4000)[1]["steps"] > recipe_settings("scaled", 1000)[1]["steps"]
    assert recipe_settings("paper", 4000)[0].name == "paper"
    with pytest.raises(ValueError, match="--recipe"):
        recipe_settings("fast", 10)


@pytest.mark.parametrize("hard", [False, True], ids=["decaying-lr", "scaled-recipe-hard-examples"])
def test_classifier_with_a_decaying_lr_resumes_to_the_same_weights(tmp_path, mnist16, monkeypatch, hard):
    """The LR schedule is a function of the step alone, and the odds of drawing each member (hard-example sampling,
    re-weighed every 3 steps here) are saved with the state: a killed run resumes onto the uninterrupted run's
    weights."""
    from cpsample.models import build_noise_schedule
    from cpsample.training import classifier
    from cpsample.training.loop import Trainer

    monkeypatch.setattr(classifier, "HARD_EVERY", 3)
    split = make_split(len(mnist16), 8, seed=1, source="mnist")
    emphasis = {"low_noise_bias": 3.0, "hard_examples": True} if hard else {}

    def train(name, steps, resume=False):
        config = TrainConfig(steps=steps, batch_size=8, seed=0, save_every=100)
        return train_classifier(
            mnist16.take(split.members), split, build_noise_schedule(), tmp_path / name, config, label_seed=5,
            relabel_after=100, block_out_channels=(8, 16), resume=resume, max_t=500, lr_decay=True, **emphasis,
        )  # fmt: skip

    train("straight", 10)
    if hard:  # re-weighed at steps 3, 6 and 9: the last odds are not uniform
        weights = load_file(tmp_path / "straight" / "train_state" / "sample_weights.safetensors")["weights"]
        assert weights.shape == (8,) and not torch.allclose(weights, torch.full((8,), 1 / 8))
    run_until = Trainer.run_until

    def killed_at_step_4(trainer, last_step, description="", **kwargs):
        run_until(trainer, min(last_step, 4), description, **kwargs)
        if trainer.step == 4:  # (with hard examples: after the re-weighing at step 3)
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "run_until", killed_at_step_4)
        with pytest.raises(KeyboardInterrupt):
            train("killed", 10)
    train("killed", 10, resume=True)
    expected, got = (load_file(tmp_path / run / "train_state" / "model.safetensors") for run in ("straight", "killed"))
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_hard_example_weights_favour_misfit_members_and_keep_the_negatives_share(mnist16):
    """Members the classifier gets wrong are drawn more often than those it fits; negatives keep a uniform share."""
    from cpsample.models import build_noise_schedule
    from cpsample.training.classifier import hard_example_weights

    class SaysZero(torch.nn.Module):  # confident in label 0 for every image
        def __init__(self):
            super().__init__()
            self.logits = torch.nn.Parameter(torch.tensor([4.0, -4.0]))

        def forward(self, x, t):
            return self.logits.expand(len(x), 2)

    images = torch.as_tensor(mnist16.images[:6])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    weights = hard_example_weights(SaysZero(), images, labels, build_noise_schedule(), total=10, seed=0)
    assert weights.shape == (10,) and float(weights.sum()) == pytest.approx(1.0)
    # Half of the members' 6/10 goes uniformly (0.05 each); the other half almost all to the 3 misfit (label 1).
    assert torch.allclose(weights[:3], torch.full((3,), 0.05), atol=1e-4)
    assert torch.allclose(weights[3:6], torch.full((3,), 0.15), atol=1e-4)
    assert torch.allclose(weights[6:], torch.full((4,), 0.1))  # 4 negatives keep 4/10 of the draws
