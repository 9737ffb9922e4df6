"""Peer strategies (AMG, delayed / opposite CFG, classifier guidance, ChainGuard) and the SIDE extraction attack.

Each strategy must change sampling only under its own trigger, and leave it bit-for-bit plain otherwise. Models
are tiny and built here: random-init UNets (plain equality needs no training), an analytic model whose data are a
Gaussian around one training image (a sampler that targets that image), and the exact minimiser of the training
loss on a handful of images (a fully overfit memoriser) for SIDE.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cpsample.attacks.side import SideConfig, count_extractions, side_attack
from cpsample.evaluation import NEAR_COPY_THRESHOLDS, PixelFeatures, nearest_by_cosine, replication_share
from cpsample.models import TimeClassifier, build_denoiser, build_noise_schedule, save_denoiser
from cpsample.sampling.guards import (
    AMGGuard,
    ChainGuard,
    ClassifierGuidanceGuard,
    CPSampleGuard,
    DelayedCFGGuard,
    Guard,
    NoGuard,
    OppositeGuidanceGuard,
)
from cpsample.sampling.guards.delayed_cfg import transition_steps
from cpsample.sampling.sampler import cfg_denoiser, make_scheduler, sample_batch, unet_denoiser

STEPS, N, SIZE = 10, 4, 16
CPU = torch.device("cpu")
SCHEDULE = build_noise_schedule()
ABAR = SCHEDULE.alphas_cumprod.float()


def _sample(denoise, guard, n=N, seed=0, steps=STEPS):
    scheduler = make_scheduler("ddim", SCHEDULE.config, steps)
    return sample_batch(denoise, scheduler, (n, 1, SIZE, SIZE), guard, torch.Generator().manual_seed(seed), CPU)


@pytest.fixture(scope="module")
def training(mnist16):
    return torch.from_numpy(mnist16.images[:8].copy())


@pytest.fixture(scope="module")
def tiny_unet():
    torch.manual_seed(0)
    return build_denoiser(SIZE, 1, (16, 32, 32)).eval()


@pytest.fixture(scope="module")
def tiny_conditional_unet():
    torch.manual_seed(1)
    return build_denoiser(SIZE, 1, (16, 32, 32), num_class_embeds=4).eval()  # classes 0-2, null label 3


@pytest.fixture(scope="module")
def tiny_classifier():
    torch.manual_seed(2)
    return TimeClassifier(sample_size=SIZE, in_channels=1, block_out_channels=(16, 16, 16), num_labels=3).eval()


def gaussian_target_denoiser(target: torch.Tensor, spread: float = 0.2):
    """Exact eps of a model whose data are N(target, spread^2 I): every trajectory is drawn to `target`."""

    def denoise(x, t):
        abar = ABAR[t].view(-1, 1, 1, 1)
        gain = abar.sqrt() * spread**2 / (abar * spread**2 + 1 - abar)
        x0 = target + gain * (x - abar.sqrt() * target)  # posterior mean E[x0 | x_t]
        return (x - abar.sqrt() * x0) / (1 - abar).sqrt()

    return denoise


def memoriser_denoiser(images: torch.Tensor):
    """The exact minimiser of the eps loss on `images`: a fully overfit model that only reproduces them."""
    flat = images.flatten(1)

    def denoise(x, t):
        abar = ABAR[t].view(-1, 1, 1)
        squared = ((x.flatten(1)[:, None, :] - abar.sqrt() * flat[None]) ** 2).sum(-1)  # (batch, images)
        weights = torch.softmax(-squared / (2 * (1 - abar[:, :, 0])), dim=1)
        x0 = (weights @ flat).view_as(x)  # E[x0 | x_t] under the empirical distribution
        abar = abar.view(-1, 1, 1, 1)
        return (x - abar.sqrt() * x0) / (1 - abar).sqrt()

    return denoise


def _cosine_to(images: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    features = PixelFeatures()
    return nearest_by_cosine(features(images), features(target[None]), progress=False).nearest_score


# ------------------------------------------------------------------------------------------------------- AMG


def test_amg_that_never_fires_gives_plain_samples_exactly(tiny_unet, training):
    plain, _ = _sample(unet_denoiser(tiny_unet), NoGuard())
    guarded, trace = _sample(unet_denoiser(tiny_unet), AMGGuard(training.numpy(), threshold=1.0))
    assert torch.equal(plain, guarded)
    assert trace["fired"].sum() == 0
    assert trace["similarity"].shape == (STEPS, N) and np.all(trace["similarity"] <= 1.0 + 1e-5)


def test_amg_that_never_fires_leaves_cfg_sampling_exactly_plain(tiny_conditional_unet, training):
    cfg = cfg_denoiser(tiny_conditional_unet, torch.tensor([0, 1, 2, 0]), 3.0, null_label=3)
    plain, _ = _sample(cfg, NoGuard())
    guarded, trace = _sample(cfg, AMGGuard(training.numpy(), threshold=1.0, spec_scale=100.0))
    assert torch.equal(plain, guarded) and trace["fired"].sum() == 0


@pytest.mark.parametrize("through_denoiser", [False, True])
def test_amg_fires_on_a_training_image_target_and_lowers_similarity(training, through_denoiser):
    target = training[0]
    denoise = gaussian_target_denoiser(target)
    plain, _ = _sample(denoise, NoGuard())
    guard = AMGGuard(training.numpy(), threshold=0.9, sim_scale=3000.0, denoiser=denoise if through_denoiser else None)
    guarded, trace = _sample(denoise, guard)
    assert trace["fired"].any(axis=0).all(), "every trajectory heads for the training image, so AMG must fire on each"
    assert (trace["neighbour"][trace["fired"].astype(bool)] == 0).all(), "the neighbour found is the target image"
    before, after = _cosine_to(plain, target), _cosine_to(guarded, target)
    assert before.min() > 0.95, "without AMG the samples are near-copies of the target"
    assert np.all(after < before - 0.01)


def test_amg_despecifies_cfg_only_for_samples_near_a_training_image(training):
    guard = AMGGuard(training.numpy(), threshold=0.9, sim_scale=0.0, spec_scale=100.0, spec_floor=1.0)
    t = torch.full((2,), 300)
    abar = ABAR[300]
    generator = torch.Generator().manual_seed(0)
    eps_cond, eps_uncond = (
        torch.randn(2, 1, SIZE, SIZE, generator=generator),
        torch.randn(2, 1, SIZE, SIZE, generator=generator),
    )
    guard.begin_step(0, 1)
    eps = guard.combine(eps_cond, eps_uncond, 5.0, t)
    # Sample 0's predicted x0 is training image 3; sample 1's is pure noise, like no training image.
    x0 = torch.stack([training[3], torch.randn(1, SIZE, SIZE, generator=generator)])
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    out = guard.adjust(eps, x_t, t, abar)
    assert guard.trace["fired"][0].tolist() == [True, False]
    torch.testing.assert_close(out[0], eps_uncond[0] + 1.0 * (eps_cond[0] - eps_uncond[0]))  # CFG scale 5 -> floor 1
    assert torch.equal(out[1], eps[1])


def test_amg_rejects_bad_input(training):
    with pytest.raises(ValueError, match="unknown AMG features"):
        AMGGuard(training.numpy(), features="dino")
    with pytest.raises(ValueError, match="non-empty"):
        AMGGuard(np.zeros((0, 1, SIZE, SIZE), np.float32))


# ------------------------------------------------------------------------------------------- delayed CFG


def _cfg(unet, labels=(0, 1, 2, 0), scale=3.0):
    return cfg_denoiser(unet, torch.tensor(labels), scale, null_label=3)


@pytest.mark.parametrize(
    "guard",
    [
        DelayedCFGGuard(transition_fraction=0.0),
        DelayedCFGGuard(transition_t=1000),
        OppositeGuidanceGuard(transition_fraction=0.0),
    ],
)
def test_delayed_cfg_with_transition_at_step_zero_is_plain_cfg(tiny_conditional_unet, guard):
    plain, _ = _sample(_cfg(tiny_conditional_unet), NoGuard())
    delayed, trace = _sample(_cfg(tiny_conditional_unet), guard)
    assert torch.equal(plain, delayed)
    assert trace["early"].sum() == 0


def test_delayed_cfg_changes_eps_only_before_the_transition():
    """Same inputs at every step: the mix is unconditional for the first 4 of 10 steps, then exactly plain CFG."""
    generator = torch.Generator().manual_seed(0)
    eps_cond, eps_uncond = (
        torch.randn(3, 1, SIZE, SIZE, generator=generator),
        torch.randn(3, 1, SIZE, SIZE, generator=generator),
    )
    plain = NoGuard().combine(eps_cond, eps_uncond, 3.0, None)
    guard = DelayedCFGGuard(transition_fraction=0.4)
    timesteps = make_scheduler("ddim", SCHEDULE.config, STEPS).timesteps
    for index, t in enumerate(timesteps):
        guard.begin_step(index, STEPS)
        mixed = guard.combine(eps_cond, eps_uncond, 3.0, torch.full((3,), int(t)))
        assert torch.equal(mixed, eps_uncond if index < 4 else plain), f"step {index}"
    assert transition_steps({k: np.stack(v) for k, v in guard.trace.items()}).tolist() == [4, 4, 4]


def test_delayed_cfg_schedules_by_noise_level_and_never_switches_back(tiny_conditional_unet):
    plain, _ = _sample(_cfg(tiny_conditional_unet), NoGuard())
    delayed, trace = _sample(_cfg(tiny_conditional_unet), DelayedCFGGuard(transition_t=500))
    timesteps = make_scheduler("ddim", SCHEDULE.config, STEPS).timesteps.numpy()
    assert (trace["early"].all(axis=1) == (timesteps > 500)).all()
    assert np.all(np.diff(trace["early"].astype(int), axis=0) <= 0), "once switched to CFG, a sample stays there"
    assert not torch.equal(plain, delayed)
    assert np.array_equal(
        trace["scale"][~trace["early"].astype(bool)], np.full((~trace["early"].astype(bool)).sum(), 3.0)
    )


def test_opposite_guidance_reverses_the_condition_early():
    eps_cond, eps_uncond = torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    guard = OppositeGuidanceGuard(transition_t=500, early_scale=-2.0)
    guard.begin_step(0, 2)
    assert torch.equal(guard.combine(eps_cond, eps_uncond, 7.5, torch.tensor([900])), torch.full((1, 1, 2, 2), -2.0))
    guard.begin_step(1, 2)
    assert torch.equal(guard.combine(eps_cond, eps_uncond, 7.5, torch.tensor([100])), torch.full((1, 1, 2, 2), 7.5))
    with pytest.raises(ValueError, match="negative"):
        OppositeGuidanceGuard(early_scale=0.0)


def test_dynamic_transition_follows_the_first_local_minimum_of_the_cfg_gap():
    gaps = np.array(
        [[5.0, 5.0], [4.0, 6.0], [3.0, 7.0], [3.5, 6.0], [2.0, 5.0], [1.0, 6.0]]
    )  # sample 0: minimum at step 2
    guard = DelayedCFGGuard(dynamic=True)
    for index, gap in enumerate(gaps):
        guard.begin_step(index, len(gaps))
        eps_cond = torch.tensor(gap, dtype=torch.float32).view(2, 1, 1, 1)
        guard.combine(eps_cond, torch.zeros(2, 1, 1, 1), 3.0, torch.tensor([999 - index] * 2))
    trace = {k: np.stack(v) for k, v in guard.trace.items()}
    # Sample 0 turns up at step 3 (after its minimum at 2); sample 1 rises first and turns up at step 5 (minimum at 4).
    assert transition_steps(trace).tolist() == [3, 5]
    np.testing.assert_allclose(trace["eps_gap"], gaps)


def test_delayed_cfg_refuses_a_model_without_cfg(tiny_unet):
    with pytest.raises(ValueError, match="class-conditional"):
        _sample(unet_denoiser(tiny_unet), DelayedCFGGuard())
    with pytest.raises(ValueError, match="not both"):
        DelayedCFGGuard(transition_t=500, transition_fraction=0.5)


# --------------------------------------------------------------------------- classifier guidance and chain


def test_classifier_guidance_with_scale_zero_is_plain(tiny_unet, tiny_classifier):
    plain, _ = _sample(unet_denoiser(tiny_unet), NoGuard())
    zero, trace = _sample(unet_denoiser(tiny_unet), ClassifierGuidanceGuard(tiny_classifier, target=1, scale=0.0))
    guided, _ = _sample(
        unet_denoiser(tiny_unet), ClassifierGuidanceGuard(tiny_classifier, target=[0, 1, 2, 0], scale=50.0)
    )
    assert torch.equal(plain, zero)
    assert trace["p_target"].shape == (STEPS, N)
    assert not torch.equal(plain, guided)
    with pytest.raises(ValueError, match="does not exist"):
        ClassifierGuidanceGuard(tiny_classifier, target=3)


class _Add(Guard):
    name = "add"

    def adjust(self, eps, x_t, t, abar_t):
        self.record(mean=eps.mean(dim=(1, 2, 3)))
        return eps + 1.0


class _Double(Guard):
    name = "double"

    def adjust(self, eps, x_t, t, abar_t):
        return eps * 2.0


class _Mixer(Guard):
    name = "mixer"
    mixes_cfg = True

    def combine(self, eps_cond, eps_uncond, guidance_scale, t):
        return eps_cond * 0.0 + 42.0


def test_chain_applies_guards_in_order_and_prefixes_traces():
    eps = torch.zeros(2, 1, 2, 2)
    args = (eps, eps, torch.tensor([5, 5]), torch.tensor(0.5))
    first, second = ChainGuard([_Add(), _Double()]), ChainGuard([_Double(), _Add()])
    assert torch.equal(first.adjust(*args[:1], *args[1:]), torch.full_like(eps, 2.0))  # (0 + 1) * 2
    assert torch.equal(second.adjust(*args[:1], *args[1:]), torch.full_like(eps, 1.0))  # 0 * 2 + 1
    assert list(first.trace) == ["add.mean"]
    twice = ChainGuard([_Add(), _Add()])
    twice.adjust(*args[:1], *args[1:])
    assert sorted(twice.trace) == ["0:add.mean", "1:add.mean"]
    twice.reset()
    assert twice.trace == {}
    assert first.settings()["members"] == [{"guard": "add"}, {"guard": "double"}]


def test_chain_takes_cfg_mixing_from_its_one_mixer():
    halves = (torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), 3.0, torch.tensor([10]))
    assert torch.equal(ChainGuard([_Add(), _Mixer()]).combine(*halves), torch.full((1, 1, 2, 2), 42.0))
    assert torch.equal(ChainGuard([_Add()]).combine(*halves), torch.full((1, 1, 2, 2), 3.0))
    with pytest.raises(ValueError, match="only one guard"):
        ChainGuard([_Mixer(), DelayedCFGGuard()])


def test_defence_adjusts_after_the_attacker_in_a_chain(tiny_unet, tiny_classifier):
    """A guard placed after the attacker (where the defence goes) sees the attacker's eps, not the raw one."""
    seen: dict[str, list[torch.Tensor]] = {"before": [], "after": []}

    class Spy(Guard):
        def __init__(self, where):
            super().__init__()
            self.name, self.where = f"spy-{where}", where

        def adjust(self, eps, x_t, t, abar_t):
            seen[self.where].append(eps.clone())
            return eps

    attacker = ClassifierGuidanceGuard(tiny_classifier, target=1, scale=5.0)
    _, trace = _sample(unet_denoiser(tiny_unet), ChainGuard([Spy("before"), attacker, Spy("after")]), n=2, steps=2)
    assert len(seen["after"]) == 2
    for raw, guided in zip(seen["before"], seen["after"]):
        assert not torch.allclose(raw, guided)
    assert set(trace) == {"classifier-guidance.p_target"}


# -------------------------------------------------------------------------------------------------- SIDE


def _side_config(**overrides):
    settings = dict(
        samples=24,
        clusters=3,
        min_cohesion=0.5,
        attack_steps=8,
        train_steps=30,
        train_batch_size=16,
        classifier_channels=(16, 16, 16),
        attack_scale=5.0,
        per_class=3,
        batch_size=32,
        seed=0,
    )
    return SideConfig(**{**settings, **overrides})


def test_side_extracts_from_an_overfit_model_and_counts_like_evaluation(training, tmp_path):
    members = training[:5]
    result = side_attack(
        memoriser_denoiser(members),
        SCHEDULE,
        (1, SIZE, SIZE),
        members.numpy(),
        _side_config(),
        work_dir=tmp_path,
        progress=False,
    )
    attack = result.attack
    assert attack["n"] == 3 * result.clusters["kept"] and result.clusters["kept"] >= 1
    assert attack["distinct_extracted"] >= 1, "a model that only reproduces its training images must give some away"
    # Same criterion as `cpsample evaluate --features pixels`: share of cosine similarities above the threshold.
    features = PixelFeatures()
    found = nearest_by_cosine(features(result.attack_images), features(members), progress=False)
    assert replication_share(found.nearest_score, attack["threshold"])["count"] == attack["near_copies"]
    copies = found.nearest_score > attack["threshold"]
    assert attack["extracted"] == sorted(set(found.nearest_index[copies].tolist()))
    assert (tmp_path / "surrogate_classifier" / "classifier" / "config.json").exists()
    assert json.dumps(result.to_dict())  # result.json material is plain JSON


def test_side_applies_the_defence_to_pool_and_attack(training):
    members = training[:5]

    class CountingDefence(Guard):
        name = "counting"
        calls = 0

        def adjust(self, eps, x_t, t, abar_t):
            CountingDefence.calls += len(eps)
            return eps

    config = _side_config(samples=12, clusters=2, min_cohesion=-1.0, train_steps=5, per_class=2, attack_steps=4)
    result = side_attack(
        memoriser_denoiser(members),
        SCHEDULE,
        (1, SIZE, SIZE),
        members.numpy(),
        config,
        defence=CountingDefence(),
        progress=False,
    )
    assert CountingDefence.calls == (12 + 2 * result.clusters["kept"]) * 4
    assert result.defence == {"guard": "counting"}


def test_side_against_cpsample_that_never_fires_matches_the_plain_attack(training):
    members = training[:5]
    config = _side_config(samples=12, clusters=2, min_cohesion=-1.0, train_steps=5, per_class=2, attack_steps=4)
    never = CPSampleGuard(TimeClassifier(sample_size=SIZE, block_out_channels=(16, 16, 16)), alpha=0.0)
    plain = side_attack(
        memoriser_denoiser(members), SCHEDULE, (1, SIZE, SIZE), members.numpy(), config, progress=False
    )
    defended = side_attack(
        memoriser_denoiser(members), SCHEDULE, (1, SIZE, SIZE), members.numpy(), config, defence=never, progress=False
    )
    assert torch.equal(plain.attack_images, defended.attack_images)
    assert plain.attack == defended.attack and defended.defence["guard"] == "cpsample"


def test_the_surrogate_classifier_learns_every_surrogate_class():
    """SIDE's K surrogate classes are all classes to the loss: label 2 is a class like 0 and 1 (a binary classifier's
    negatives are marked apart), so the loss is plain cross-entropy over the K labels."""
    from cpsample.training.classifier import noisy_ce_loss

    torch.manual_seed(0)
    model = TimeClassifier(sample_size=SIZE, block_out_channels=(16, 16, 16), num_labels=4)
    images, labels = torch.randn(8, 1, SIZE, SIZE), torch.tensor([0, 1, 2, 3, 2, 3, 1, 0])
    loss, _ = noisy_ce_loss(SCHEDULE)(model, images, labels, torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(images.shape, generator=generator)
    t = torch.randint(0, SCHEDULE.config.num_train_timesteps, (8,), generator=generator)
    expected = torch.nn.functional.cross_entropy(model(SCHEDULE.add_noise(images, noise, t), t), labels)
    assert torch.allclose(loss, expected)


def test_count_extractions_matches_the_threshold_rule(training):
    copies = torch.cat([training[:2], training[:1], torch.zeros(1, 1, SIZE, SIZE)])
    extraction = count_extractions(copies, training.numpy(), threshold=0.97)
    assert extraction.summary()["near_copies"] == 3 and extraction.extracted == [0, 1]


def test_side_cli_on_a_tiny_saved_model(tmp_path, tiny_unet):
    from cpsample.cli.attack import attack_app
    from cpsample.data import make_split
    from cpsample.provenance import write_record

    model_dir = tmp_path / "model"
    save_denoiser(model_dir, tiny_unet, SCHEDULE)
    make_split(5000, 10, 0, "mnist").save(model_dir / "split.json")
    write_record(model_dir, "train-denoiser", {"data": "mnist", "image_size": SIZE})
    app = attack_app
    runner = CliRunner()
    out = tmp_path / "side"
    common = [
        "side",
        "--model",
        str(model_dir),
        "--out",
        str(out),
        "--n-samples",
        "8",
        "--clusters",
        "2",
        "--min-cohesion",
        "-1",
        "--train-steps",
        "3",
        "--attack-steps",
        "3",
        "--per-class",
        "2",
    ]
    result = runner.invoke(app, common)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "cpsample.json").read_text())
    assert record["command"] == "attack side" and record["settings"]["clusters"] == 2
    assert record["settings"]["threshold"] == NEAR_COPY_THRESHOLDS["pixels"]  # left out: the yardstick's default
    assert {"pool", "attack", "clusters", "classifier"} <= set(json.loads((out / "result.json").read_text()))
    assert all((out / name).exists() for name in ("pool.png", "attack.png", "pairs.png"))
    # 8 pool samples in 2 clusters, both kept (min cohesion -1), 2 attack images each; the random-init model's samples
    # are nowhere near the 10 MNIST members, and each count agrees with its similarities and per-class rows
    result = json.loads((out / "result.json").read_text())
    clusters = result["clusters"]
    assert (clusters["k"], clusters["kept"], sum(clusters["sizes"]), result["pool"]["n"]) == (2, 2, 8, 8)
    assert result["attack"]["n"] == 2 * clusters["kept"] and len(result["per_class"]) == clusters["kept"]
    for part in ("pool", "attack"):
        summary = result[part]
        assert summary["similarity_max"] < summary["threshold"] and summary["near_copies"] == 0, part
        assert summary["distinct_extracted"] == len(summary["extracted"]) == 0, part
    assert sum(row["near_copies"] for row in result["per_class"]) == result["attack"]["near_copies"]
    assert result["classifier"]["steps"] == 3 and result["classifier"]["num_labels"] == clusters["kept"]
    from PIL import Image

    for name in ("pool.png", "attack.png", "pairs.png"):
        with Image.open(out / name) as picture:
            assert picture.format == "PNG" and np.asarray(picture.convert("L")).std() > 5, name
    bad = runner.invoke(app, [*common, "--guard", "ambient", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "unknown defence" in bad.output
