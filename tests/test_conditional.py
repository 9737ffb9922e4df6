"""Class-conditional training with label dropout, CFG sampling with and without CPSample, and the CLI commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from cpsample.data import ImageSet, load_dataset, make_split
from cpsample.evaluation.nearcopy import find_near_copies
from cpsample.models import load_noise_schedule
from cpsample.models.bundle import training_data
from cpsample.models.classifier import load_classifier
from cpsample.sampling import CPSampleGuard, NoGuard, make_scheduler
from cpsample.sampling.conditional import generate_conditional, load_conditional, parse_classes, sample_labels
from cpsample.training.classifier import train_classifier
from cpsample.training.conditional import conditional_eps_loss, drop_labels, train_conditional
from cpsample.training.loop import TrainConfig

SIZE, CLASSES, WIDTHS = 8, 3, (8, 16)


def _toy_npz(path, count=24, seed=0):
    """Three visibly different classes of 8x8 images (bright top, left or centre), saved as an .npz with labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % CLASSES
    images = rng.uniform(-1, -0.6, size=(count, 1, SIZE, SIZE)).astype(np.float32)
    for image, label in zip(images, labels):
        region = [np.s_[:3, :], np.s_[:, :3], np.s_[3:5, 3:5]][label]
        image[0][region] = 0.9
    np.savez(path, images=images, labels=labels)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny conditional model (few steps) and a random-label classifier trained on its members by
    train_classifier."""
    root = tmp_path_factory.mktemp("conditional")
    data = str(_toy_npz(root / "toy.npz"))
    dataset = load_dataset(data)
    split = make_split(len(dataset), 16, 0, data)
    config = TrainConfig(steps=4, batch_size=8, save_every=100, log_every=1, seed=0)
    summary = train_conditional(
        dataset.take(split.members), split, root / "model", config, block_out_channels=WIDTHS, data_spec=data
    )
    members, member_split = training_data(root / "model")  # what train-classifier reads from a model folder
    train_classifier(
        members.take(member_split.members),
        member_split,
        load_noise_schedule(root / "model"),
        root / "clf",
        TrainConfig(steps=4, batch_size=8, save_every=100, seed=0),
        label_seed=0,
        relabel_after=2,
        block_out_channels=WIDTHS,
        denoiser_path=str(root / "model"),
    )
    return {"root": root, "data": data, "model": root / "model", "classifier": root / "clf", "summary": summary}


def test_drop_labels_replaces_the_requested_share():
    labels = torch.zeros(20_000, dtype=torch.long)
    dropped = drop_labels(labels, 0.1, CLASSES, torch.Generator().manual_seed(0))
    assert set(dropped.unique().tolist()) == {0, CLASSES}
    assert 0.09 < (dropped == CLASSES).float().mean().item() < 0.11
    assert torch.equal(drop_labels(labels, 0.0, CLASSES, torch.Generator()), labels)


def test_loss_feeds_the_model_dropped_labels():
    seen = []

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(()))

        def forward(self, x, t, class_labels):
            seen.append(class_labels.clone())
            return type("Out", (), {"sample": x * self.weight})()

    from cpsample.models import build_noise_schedule

    loss_fn = conditional_eps_loss(build_noise_schedule(), null_label=CLASSES, label_dropout=0.5)
    labels = torch.ones(64, dtype=torch.long)
    loss, metrics = loss_fn(Spy(), torch.zeros(64, 1, SIZE, SIZE), labels, torch.Generator().manual_seed(1))
    assert torch.isfinite(loss)
    assert set(seen[0].tolist()) == {1, CLASSES}
    assert metrics["dropped"] == pytest.approx((seen[0] == CLASSES).float().mean().item())
    assert torch.equal(labels, torch.ones(64, dtype=torch.long)), "the trainer's targets must not be changed in place"


def test_training_exports_class_info_and_records_dropout(trained):
    record = json.loads((trained["model"] / "cpsample.json").read_text())
    assert record["command"] == "train-conditional"
    assert record["settings"]["num_classes"] == CLASSES and record["settings"]["null_label"] == CLASSES
    assert all("dropped" in row for row in record["results"]["history"])
    unet, _, info = load_conditional(trained["model"])
    assert unet.config.num_class_embeds == CLASSES + 1 and info.null_label == CLASSES
    assert load_classifier(trained["classifier"]).config.sample_size == SIZE


def test_cfg_sampling_runs_plain_and_protected(trained):
    labels = [0, 1, 2, 0]
    plain = generate_conditional(trained["model"], labels, 2.0, steps=5, progress=False)
    protected = generate_conditional(
        trained["model"],
        labels,
        2.0,
        guard="cpsample",
        classifier=str(trained["classifier"]),
        alpha=0.5,
        scale=10.0,
        steps=5,
        progress=False,
    )
    for result in (plain, protected):
        assert result.images.shape == (4, 1, SIZE, SIZE) and torch.isfinite(result.images).all()
        assert result.images.min() < -0.5 and result.images.max() > 0.5, "pictures, not a flat field"
    assert protected.trace["p1"].shape == (5, 4) and not plain.trace
    assert plain.denoiser_calls == 2 * 4 * 5
    # alpha 0.5: the guard pushes every sample at every step, so from the same seed every sample ends elsewhere
    assert protected.trace["fired"].all()
    assert ((protected.trace["p1"] > 0) & (protected.trace["p1"] < 1)).all()
    assert ((plain.images - protected.images).flatten(1).abs().amax(1) > 0.01).all()


def test_alpha_zero_gives_exactly_plain_cfg_samples(trained):
    labels = [2, 1, 0, 1, 2]
    plain = generate_conditional(trained["model"], labels, 3.0, steps=6, seed=3, progress=False)
    guarded = generate_conditional(
        trained["model"],
        labels,
        3.0,
        guard=CPSampleGuard(load_classifier(trained["classifier"]), alpha=0.0),
        steps=6,
        seed=3,
        progress=False,
    )
    assert torch.equal(plain.images, guarded.images)
    assert guarded.trace["fired"].sum() == 0


def test_killed_conditional_sampling_resumes_from_finished_batches(trained, tmp_path):
    labels = [0, 1, 2, 0, 1, 2]
    first = generate_conditional(
        trained["model"], labels, 2.0, steps=4, seed=1, batch_size=2, work_dir=tmp_path, progress=False
    )
    (tmp_path / "batches" / "batch_00001.npz").unlink()  # as if killed while sampling the second batch
    again = generate_conditional(
        trained["model"], labels, 2.0, steps=4, seed=1, batch_size=2, work_dir=tmp_path, progress=False
    )
    assert again.denoiser_calls == 2 * 2 * 4  # only the lost batch (2 images, CFG) was redone
    assert torch.allclose(first.images, again.images, atol=1e-6)
    with pytest.raises(FileExistsError, match="changed: labels.*--overwrite"):  # other labels: refused, nothing reused
        generate_conditional(
            trained["model"], [2, 2, 2, 2, 2, 2], 2.0, steps=4, seed=1, batch_size=2, work_dir=tmp_path, progress=False
        )
    changed = generate_conditional(
        trained["model"],
        [2, 2, 2, 2, 2, 2],
        2.0,
        steps=4,
        seed=1,
        batch_size=2,
        work_dir=tmp_path,
        progress=False,
        overwrite=True,
    )
    assert changed.denoiser_calls == 2 * 6 * 4  # the stale batches were cleared and redrawn


class MeanPixelClassifier(nn.Module):
    """Confident exactly when the mean pixel of x_t is far from 0: some trajectories trip it, others never do."""

    def __init__(self, sharpness: float = 4.0):
        super().__init__()
        self.sharpness = nn.Parameter(torch.tensor(sharpness))

    def forward(self, x, t):
        logit = self.sharpness * x.mean(dim=(1, 2, 3))
        return torch.stack([-logit, logit], dim=1)


def test_guard_changes_only_the_samples_it_fired_on(trained):
    unet, schedule, info = load_conditional(trained["model"])
    labels = [0, 1, 2] * 4

    def run(guard):
        return sample_labels(
            unet,
            labels,
            info.null_label,
            lambda: make_scheduler("ddim", schedule.config, 6),
            (1, SIZE, SIZE),
            2.0,
            guard,
            batch_size=len(labels),
            seed=0,
            progress=False,
        )

    # This 4-step model's unclipped x_t reach mean pixels of 2 to 9: the guard trips where |mean| > 4.9. Such x_t
    # saturate both the [-1, 1] output and p, so "moved" is read off the trajectory itself (the mean of each x_t).
    class Watched(CPSampleGuard):
        def adjust(self, eps, x_t, t, abar_t):
            self.record(x_mean=x_t.mean(dim=(1, 2, 3)))
            return super().adjust(eps, x_t, t, abar_t)

    classifier = MeanPixelClassifier(sharpness=0.8)
    watched, guarded = run(Watched(classifier, alpha=0.0, scale=5.0)), run(Watched(classifier, alpha=0.02, scale=5.0))
    fired = guarded.trace["fired"].any(axis=0)
    assert 0 < fired.sum() < len(labels), "the stub classifier should trip on some trajectories only"
    changed = (run(NoGuard()).images - guarded.images).flatten(1).abs().amax(1).numpy() > 0
    moved = np.abs(watched.trace["x_mean"] - guarded.trace["x_mean"]).max(axis=0) > 0
    assert not changed[~fired].any() and not moved[~fired].any()
    # A push at the last step shows only in the final x, which these saturated images clamp away.
    fired_before_last = guarded.trace["fired"][:-1].any(axis=0)
    assert fired_before_last.any() and moved[fired_before_last].all()


def test_bad_input_gives_clear_errors(trained, tmp_path):
    from cpsample.models import build_denoiser, build_noise_schedule, save_denoiser

    with pytest.raises(ValueError, match="unknown class 7"):
        generate_conditional(trained["model"], [0, 7], steps=2, progress=False)
    with pytest.raises(ValueError, match="needs --classifier"):
        generate_conditional(trained["model"], [0], guard="cpsample", steps=2, progress=False)
    _, _, info = load_conditional(trained["model"])
    assert parse_classes(None, info) == [0, 1, 2] and parse_classes("2,0", info) == [2, 0]
    with pytest.raises(ValueError, match="comma-separated"):
        parse_classes("a,b", info)
    save_denoiser(tmp_path / "plain", build_denoiser(SIZE, 1, WIDTHS), build_noise_schedule())
    with pytest.raises(ValueError, match="not class-conditional"):
        load_conditional(tmp_path / "plain")
    with pytest.raises(ValueError, match="no class labels|carry no class labels"):
        train_conditional(
            ImageSet(np.zeros((4, 1, SIZE, SIZE), np.float32), list("abcd")),
            make_split(4, None, 0, "x"),
            tmp_path / "nolabels",
            TrainConfig(steps=1),
            block_out_channels=WIDTHS,
        )


def test_cli_train_and_sample_conditional(trained, tmp_path):
    from cpsample.cli.main import app

    runner = CliRunner()
    model = tmp_path / "model"
    # The same 16 members as the fixture's classifier (seed 0), so that classifier may protect this model.
    result = runner.invoke(
        app,
        [
            "train-conditional",
            "--data",
            trained["data"],
            "--image-size",
            str(SIZE),
            "--steps",
            "2",
            "--subset",
            "16",
            "--seed",
            "0",
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
    result = runner.invoke(
        app,
        [
            "sample",
            "--model",
            str(model),
            "--classes",
            "0,2",
            "-n",
            "2",
            "--steps",
            "3",
            "--guard",
            "cpsample",
            "--classifier",
            str(trained["classifier"]),
            "--alpha",
            "0.5",
            "--trace",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert {"grid.png", "samples.npz", "trace.npz", "trace.png", "cpsample.json"} <= {p.name for p in out.iterdir()}
    with np.load(out / "samples.npz") as saved, np.load(out / "trace.npz") as trace:
        assert saved["labels"].tolist() == [0, 0, 2, 2] and trace["p1"].shape == (3, 4)
        assert "trace_p1" not in saved.files
    record = json.loads((out / "cpsample.json").read_text())
    assert record["command"] == "sample" and not (out / "private.json").exists()
    # evaluate counts these samples' near-copies against the model's 16 members, as the yardstick finds them
    result = runner.invoke(
        app,
        ["evaluate", "--samples", f"cps={out / 'samples.npz'}", "--model", str(model), "--quality-net", "none",
         "--permutation-rounds", "10", "--out", str(tmp_path / "eval")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval" / "report.json").read_text())["methods"]["cps"]
    dataset, split = training_data(model)
    with np.load(out / "samples.npz") as saved:
        found = find_near_copies(saved["images"], dataset.images[split.members])
    assert (report["replication"]["count"], report["replication"]["n"]) == (int(found.copies.sum()), 4)
    assert report["similarity"]["max"] == pytest.approx(found.similarity.max(), abs=1e-5)
    assert record["results"]["share_of_steps_guided"] == 1.0  # alpha 0.5 pushes at every step
    with np.load(out / "trace.npz") as trace:
        assert trace["fired"].all() and ((trace["p1"] > 0) & (trace["p1"] < 1)).all()
    bad = runner.invoke(app, ["sample", "--model", str(model), "--classes", "5", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "unknown class 5" in " ".join(bad.output.split())
