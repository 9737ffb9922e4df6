"""Evaluation suite on real MNIST digits (bundled with cpsample): each statistic against a case worked out by hand."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from cpsample.data import DataError, ImageSet, load_dataset
from cpsample.evaluation import (
    BUNDLED_FEATURE_NET,
    NEAR_COPY_THRESHOLDS,
    DinoFeatures,
    FeatureNetTraining,
    PixelFeatures,
    clopper_pearson,
    compare_shares,
    evaluate,
    frechet_distance,
    frechet_distance_from_fits,
    load_feature_net,
    make_feature_extractor,
    nearest_by_cosine,
    nearest_by_l2,
    permutation_test,
    relative_distance,
    replication_share,
    tiled_l2,
    train_feature_net,
    write_report,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist", image_size=16)


@pytest.fixture(scope="module")
def split(mnist):
    """300 members, the rest non-members, fixed by seed."""
    order = np.random.default_rng(0).permutation(len(mnist))
    return mnist.images[order[:300]], mnist.images[order[300:]]


# ---------------------------------------------------------------- nearest neighbours and the near-copy share


def test_duplicates_have_similarity_one_and_are_counted(split):
    members, _ = split
    exact = members[:20]
    rescaled = members[20:40] * 0.8 + 0.1  # brighter, lower contrast: centred cosine ignores both
    samples = np.concatenate([exact, rescaled])
    found = nearest_by_cosine(PixelFeatures()(samples), PixelFeatures()(members), progress=False)
    assert np.allclose(found.nearest_score, 1.0, atol=1e-5)
    assert found.nearest_index.tolist() == list(range(40))
    share = replication_share(found.nearest_score, threshold=0.97)
    assert (share["count"], share["n"], share["share"]) == (40, 40, 1.0)


def test_faiss_search_matches_brute_force_and_held_out_digits_are_not_copies(split):
    members, nonmembers = split
    queries = nonmembers[:500]
    features = PixelFeatures()
    found = nearest_by_cosine(features(queries), features(members), k=3, batch_size=128, progress=False)
    q = features(queries) / np.linalg.norm(features(queries), axis=1, keepdims=True)
    m = features(members) / np.linalg.norm(features(members), axis=1, keepdims=True)
    brute = np.sort(q @ m.T, axis=1)[:, ::-1][:, :3]
    assert np.allclose(found.scores, brute, atol=1e-5)
    assert (np.diff(found.scores, axis=1) <= 1e-6).all()  # best first
    # Distinct real digits never come this close in centred pixels; a copy would.
    assert found.nearest_score.max() < 0.995
    assert replication_share(found.nearest_score, threshold=0.995)["count"] == 0


def test_l2_search_returns_true_distances(split):
    members, nonmembers = split
    flat_m, flat_q = members.reshape(300, -1), nonmembers[:50].reshape(50, -1)
    found = nearest_by_l2(flat_q, flat_m, k=2, progress=False)
    brute = np.sort(np.linalg.norm(flat_q[:, None] - flat_m[None], axis=2), axis=1)[:, :2]
    assert np.allclose(found.scores, brute, atol=1e-3)


def test_clopper_pearson_known_values():
    # k = 0 and k = n have closed forms: upper = 1 - (alpha/2)^(1/n), lower = (alpha/2)^(1/n).
    low, high = clopper_pearson(0, 10)
    assert low == 0.0 and high == pytest.approx(1 - 0.025**0.1, abs=1e-9)
    low, high = clopper_pearson(10, 10)
    assert low == pytest.approx(0.025**0.1, abs=1e-9) and high == 1.0
    # k = 5 of 10: the textbook exact interval (0.1871, 0.8129).
    low, high = clopper_pearson(5, 10)
    assert low == pytest.approx(0.187086, abs=1e-5) and high == pytest.approx(0.812914, abs=1e-5)
    with pytest.raises(ValueError):
        clopper_pearson(3, 0)


def _share(count: int, n: int) -> dict:
    return replication_share(np.r_[np.ones(count), np.zeros(n - count)], threshold=0.5)


def test_chi_square_same_and_different_shares():
    same = compare_shares(_share(10, 100), _share(10, 100))
    assert same["p_value"] == pytest.approx(1.0) and same["chi2"] == pytest.approx(0.0)
    different = compare_shares(_share(30, 100), _share(1, 100))
    assert different["p_value"] < 0.01 and different["fisher_p_one_sided"] < 0.01
    # Yates-corrected statistic by hand: N (|ad - bc| - N/2)^2 / (row and column totals).
    a, b, c, d = 30, 70, 1, 99
    total = a + b + c + d
    by_hand = total * (abs(a * d - b * c) - total / 2) ** 2 / ((a + b) * (c + d) * (a + c) * (b + d))
    assert different["chi2"] == pytest.approx(by_hand, rel=1e-9)
    nothing = compare_shares(_share(0, 50), _share(0, 80))  # no copies anywhere: nothing to test, no crash
    assert nothing["p_value"] == 1.0 and nothing["note"]


# ---------------------------------------------------------------- Carlini et al.: tiled l2 and relative distance


def test_tiled_l2_by_hand(split):
    members, _ = split
    assert np.allclose(tiled_l2(members[:10], members[:10]), 0.0)
    blank = -np.ones((1, 1, 16, 16), np.float32)
    changed = blank.copy()
    changed[..., :4, :4] = 0.0  # one 4x4 tile moves by 1.0 in [-1, 1] = 0.5 in [0, 1] units
    assert tiled_l2(blank, changed)[0] == pytest.approx(0.5)  # the whole difference sits in one tile
    whole_image_rms = np.sqrt(np.mean(((blank - changed) / 2) ** 2))
    assert whole_image_rms == pytest.approx(0.125)  # plain RMS dilutes it 4x: why tiles catch local copies


def test_relative_distance_flags_copies_not_new_digits(split):
    members, nonmembers = split
    noisy_copies = np.clip(members[:20] + np.random.default_rng(1).normal(0, 0.02, members[:20].shape), -1, 1)
    copies = relative_distance(noisy_copies.astype(np.float32), members, progress=False)
    assert (copies["ratio"] <= 1).all() and copies["nearest"].tolist() == list(range(20))
    assert copies["neighbours"] == 50
    fresh = relative_distance(nonmembers[:200], members, progress=False)
    assert np.median(fresh["ratio"]) > 1.0
    tiled = relative_distance(members[:5], members, distance="tiled", progress=False)
    assert np.allclose(tiled["ratio"], 0.0) and np.allclose(tiled["tiled_l2"], 0.0)


# ---------------------------------------------------------------- quality


def test_frechet_distance_of_gaussians_by_hand():
    # 1-D: FD = (mu_a - mu_b)^2 + (sigma_a - sigma_b)^2 = 3^2 + (1 - 2)^2 = 10.
    assert frechet_distance_from_fits(
        np.array([0.0]), np.array([[1.0]]), np.array([3.0]), np.array([[4.0]])
    ) == pytest.approx(10.0)
    # Diagonal covariances add up per dimension.
    fd = frechet_distance_from_fits(np.zeros(2), np.diag([1.0, 9.0]), np.ones(2), np.diag([4.0, 1.0]))
    assert fd == pytest.approx(2 + 1 + 4)


def test_frechet_distance_zero_to_itself_and_growing_with_noise(mnist):
    net = load_feature_net("bundled")
    clean = mnist.images[:600]
    assert frechet_distance(net(clean), net(clean)) == pytest.approx(0.0, abs=1e-6)
    rng = np.random.default_rng(0)
    distances = [
        frechet_distance(net(clean), net(np.clip(clean + rng.normal(0, sigma, clean.shape), -1, 1)))
        for sigma in (0.1, 0.4, 0.8)
    ]
    assert 0 < distances[0] < distances[1] < distances[2]
    few = net(clean[:10])  # 10 points in 64 dimensions: singular covariance, still a finite answer
    assert math.isfinite(frechet_distance(few, net(clean[10:20])))


def test_inception_fid_says_what_it_needs(tmp_path, split, monkeypatch):
    import sys

    from cpsample.evaluation.quality import MissingOptionalPackage, inception_fid

    with pytest.raises(FileNotFoundError, match="Inception weights"):
        inception_fid(split[0][:4], split[1][:4], tmp_path / "missing.pth")
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"")
    # whether or not this machine has torchmetrics: without it (hidden here) the message names what to install
    monkeypatch.setitem(sys.modules, "torchmetrics", None)
    with pytest.raises(MissingOptionalPackage, match="torchmetrics"):
        inception_fid(split[0][:4], split[1][:4], weights)


def test_bundled_feature_net_recognises_held_out_digits(mnist):
    record = json.loads((BUNDLED_FEATURE_NET / "cpsample.json").read_text())
    held_out = np.asarray(record["results"]["held_out_indices"])
    net = load_feature_net("bundled")
    accuracy = (net.predict(mnist.images[held_out]) == mnist.labels[held_out]).mean()
    assert accuracy > 0.95
    assert record["results"]["command_line"].startswith("cpsample train-feature-net")


def test_a_feature_net_says_when_it_measures_images_of_another_size(mnist, caplog):
    """The 16x16 digitnet on 32x32 digits resizes them (its FD then describes them at 16x16): said once, as a
    warning naming both sizes and what to train instead; images of its own size pass without a word."""
    import logging

    from cpsample.data import resize
    from cpsample.evaluation import feature_net

    feature_net._told_resized.clear()  # (said once per process: an earlier test may have had it said)
    caplog.set_level(logging.INFO, logger="cpsample")
    net = load_feature_net("bundled")
    net(mnist.images[:8])
    assert caplog.records == []
    large = resize(mnist.images[:8], 32)
    net(large)
    net(large)
    said = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(said) == 1 and "trained on 16x16 images; these are 32x32" in said[0]
    assert "train-feature-net --image-size 32" in said[0]


def test_train_feature_net_learns_and_round_trips(mnist, tmp_path):
    small = mnist.take(np.arange(0, len(mnist), 5))  # every 5th image: all ten classes (the source is sorted by class)
    net, summary = train_feature_net(small, FeatureNetTraining(epochs=3, held_out=0.2, seed=0), progress=False)
    assert summary["held_out_images"] == 200 and summary["held_out_accuracy"] > 0.5  # chance is 0.1
    net.save(tmp_path / "net")
    again = load_feature_net(tmp_path / "net")
    assert np.array_equal(again.predict(small.images[:100]), net.predict(small.images[:100]))
    assert np.allclose(again(small.images[:10]), net(small.images[:10]), atol=1e-6)
    unlabelled = ImageSet(images=small.images[:10], names=small.names[:10])
    with pytest.raises(DataError, match="labels"):
        train_feature_net(unlabelled, progress=False)


# ---------------------------------------------------------------- permutation test (App. E)


def test_permutation_test_rejects_copies_and_keeps_fresh_draws():
    rng = np.random.default_rng(0)
    pool = rng.normal(size=(20000, 32)).astype(np.float32)  # T: members are its first 100 rows
    members = pool[:100]
    fresh = rng.normal(size=(100, 32))  # samples from the same distribution, unrelated to the members
    copies = fresh.copy()
    copies[:2] = members[:2] + rng.normal(0, 0.01, (2, 32))  # two samples sit on members
    # A null draw holds member 0 or 1 with probability ~1%, so p should be ~0.01: reject at 0.05.
    copied = permutation_test(copies, members, pool, rounds=200, seed=1, progress=False)
    assert copied["reject"] and copied["p_value"] < 0.05 and copied["share_below"] > 0.95
    assert copied["observed_max_similarity"] > 0.999
    independent = permutation_test(fresh, members, pool, rounds=200, seed=1, progress=False)
    assert not independent["reject"] and independent["p_value"] > 0.05
    with pytest.raises(ValueError, match="pool"):
        permutation_test(fresh, members, members, rounds=10)


# ---------------------------------------------------------------- feature extractors


def test_pixel_features_ignore_brightness_and_survive_constant_images():
    rng = np.random.default_rng(0)
    images = rng.uniform(-0.5, 0.5, (3, 1, 8, 8)).astype(np.float32)
    features = PixelFeatures()
    assert np.allclose(features(images), features(images + 0.3), atol=1e-6)
    constant = features(np.zeros((1, 1, 8, 8), np.float32))
    assert np.isfinite(constant).all() and not constant.any()


def _tiny_dino(kind: str):
    """A tiny random DINO model as transformers builds it (ViTModel for DINO v1, Dinov2Model, with registers)."""
    from transformers import AutoModel, Dinov2Config, Dinov2WithRegistersConfig, ViTConfig

    size = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "patch_size": 4, "image_size": 16}
    config = {
        "vit": lambda: ViTConfig(**size, intermediate_size=64),
        "dinov2": lambda: Dinov2Config(**size, mlp_ratio=2, layerscale_value=0.5),
        "dinov2_with_registers": lambda: Dinov2WithRegistersConfig(**size, mlp_ratio=2, num_register_tokens=2),
    }[kind]()
    torch.manual_seed(0)
    return AutoModel.from_config(config).eval()


def _normed_cls(model, pixels: torch.Tensor) -> np.ndarray:
    """The CLS token after the model's final layernorm, from the encoder's last hidden state (not the pooler)."""
    with torch.no_grad():
        hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]
        return model.layernorm(hidden)[:, 0].numpy()


@pytest.mark.parametrize("kind", ["vit", "dinov2", "dinov2_with_registers"])
def test_dino_loads_a_hugging_face_folder_and_returns_the_normed_cls_token(tmp_path, split, kind):
    model = _tiny_dino(kind)
    folder = tmp_path / f"dino-{kind}"
    model.save_pretrained(folder)
    assert sorted(path.name for path in folder.iterdir()) == ["config.json", "model.safetensors"]
    extractor = make_feature_extractor(f"dino:{folder}")
    assert extractor.name == f"dino(dino-{kind})"
    extractor = DinoFeatures(folder, image_size=16)
    images = split[0][:6]
    features = extractor(images)
    assert features.shape == (6, 32) and features.dtype == np.float32
    expected = _normed_cls(model, extractor.preprocess(torch.from_numpy(images)))
    assert np.allclose(features, expected, atol=1e-5)
    assert np.abs(features[0] - features[1]).max() > 1e-3, "different digits, different features"
    larger = DinoFeatures(folder, image_size=32)(images[:2])  # the position grid resized, as for 224 px inputs
    assert larger.shape == (2, 32) and np.isfinite(larger).all()
    with pytest.raises(ValueError, match="multiple of the ViT patch size 4"):
        DinoFeatures(folder, image_size=18)


def test_dino_refuses_what_is_not_a_safetensors_hugging_face_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="DINO model folder not found.*config.json \\+ model.safetensors"):
        make_feature_extractor(f"dino:{tmp_path / 'missing'}")
    with pytest.raises(ValueError, match="dino:PATH"):
        make_feature_extractor("dino")
    old_format = tmp_path / "dino_vits16.pth"  # facebookresearch's weights file, as cpsample once read it
    torch.save({"cls_token": torch.zeros(1, 1, 4)}, old_format)
    with pytest.raises(ValueError, match="is a file; dino:PATH takes a local Hugging Face model folder.*save_pretr"):
        DinoFeatures(old_format)
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        DinoFeatures(bare)
    pickled = tmp_path / "pickled"
    model = _tiny_dino("dinov2")
    model.config.save_pretrained(pickled)
    torch.save({**model.state_dict(), "payload": _Unpicklable()}, pickled / "pytorch_model.bin")
    with pytest.raises(ValueError, match="only pickled weights \\(pytorch_model.bin\\).*writes model.safetensors"):
        DinoFeatures(pickled)
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (other / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="holds a 'bert' model; dino:PATH takes a DINO"):
        DinoFeatures(other)


def test_feature_extractors_fail_with_a_clear_message(tmp_path):
    with pytest.raises(ValueError, match="pixels"):
        make_feature_extractor("inception")
    with pytest.raises(ValueError, match="sscd:PATH"):
        make_feature_extractor("sscd")
    script = tmp_path / "sscd.pt"
    script.write_bytes(b"not read")
    with pytest.raises(ValueError, match="trust-torchscript"):
        make_feature_extractor(f"sscd:{script}")


class _Unpicklable:
    """An arbitrary object: loading it would need the full unpickler, which cpsample never runs."""


def test_bad_inputs_are_refused_with_a_clear_message(split):
    members, _ = split
    with pytest.raises(DataError, match="empty"):
        PixelFeatures()(members[:0])
    with pytest.raises(DataError, match="NaN"):
        PixelFeatures()(np.full((2, 1, 16, 16), np.nan, np.float32))
    with pytest.raises(DataError, match="shape"):
        PixelFeatures()(members[0])
    with pytest.raises(DataError, match="resize"):
        evaluate({"plain": np.zeros((4, 1, 8, 8), np.float32)}, members, quality_net=None)
    with pytest.raises(DataError, match="mapping"):
        evaluate({}, members)


# ---------------------------------------------------------------- evaluate + report


def test_evaluate_and_report(split, tmp_path):
    members, nonmembers = split
    members = members[:150]
    copies = np.clip(members[:15] + np.random.default_rng(2).normal(0, 0.03, members[:15].shape), -1, 1)
    plain = np.concatenate([copies, nonmembers[:45]]).astype(np.float32)
    protected = nonmembers[45:105]
    labels = load_feature_net("bundled").predict(protected)
    results = evaluate(
        {"plain": plain, "cpsample": protected},
        members,
        nonmembers[200:900],
        threshold=0.995,
        permutation_rounds=100,
        sample_labels={"cpsample": labels},
        figures_dir=tmp_path,
        membership=[{"attack": "loss", "auc": 0.73}],
        progress=False,
    )
    plain_result, protected_result = results["methods"]["plain"], results["methods"]["cpsample"]
    assert plain_result["replication"]["count"] >= 15 and protected_result["replication"]["count"] == 0
    assert results["comparisons"][0]["p_value"] < 0.01
    assert protected_result["quality"]["metric"] == "FD_digitnet"
    assert protected_result["quality"]["class_agreement"]["agreement"] == 1.0
    # 150 members in a pool of 850: the permutation test cannot go below p ~ 0.18 here (see its docstring).
    assert plain_result["permutation"]["members_share_of_pool"] == pytest.approx(150 / 850)
    assert plain_result["permutation"]["share_below"] > 0.6
    assert len(results["per_sample"]["plain"]["nn_similarity"]) == 60

    results["costs"] = {"plain": {"seconds": 1.5}, "cpsample": {"seconds": 2.25}}  # a caller's own section
    paths = write_report(tmp_path, results)
    assert all(path.is_file() for path in paths.values())
    page = paths["html"].read_text()
    sources = re.findall(r"<img src='([^']+)'", page)
    assert sorted(sources) == ["similarity_histogram.png", "top_pairs.png"]
    for source in sources:
        assert (tmp_path / source).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "membership-inference" in page and "0.73" in page and "FD_digitnet" in page and "2.25" in page
    assert json.loads(paths["json"].read_text())["methods"]["plain"]["replication"]["n"] == 60
    assert "| plain | 60 |" in paths["markdown"].read_text()


def test_cli_evaluate_and_train_feature_net(split, tmp_path):
    import typer
    from typer.testing import CliRunner

    from cpsample.cli.evaluate import register
    from cpsample.evaluation.nearcopy import find_near_copies

    app = typer.Typer()
    register(app)
    members, nonmembers = split
    data = np.concatenate([members[:80], nonmembers[:120]])
    np.savez(tmp_path / "data.npz", images=data, labels=np.zeros(len(data), np.int64))
    model = tmp_path / "model"
    model.mkdir()
    (model / "cpsample.json").write_text(
        json.dumps({"settings": {"data": str(tmp_path / "data.npz"), "image_size": 16}})
    )
    (model / "split.json").write_text(
        json.dumps({"source": "test", "seed": 0, "members": list(range(80)), "nonmembers": list(range(80, 200))})
    )
    np.savez(tmp_path / "plain.npz", images=members[:30])
    np.savez(tmp_path / "guarded.npz", images=nonmembers[300:330])
    runner = CliRunner()
    out = tmp_path / "report"
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--samples",
            f"plain={tmp_path / 'plain.npz'}",
            "--samples",
            f"guarded={tmp_path / 'guarded.npz'}",
            "--model",
            str(model),
            "--out",
            str(out),
            "--permutation-rounds",
            "50",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (out / "report.html").is_file() and (out / "cpsample.json").is_file()
    record = json.loads((out / "cpsample.json").read_text())
    assert record["results"]["headline"]["plain"]["near_copy_share"] == 1.0
    # the 30 plain "samples" are members 0-29, each found at similarity 1 on itself; the 30 held-out digits are
    # counted as the yardstick counts them against the model's 80 members
    report = json.loads((out / "report.json").read_text())
    plain, guarded = report["methods"]["plain"], report["methods"]["guarded"]
    assert (plain["replication"]["count"], plain["replication"]["n"]) == (30, 30)
    assert np.allclose(report["per_sample"]["plain"]["nn_similarity"], 1.0, atol=1e-4)
    assert report["per_sample"]["plain"]["nn_index"] == list(range(30))
    found = find_near_copies(nonmembers[300:330], members[:80])
    assert guarded["replication"]["count"] == int(found.copies.sum()) < 30
    assert guarded["similarity"]["max"] == pytest.approx(found.similarity.max(), abs=1e-5)
    assert found.similarity.max() < 0.999
    assert record["results"]["headline"]["guarded"]["near_copy_share"] == pytest.approx(found.copies.mean())
    assert record["settings"]["threshold"] == NEAR_COPY_THRESHOLDS["pixels"]  # the yardstick's default, recorded
    bad = runner.invoke(
        app, ["evaluate", "--model", "bundled", "--samples", "no-such-samples.npz", "--out", str(tmp_path / "bad")]
    )
    assert bad.exit_code == 2 and "no-such-samples.npz" in " ".join(bad.output.split())
    trained = runner.invoke(
        app,
        [
            "train-feature-net",
            "--data",
            "digits",
            "--image-size",
            "8",
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "net"),
        ],
    )
    assert trained.exit_code == 0, trained.output
    assert load_feature_net(tmp_path / "net").config.image_size == 8
    trained_record = json.loads((tmp_path / "net" / "cpsample.json").read_text())["results"]
    assert trained_record["held_out_accuracy"] > 0.4  # ten digit classes: chance is 0.1 (measured 0.73)


def test_the_verdict_says_a_cut_of_nothing_and_more_copies_plainly():
    """The report's first lines: a cut against a baseline that made no near-copies is no cut; more copies are said in
    capitals; FD's change is signed; membership gives each defence's best AUC per threat model."""
    from cpsample.evaluation.report import verdict

    def method(count, n=100, fd=None):
        measured = {"replication": {"count": count, "n": n, "share": count / n}}
        return {**measured, "quality": {"metric": "FD_x", "value": fd}} if fd else measured

    results = {"methods": {"plain": method(20, fd=10.0), "guarded": method(1, fd=11.0), "worse": method(30)}}
    results["comparisons"] = [{"baseline": "plain", "method": "guarded", "p_value": 1e-5}]
    rows = [
        {"threat model": "black box", "defence": "plain", "attack": "a", "AUC": 0.7},
        {"threat model": "black box", "defence": "plain", "attack": "b", "AUC": 0.8},
        {"threat model": "black box", "defence": "guarded", "attack": "a", "AUC": 0.6},
    ]
    lines = verdict(results, {"rows": rows})
    assert lines[0] == (
        "guarded: 1/100 near-copies (1.00%) against plain's 20/100 (20.00%): 95% fewer (chi-square p = 1.00e-05); "
        "FD_x 11.000 against 10.000 (+10%; lower is closer to the reference images)"
    )
    assert lines[1].endswith(": 50% MORE")
    assert lines[2].startswith("membership, black box: best attack AUC 0.80 plain, 0.60 guarded")
    nothing = verdict({"methods": {"plain": method(0), "guarded": method(0)}})
    assert nothing == [
        "guarded: 0/100 near-copies (0.00%) against plain's 0/100 (0.00%): plain made no near-copies, so this run "
        "shows no cut"
    ]
    alone = verdict({"methods": {"protected": method(3, fd=12.5)}})  # one set of samples: said, no cut claimed
    assert alone == [
        "protected: 3/100 near-copies (3.00%); FD_x 12.500; no other samples to compare with, so no cut is measured "
        "(give plain samples first, then these)"
    ]


def test_samples_take_name_equals_path_or_a_bare_path_in_every_command(tmp_path):
    """--samples means [NAME=]PATH in evaluate as in attack sample-nn: a bare runs/plain/samples.npz is named 'plain',
    another file by its stem; a name given twice is refused with what to do."""
    from cpsample.data.samples import parse_named_paths

    for folder in ("plain", "guarded"):
        (tmp_path / folder).mkdir()
        np.savez(tmp_path / folder / "samples.npz", images=np.zeros((2, 1, 4, 4), dtype=np.float32))
    plain, guarded = tmp_path / "plain" / "samples.npz", tmp_path / "guarded" / "samples.npz"
    named = parse_named_paths([str(plain), f"mine={guarded}"])
    assert list(named) == ["plain", "mine"]
    with pytest.raises(ValueError, match="'plain' given twice; name them with NAME=PATH"):
        parse_named_paths([str(plain), f"plain={guarded}"])
