"""The sample-only membership attack on the bundled model and real MNIST: copies of the members give them all away,
the non-members' own images point the other way, unseen images and shuffled labels give chance, and the plain
sampler's samples (the bundled model memorises its 200 training digits) reveal membership without any weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from cpsample.attacks import SampleNNAttack, plot_sample_attacks, run_sample_attack
from cpsample.attacks.mia import pick_images
from cpsample.data import DataError
from cpsample.data.samples import read_sample_sets
from cpsample.evaluation.nearcopy import find_near_copies
from cpsample.models.bundle import resolve_model_dir, training_data


@pytest.fixture(scope="module")
def bundled():
    """The bundled model's 200 members and three disjoint random sets of 200 held-out digits."""
    dataset, split = training_data(resolve_model_dir("bundled", "denoiser"))
    held_out = np.random.default_rng(7).choice(split.nonmembers, 600, replace=False)
    sets = [dataset.images[held_out[i * 200 : (i + 1) * 200]] for i in range(3)]
    return dataset, split, dataset.images[split.members], sets


@pytest.fixture(scope="module")
def plain_samples():
    """100 plain DDIM samples of the bundled model, 10 steps (about 5 s on one core)."""
    from cpsample.sampling.pipeline import generate

    return generate(guard="none", n=100, steps=10, seed=0, progress=False).images.numpy()


def test_exact_copies_of_the_members_give_every_member_away(bundled):
    _, _, members, (nonmembers, _, _) = bundled
    result = SampleNNAttack(members, nonmembers)(members[::-1].copy())  # order of the samples does not matter
    assert result.auc == 1.0 and result.stats.tpr_at_1pct_fpr == 1.0
    assert result.member_copied_share == 1.0 and result.nonmember_copied_share < 0.05
    assert np.all(result.member_scores < 1e-5) and result.mann_whitney_p < 1e-50
    assert result.stats.member_mean < result.stats.nonmember_mean


def test_samples_that_are_the_non_members_point_the_other_way(bundled):
    _, _, members, (nonmembers, _, _) = bundled
    result = SampleNNAttack(members, nonmembers)(nonmembers)
    assert result.auc < 0.05 and result.stats.tpr_at_1pct_fpr < 0.05
    assert result.mann_whitney_p > 0.99  # the one-sided test does not call that a leak


def test_unseen_images_as_samples_give_chance(bundled):
    _, _, members, (nonmembers, unseen, _) = bundled
    result = SampleNNAttack(members, nonmembers)(unseen)
    assert 0.4 < result.auc < 0.6 and result.mann_whitney_p > 0.01


def test_plain_samples_of_the_memorising_model_leak_membership(bundled, plain_samples):
    _, _, members, (nonmembers, _, _) = bundled
    result = SampleNNAttack(members, nonmembers)(plain_samples)
    assert result.n_samples == 100
    assert result.auc > 0.6 and result.mann_whitney_p < 1e-4 and result.stats.z > 3
    assert result.stats.tpr_at_1pct_fpr > 0.05  # some members have a near-exact copy among 100 samples
    assert result.member_copied_share > result.nonmember_copied_share


def test_shuffled_membership_labels_give_chance(bundled, plain_samples):
    # Same samples, but each "member" set is a random half of real members and held-out digits: nothing to find.
    _, _, members, (nonmembers, _, _) = bundled
    pool = np.concatenate([members, nonmembers])
    order = np.random.default_rng(3).permutation(len(pool))
    result = SampleNNAttack(pool[order[:200]], pool[order[200:]])(plain_samples)
    assert 0.4 < result.auc < 0.6


def test_scores_are_the_near_copy_yardsticks_distances_and_auc_matches_u(bundled, plain_samples):
    """One code path: the score is 1 - the cosine similarity find_near_copies reports (candidates as queries), and
    AUC = 1 - U / (n_members n_nonmembers) for the members' Mann-Whitney U."""
    _, _, members, (nonmembers, _, _) = bundled
    result = SampleNNAttack(members, nonmembers)(plain_samples)
    similarity = find_near_copies(members, plain_samples).similarity
    np.testing.assert_allclose(result.member_scores, 1.0 - similarity, atol=1e-6)
    assert result.auc == pytest.approx(1.0 - result.mann_whitney_u / (200 * 200))
    assert result.member_copied_share == pytest.approx(float((similarity > 0.98).mean()))


def test_run_sample_attack_takes_the_same_candidates_as_run_mia(bundled, plain_samples):
    dataset, split, _, _ = bundled
    results = run_sample_attack(
        {"plain": plain_samples, "copies": dataset.images[split.members[:50]]}, n_members=60, n_nonmembers=90, seed=5
    )
    member_idx, nonmember_idx = pick_images(split.members, split.nonmembers, 60, 90, 5)  # what run_mia attacks
    for result in results.values():
        assert (
            result.settings["member_indices"] == member_idx and result.settings["nonmember_indices"] == nonmember_idx
        )
        assert (result.n_members, result.n_nonmembers) == (60, 90)
    # the 50 copied members that were drawn as candidates sit at distance 0
    copied = np.isin(member_idx, split.members[:50])
    assert np.all(results["copies"].member_scores[copied] < 1e-5)
    assert np.all(results["copies"].member_scores[~copied] > 1e-3)


def test_clear_errors(bundled):
    _, _, members, (nonmembers, _, _) = bundled
    attack = SampleNNAttack(members, nonmembers)
    with pytest.raises(DataError, match="samples have shape"):
        attack(np.zeros((4, 1, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="at least 2 members"):
        SampleNNAttack(members[:1], nonmembers)
    with pytest.raises(ValueError, match="at least one set"):
        run_sample_attack({})


def test_roc_figure_is_written(tmp_path, bundled):
    _, _, members, (nonmembers, unseen, _) = bundled
    attack = SampleNNAttack(members[:50], nonmembers[:50])
    path = plot_sample_attacks({"copies": attack(members[:50]), "unseen": attack(unseen)}, tmp_path / "roc.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _assert_drawn_figure(path)


def _assert_drawn_figure(path):
    """A real picture: a PNG that opens, of a plot's size, with lines on it (not one flat colour)."""
    from PIL import Image

    with Image.open(path) as picture:
        assert picture.format == "PNG" and min(picture.size) > 100
        grey = np.asarray(picture.convert("L")).astype(int)
    assert grey.std() > 5 and (grey < 128).mean() > 0.001


# --- CLI -------------------------------------------------------------------------------------------------------------


def test_cli_attacks_every_set_of_a_demo_style_npz_and_named_files(tmp_path, bundled, plain_samples, attack_app):
    dataset, split, members, (_, unseen, _) = bundled
    np.savez(tmp_path / "demo_samples.npz", plain=plain_samples, copies=members[:40])  # as the demo writes it
    (tmp_path / "other").mkdir()
    np.savez(tmp_path / "other" / "samples.npz", images=unseen[:30])  # as `cpsample sample` writes it
    out = tmp_path / "attack"
    result = CliRunner().invoke(
        attack_app,
        [
            "attack",
            "sample-nn",
            "--model",
            "bundled",
            "--samples",
            str(tmp_path / "demo_samples.npz"),
            "--samples",
            str(tmp_path / "other" / "samples.npz"),
            "--samples",
            f"unseen={tmp_path / 'other' / 'samples.npz'}",
            "--out",
            str(out),
            "--members",
            "100",
            "--seed",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "result.json").read_text())
    assert set(summary) == {"plain", "copies", "other", "unseen"}
    assert summary["plain"]["n_samples"] == 100 and summary["copies"]["n_samples"] == 40
    assert summary["other"]["n_members"] == 100 and len(summary["other"]["nonmember_scores"]) == 100
    assert summary["plain"]["threat_model"].startswith("black box")
    assert summary["other"]["stats"]["auc"] == summary["unseen"]["stats"]["auc"]
    # the copied members that were drawn as candidates, and only they, sit at distance 0; they lead the ROC
    drawn_copies = set(summary["copies"]["settings"]["member_indices"]) & set(split.members[:40])
    assert int((np.array(summary["copies"]["member_scores"]) < 1e-5).sum()) == len(drawn_copies) > 5
    assert summary["copies"]["stats"]["tpr_at_1pct_fpr"] >= len(drawn_copies) / 100
    record = json.loads((out / "cpsample.json").read_text())
    assert record["command"] == "attack sample-nn" and record["settings"]["seed"] == 2
    assert (out / "roc.png").stat().st_size > 0
    _assert_drawn_figure(out / "roc.png")
    # each AUC is that of its saved scores (a smaller distance flags a member); the scores are the candidates'
    # distances to the nearest image of the set, recomputed here from the files the command read
    for name, images in (("plain", plain_samples), ("copies", members[:40]), ("other", unseen[:30])):
        result_of = summary[name]
        scores = np.r_[result_of["member_scores"], result_of["nonmember_scores"]]
        auc = roc_auc_score([1] * 100 + [0] * 100, -scores)
        assert result_of["stats"]["auc"] == pytest.approx(auc), name
        drawn = result_of["settings"]
        candidates = dataset.images[drawn["member_indices"] + drawn["nonmember_indices"]]
        np.testing.assert_allclose(scores, 1.0 - find_near_copies(candidates, images).similarity, atol=1e-5)
    # plain samples of the memorising model leak membership (measured 0.71); held-out images as samples do not
    assert summary["plain"]["stats"]["auc"] > 0.6 and 0.3 < summary["other"]["stats"]["auc"] < 0.7, (
        summary["plain"]["stats"]["auc"],
        summary["other"]["stats"]["auc"],
    )
    assert "sample-only membership inference" in " ".join(result.output.split())


def test_cli_rejects_bad_input_clearly(tmp_path, bundled, attack_app):
    _, _, members, _ = bundled
    np.savez(tmp_path / "small.npz", images=np.zeros((3, 1, 8, 8), dtype=np.float32))
    np.savez(tmp_path / "samples.npz", images=members[:5])
    base = ["attack", "sample-nn", "--model", "bundled", "--out", str(tmp_path / "out")]
    for arguments, message in (
        (base + ["--samples", str(tmp_path / "nope.npz")], "does not exist"),
        (base + ["--samples", str(tmp_path / "small.npz")], "samples have shape"),
        (
            base + ["--samples", str(tmp_path / "samples.npz"), "--samples", str(tmp_path / "samples.npz")],
            "two sets are named",
        ),
        (base + ["--samples", str(tmp_path / "samples.npz"), "--members", "999"], "split has only 200"),
    ):
        result = CliRunner().invoke(attack_app, arguments)
        assert result.exit_code == 2, result.output
        assert message in " ".join(result.output.split())
        assert "Traceback" not in result.output


def test_read_sample_sets_names_files_by_folder(tmp_path, bundled):
    _, _, members, _ = bundled
    (tmp_path / "cpsample").mkdir()
    np.savez(tmp_path / "cpsample" / "samples.npz", images=members[:3])
    np.savez(tmp_path / "mixed.npz", plain=members[:2], rejection=members[2:5])
    sets = read_sample_sets([str(tmp_path / "cpsample" / "samples.npz"), f"demo={tmp_path / 'mixed.npz'}"])
    assert {name: len(images) for name, images in sets.items()} == {
        "cpsample": 3,
        "demo/plain": 2,
        "demo/rejection": 3,
    }
