"""Issue 33: RGB at 32x32 through every command, on the bundled Twemoji pictures (1,026 images, 32x32 RGB, six
categories) and tiny models trained here in seconds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cpsample.cli.main import app

SHAPE = (3, 32, 32)
TRAIN = [
    "train-denoiser",
    "--data",
    "twemoji",
    "--image-size",
    "32",
    "--subset",
    "16",
    "--steps",
    "4",
    "--batch-size",
    "4",
    "--channels",
    "8,16",
]
CLASSIFIER = ["--steps", "2", "--relabel-after", "1", "--batch-size", "8", "--channels", "8,16"]
SAMPLE = ["sample", "--model", "bundled", "-n", "4", "--steps", "3", "--batch-size", "4"]


def cli(*args):
    result = CliRunner().invoke(app, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return result.output


def images(folder):
    with np.load(folder / "samples.npz") as data:
        return data["images"]


@pytest.fixture(scope="module")
def rgb(tmp_path_factory):
    """A tiny RGB denoiser and its classifiers: (folder of everything, denoiser, classifier, selective, early)."""
    root = tmp_path_factory.mktemp("rgb")
    denoiser, classifier = root / "denoiser", root / "clf"
    cli(*TRAIN, "--out", denoiser)
    cli("train-classifier", "--model", denoiser, *CLASSIFIER, "--out", classifier)
    return root, denoiser, classifier


def test_train_denoiser_and_classifiers_take_rgb_32(rgb):
    from cpsample.models.classifier import load_classifier
    from cpsample.models.denoiser import load_denoiser

    root, denoiser, classifier = rgb
    unet, _ = load_denoiser(denoiser)
    assert (unet.config.in_channels, unet.config.out_channels, unet.config.sample_size) == (3, 3, 32)
    clf = load_classifier(classifier)
    assert (clf.config.in_channels, clf.config.sample_size) == (3, 32)
    # the selective classifier (negatives: the denoiser's own samples) and the early one (t <= 100)
    cli(
        "train-classifier",
        "--model",
        denoiser,
        *CLASSIFIER,
        "--negatives",
        "samples",
        "--negatives-count",
        "4",
        "--max-t",
        "100",
        "--out",
        root / "selective",
    )
    selective = load_classifier(root / "selective")
    assert (selective.config.in_channels, selective.config.sample_size) == (3, 32)
    cli(
        "train-classifier",
        "--model",
        denoiser,
        *CLASSIFIER,
        "--negatives",
        "twemoji",
        "--negatives-count",
        "4",
        "--out",
        root / "selective-data",
    )
    # every classifier learnt the denoiser's 16 members (random labels of both classes), the selective ones
    # next to 4 negatives each, the early one only at t <= 100
    members = json.loads((denoiser / "split.json").read_text())["members"]
    assert len(members) == 16
    for name, negatives in (("clf", "none"), ("selective", "samples"), ("selective-data", "twemoji")):
        assert json.loads((root / name / "split.json").read_text())["members"] == members, name
        labels = json.loads((root / name / "labels.json").read_text())
        assert labels["member_indices"] == members and sorted(set(labels["initial_labels"])) == [0, 1], name
        kept = sorted(set(range(16)) - set(labels["relabelled_positions"]))  # only unfit members are relabelled
        assert [labels["labels"][i] for i in kept] == [labels["initial_labels"][i] for i in kept], name
        record = json.loads((root / name / "cpsample.json").read_text())
        assert record["results"]["negatives_source"] == negatives and record["results"]["members"] == 16, name
        assert record["results"]["negatives"] == (0 if negatives == "none" else 4), name
        assert all(np.isfinite(row["loss"]) for row in record["results"]["history"]), name
        assert record["settings"].get("max_t") == (100 if name == "selective" else None), name


@pytest.mark.parametrize("guard", ["none", "cpsample", "amg"])
def test_sample_writes_rgb_images_and_an_rgb_grid(rgb, guard):
    root, denoiser, classifier = rgb
    out = root / f"samples-{guard}"
    extra = {
        "none": [],
        "cpsample": ["--classifier", classifier, "--alpha", "0.5", "--scale", "10"],
        "amg": ["--option", "threshold=0.5"],
    }[guard]
    cli(*SAMPLE, "--model", denoiser, "--guard", guard, *extra, "--out", out)
    samples = images(out)
    assert samples.shape == (4, *SHAPE) and samples.min() >= -1 and samples.max() <= 1
    assert samples.min() < -0.5 and samples.max() > 0.5 and samples.std() > 0.3, "pictures, not a flat field"
    assert all(np.abs(a - b).max() > 0.1 for i, a in enumerate(samples) for b in samples[i + 1 :]), "four distinct"
    with Image.open(out / "grid.png") as grid:
        assert grid.mode == "RGB"
        pixels = np.asarray(grid).astype(int)
    assert np.abs(pixels[..., 0] - pixels[..., 1]).max() > 0, "the grid keeps the colours"
    # the grid shows these samples: 2 x 2 tiles, 1-pixel padding, upscaled 2x; the first tile is samples[0]
    first = np.round((samples[0].transpose(1, 2, 0) + 1) * 127.5)
    assert pixels.shape == ((2 * 33 + 1) * 2, (2 * 33 + 1) * 2, 3)
    assert np.abs(pixels[2:66:2, 2:66:2] - first).max() <= 1
    # same seed as plain sampling: the cpsample guard (alpha 0.5) pushes at every step and moves every sample; AMG at
    # threshold 0.5 never finds a member that close to the untrained model's samples, so it leaves them bit for bit
    results = json.loads((out / "cpsample.json").read_text())["results"]
    plain = images(_plain(rgb))
    if guard == "none":
        assert "share_of_steps_guided" not in results
    elif guard == "cpsample":
        assert results["share_of_steps_guided"] == 1.0
        assert (np.abs(samples - plain).reshape(4, -1).max(axis=1) > 1e-3).all()
    else:
        assert results["share_of_steps_guided"] == 0.0 and np.array_equal(samples, plain)


def test_evaluate_finds_a_member_copied_in_rgb_and_uses_the_emoji_feature_net(rgb):
    from cpsample.data import Split, load_dataset
    from cpsample.evaluation.nearcopy import find_near_copies

    root, denoiser, _ = rgb
    members = load_dataset("twemoji").take(Split.load(denoiser / "split.json").members).images
    copies = np.concatenate([members[:3], images(_plain(rgb))])  # three exact member copies, four samples
    np.savez(root / "copies.npz", images=copies)
    out = root / "eval"
    cli(
        "evaluate",
        "--samples",
        f"plain={root / 'samples-none' / 'samples.npz'}",
        "--samples",
        f"copies={root / 'copies.npz'}",
        "--model",
        denoiser,
        "--permutation-rounds",
        "20",
        "--out",
        out,
    )
    report = json.loads((out / "report.json").read_text())
    copied = report["methods"]["copies"]
    assert copied["replication"]["count"] >= 3 and copied["similarity"]["max"] > 0.999
    # the three planted copies sit at similarity 1 on the members they copy; the counts are what the yardstick finds
    nearest = report["per_sample"]["copies"]
    assert np.allclose(nearest["nn_similarity"][:3], 1.0, atol=1e-4) and nearest["nn_index"][:3] == [0, 1, 2]
    for name, batch in (("copies", copies), ("plain", images(_plain(rgb)))):
        found = find_near_copies(batch, members)
        assert report["methods"][name]["replication"]["count"] == int(found.copies.sum()), name
        assert report["methods"][name]["similarity"]["max"] == pytest.approx(found.similarity.max(), abs=1e-5), name
    assert copied["replication"]["count"] == 3 and report["methods"]["plain"]["replication"]["count"] == 0
    assert copied["quality"]["metric"] == "FD_emojinet", "RGB emoji are scored by the emoji net, never the digit net"
    assert report["settings"]["threshold"] == pytest.approx(_threshold_for_rgb())
    for figure in report["figures"].values():
        if figure.endswith(".png"):
            with Image.open(out / figure) as picture:
                assert picture.mode in ("RGB", "RGBA")


def test_calibrate_on_rgb(rgb):
    root, denoiser, classifier = rgb
    out = root / "calib"
    output = cli(
        "calibrate",
        "--out",
        out,
        "--model",
        denoiser,
        "--classifier",
        classifier,
        "--n-samples",
        "4",
        "--steps",
        "3",
        "--alphas",
        "0.5",
        "--scales",
        "10",
        "--target",
        "1.0",
        "--reduction",
        "0",
        "--finalists",
        "0",
    )
    report = json.loads((out / "calibration_run.json").read_text())
    assert [r["guard"] for r in report["rows"]] == ["none", "cpsample"]
    assert all(r["frechet_distance"] is not None for r in report["rows"])
    assert (classifier / "calibration.json").exists()
    # the one setting of the grid was measured on 4 images, guided at every step (alpha 0.5), and is what was chosen
    plain, guarded = report["rows"]
    assert (guarded["alpha"], guarded["scale"], guarded["steps_guided"]) == (0.5, 10.0, 1.0)
    assert [r["n"] for r in report["rows"]] == [4, 4] and all(r["near_copies"] == 0 for r in report["rows"])
    assert report["chosen"] == guarded
    saved = json.loads((classifier / "calibration.json").read_text())
    assert (saved["settings"]["alpha"], saved["settings"]["scale"]) == (0.5, 10.0)
    assert saved["measured"] == guarded and saved["plain"] == plain and saved["model"] == str(denoiser)
    assert "chosen: a=0.5, s=10" in output


def test_attack_mia_on_rgb(rgb):
    from sklearn.metrics import roc_auc_score

    root, denoiser, _ = rgb
    out = root / "mia"
    cli(
        "attack",
        "mia",
        "--model",
        denoiser,
        "--members",
        "8",
        "--nonmembers",
        "8",
        "--t",
        "100",
        "--draws",
        "1",
        "--out",
        out,
    )
    result = json.loads((out / "result.json").read_text())
    assert set(result) == {"loss", "pia"}
    assert result["loss"]["n_members"] == 8
    # the AUCs recorded and printed are those of the saved scores (a lower score flags a member)
    record = json.loads((out / "cpsample.json").read_text())["results"]
    for attack in ("loss", "pia"):
        members, nonmembers = result[attack]["member_scores"]["100"], result[attack]["nonmember_scores"]["100"]
        assert (len(members), len(nonmembers)) == (8, 8)
        auc = roc_auc_score([1] * 8 + [0] * 8, -np.r_[members, nonmembers])
        assert result[attack]["best"]["auc"] == pytest.approx(auc) == record[attack]["auc"], attack
    with Image.open(out / "roc.png") as roc:
        assert roc.format == "PNG" and min(roc.size) > 100 and np.asarray(roc.convert("L")).std() > 5
    # the bundled RGB model memorised its 200 members: at t = 300 the same command tells them apart
    cli(
        "attack",
        "mia",
        "--model",
        "bundled-rgb",
        "--attack",
        "loss",
        "--members",
        "8",
        "--nonmembers",
        "8",
        "--t",
        "300",
        "--draws",
        "1",
        "--out",
        root / "mia-bundled",
    )
    memorised = json.loads((root / "mia-bundled" / "result.json").read_text())["loss"]
    assert memorised["best"]["auc"] > 0.9 and memorised["best"]["member_mean"] < memorised["best"]["nonmember_mean"]


def test_attack_side_on_rgb(rgb):
    root, denoiser, _ = rgb
    out = root / "side"
    cli(
        "attack",
        "side",
        "--model",
        denoiser,
        "--n-samples",
        "8",
        "--clusters",
        "2",
        "--min-cohesion",
        "-1",
        "--attack-steps",
        "3",
        "--per-class",
        "2",
        "--train-steps",
        "3",
        "--batch-size",
        "8",
        "--out",
        out,
    )
    result = json.loads((out / "result.json").read_text())
    assert result["attack"]["n"] == 4
    for name in ("pool.png", "attack.png"):
        with Image.open(out / name) as grid:
            assert grid.mode == "RGB"
            pixels = np.asarray(grid).astype(int)
        assert np.abs(pixels[..., 0] - pixels[..., 2]).max() > 0 and pixels.std() > 5, name
    # 8 pool samples in the 2 clusters (min cohesion -1 keeps both), 2 attack images per kept cluster; the untrained
    # model's noise comes nowhere near a member, and each count agrees with its similarities and its per-class rows
    clusters = result["clusters"]
    assert (clusters["k"], clusters["kept"], sum(clusters["sizes"]), result["pool"]["n"]) == (2, 2, 8, 8)
    assert result["attack"]["n"] == 2 * clusters["kept"] and len(result["per_class"]) == clusters["kept"]
    for part in ("pool", "attack"):
        summary = result[part]
        assert summary["similarity_max"] < summary["threshold"] and summary["near_copies"] == 0, part
        assert summary["distinct_extracted"] == len(summary["extracted"]) == 0, part
    assert sum(row["near_copies"] for row in result["per_class"]) == result["attack"]["near_copies"]


def test_demo_on_an_rgb_model(rgb):
    from cpsample.data import Split, load_dataset
    from cpsample.evaluation.detector import NearCopyDetector

    root, denoiser, classifier = rgb
    out = root / "demo"
    cli(
        "demo",
        "--out",
        out,
        "--model",
        denoiser,
        "--classifier",
        classifier,
        "--n-samples",
        "4",
        "--steps",
        "3",
        "--mia-members",
        "8",
        "--alpha",
        "0.5",
        "--scale",
        "10",
    )
    report = json.loads((out / "report.json").read_text())
    assert {"plain", "cpsample", "rejection"} <= set(report["methods"])
    assert report["methods"]["plain"]["quality"]["metric"] == "FD_emojinet"
    # the counts are those of the saved samples against the model's 16 members; the untrained model copies none
    members = load_dataset("twemoji").take(Split.load(denoiser / "split.json").members).images
    detector = NearCopyDetector(members, report["settings"]["threshold"])
    with np.load(out / "samples.npz") as saved:
        samples = {name: saved[name] for name in saved.files}
    assert set(samples) == set(report["methods"]) and all(batch.shape == (4, *SHAPE) for batch in samples.values())
    for name, batch in samples.items():
        assert report["methods"][name]["replication"]["count"] == int(detector(batch).sum()) == 0, name
        nearest = detector.similarity(batch).max()
        assert report["methods"][name]["similarity"]["max"] == pytest.approx(nearest, abs=1e-5), name
    # no plain copy to reject: rejection sampling keeps the plain round as it is; CPSample (alpha 0.5) guides every
    # step from the same seed and so moves every sample
    assert report["costs"]["rejection"]["rejected"] == 0 and np.array_equal(samples["rejection"], samples["plain"])
    assert report["costs"]["cpsample"]["share_of_steps_guided"] == 1.0
    assert (np.abs(samples["cpsample"] - samples["plain"]).reshape(4, -1).max(axis=1) > 1e-3).all()
    assert np.array_equal(samples["plain"], images(_plain(rgb)))  # the same draw as `cpsample sample`, seed 0


def _plain(rgb):
    out = rgb[0] / "samples-none"
    if not (out / "samples.npz").exists():
        cli(*SAMPLE, "--model", rgb[1], "--out", out)
    return out


def _threshold_for_rgb():
    from cpsample.evaluation.nearcopy import default_threshold

    return default_threshold("pixels")


def test_the_pixel_yardstick_finds_noisy_rgb_copies_and_spares_distinct_pictures():
    """Centred pixels at 0.98 on 32x32 RGB (the measurement in nearcopy.NEAR_COPY_THRESHOLDS): near-exact copies are
    found, distinct pictures rarely are."""
    from cpsample.data import load_dataset
    from cpsample.evaluation.nearcopy import find_near_copies

    pictures = load_dataset("twemoji").images
    order = np.random.default_rng(0).permutation(len(pictures))
    members, others = pictures[order[:200]], pictures[order[200:]]
    noisy = np.clip(members + np.random.default_rng(1).normal(0, 0.05, members.shape), -1, 1).astype(np.float32)
    found = find_near_copies(noisy, members)
    assert found.copies.mean() > 0.95 and (found.nearest[found.copies] == np.flatnonzero(found.copies)).all()
    assert find_near_copies(others, members).copies.mean() < 0.02


def test_bundled_feature_net_follows_the_channels_and_never_runs_the_digit_net_on_rgb():
    from cpsample.data import load_dataset
    from cpsample.evaluation.feature_net import load_feature_net

    emoji = load_feature_net("bundled", channels=3)
    assert emoji.name == "emojinet" and (emoji.config.in_channels, emoji.config.image_size) == SHAPE[:2]
    assert load_feature_net("bundled").name == load_feature_net("bundled", channels=1).name == "digitnet"
    pictures = load_dataset("twemoji")
    assert emoji(pictures.images[:8]).shape == (8, emoji.config.feature_dim)
    with pytest.raises(ValueError, match="3-channel"):
        load_feature_net("digitnet")(pictures.images[:2])
    with pytest.raises(ValueError, match="1-channel"):
        emoji(np.zeros((2, 1, 32, 32), np.float32))
    # the shipped net tells the six categories apart on the pictures it was not trained on
    record = json.loads((emoji_folder() / "cpsample.json").read_text())["results"]
    held = np.asarray(record["held_out_indices"])
    accuracy = (emoji.predict(pictures.images[held]) == pictures.labels[held]).mean()
    assert accuracy == pytest.approx(record["held_out_accuracy"], abs=0.01) and accuracy > 0.5  # majority class: 26%


def test_train_feature_net_on_rgb(tmp_path):
    from cpsample.evaluation.feature_net import load_feature_net

    cli(
        "train-feature-net",
        "--data",
        "twemoji",
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "256",
        "--widths",
        "8,16",
        "--flip",
        "--name",
        "tiny",
        "--out",
        tmp_path / "net",
    )
    net = load_feature_net(tmp_path / "net")
    assert (net.name, net.config.in_channels, net.config.image_size, net.num_classes) == ("tiny", 3, 32, 6)
    assert net.config.widths == (8, 16)


def emoji_folder():
    from cpsample.evaluation.feature_net import BUNDLED_FEATURE_NETS

    return BUNDLED_FEATURE_NETS["emojinet"]


def test_the_bundled_rgb_model_ships_with_a_classifier_that_memorised_its_members():
    """'bundled-rgb': the 32x32 Twemoji denoiser (200 members) and its random-label classifier, which must tell each
    member's label at low noise (what CPSample's guard relies on) and fall to chance on held-out pictures."""
    import json

    import torch

    from cpsample.models.bundle import resolve_model_dir
    from cpsample.models.pretrained import Classifier, DiffusionModel

    model = DiffusionModel.from_pretrained("bundled-rgb")
    classifier = Classifier.from_pretrained("bundled-rgb")
    members = torch.as_tensor(model.members.images)
    assert members.shape == (200, 3, 32, 32) and model.unet.config.in_channels == 3
    record = json.loads((resolve_model_dir("bundled-rgb", "classifier") / "labels.json").read_text())
    assert record["member_indices"] == sorted(record["member_indices"]) and len(record["labels"]) == 200
    noise = torch.Generator().manual_seed(0)
    abar = model.schedule.alphas_cumprod[10]

    def predicted(images):
        noisy = abar.sqrt() * images + (1 - abar).sqrt() * torch.randn(images.shape, generator=noise)
        with torch.no_grad():
            return classifier.model(noisy, torch.full((len(images),), 10)).argmax(dim=1).numpy()

    member_accuracy = (predicted(members) == np.asarray(record["labels"])).mean()
    heldout = torch.as_tensor(model.nonmembers.images[:200])
    heldout_share_of_label_one = predicted(heldout).mean()
    assert member_accuracy > 0.95
    assert 0.1 < heldout_share_of_label_one < 0.9  # no label memorised for pictures it never saw


def test_the_bundled_rgb_denoiser_fits_its_members_better_than_pictures_it_never_saw():
    """The RGB benchmark needs a model that memorised its 200 members: at moderate noise its eps error on them must be
    well below its error on held-out Twemoji (the gap the loss attack reads)."""
    from cpsample.attacks.membership import run_mia

    loss = run_mia("bundled-rgb", attack="loss", timesteps=(300,), draws=1, progress=False)["loss"]
    members, heldout = loss.member_scores[300], loss.nonmember_scores[300]
    assert len(members) == 200
    assert np.median(members) < 0.2 * np.median(heldout)  # measured: 0.0021 vs 0.049
