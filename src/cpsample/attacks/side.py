"""SIDE (Surrogate condItional Data Extraction, Chen et al. 2024): extract training images from an unconditional model.

An unconditional model's samples only rarely land on a training image; a condition narrows the distribution to
one mode and makes copies far more likely. SIDE builds that condition from the model itself:
1. sample a pool from the target sampler (the deployed one: plain or CPSample-protected);
2. cluster the pool (k-means on unit-normalised features) and keep cohesive clusters as surrogate classes;
3. train a time-dependent classifier p(k | x_t, t) on noised pool images (CPSample's classifier loss, K labels);
4. sample again with classifier guidance towards each surrogate class, eps - lambda sqrt(1 - abar) grad log p(k | x_t).
   Against a defended sampler the attacker's guidance comes first and the defence's `adjust` last (ChainGuard).
Extraction is counted with the evaluation's near-copy yardstick (`find_near_copies`): cosine similarity of
pixel-centred features to the nearest training image above a threshold (exact search). Reported: AMS (share
of generations that are near-copies) and UMS (distinct training images matched / training set size), for the guided
attack, for the
unguided pool it started from, and for as many pool images as the attack drew (the same sampling budget).

Cohesion of a cluster here is the mean cosine similarity of its members to their (normalised) centroid.

A text-to-image pipeline is attacked as someone without its captions would: through its empty prompt (the branch
classifier-free guidance trains), clustering the decoded pool and guiding in latent space.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from cpsample.attacks.settings import PAPER_COHESION, SideConfig
from cpsample.evaluation.features import PixelFeatures
from cpsample.evaluation.nearcopy import NearCopies, find_near_copies
from cpsample.evaluation.neighbours import l2_normalise
from cpsample.models.classifier import TimeClassifier
from cpsample.models.pretrained import DiffusionModel
from cpsample.sampling.guards import ChainGuard, ClassifierGuidanceGuard, CPSampleGuard, Guard, NoGuard, is_plain
from cpsample.sampling.sampler import Denoise, batch_generator, make_scheduler, sample, sample_batch

GUIDED_NOISE_STREAM = 50_021  # the guided samples draw other noise than the pool (same seed)

# What SIDE attacks: plain sampling, or sampling defended by CPSample.
DEFENCES = (NoGuard.name, CPSampleGuard.name)


@dataclass
class Extraction(NearCopies):
    """Near-copies among a set of generated images, judged against the training images."""

    training_size: int

    @property
    def extracted(self) -> list[int]:
        """Distinct training images matched by at least one near-copy (sorted rows into the training set)."""
        return sorted(set(self.nearest[self.copies].tolist()))

    def summary(self) -> dict:
        n = len(self.similarity)
        return {
            "n": n,
            "near_copies": int(self.copies.sum()),
            "ams": float(self.copies.mean()) if n else 0.0,
            "distinct_extracted": len(self.extracted),
            "ums": len(self.extracted) / self.training_size,
            "extracted": self.extracted,
            "similarity_max": float(self.similarity.max()) if n else None,
            "similarity_median": float(np.median(self.similarity)) if n else None,
            "threshold": self.threshold,
        }


@dataclass
class Clusters:
    labels: np.ndarray  # (N,) k-means cluster of each pool image
    cohesion: np.ndarray  # (K,) mean cosine of members to their centroid
    sizes: np.ndarray  # (K,)
    kept: list[int]  # clusters used as surrogate classes; class c is cluster kept[c]

    def surrogate_labels(self) -> np.ndarray:
        """(N,) class index in 0..len(kept)-1, or -1 for pool images of dropped clusters."""
        mapping = np.full(len(self.sizes), -1, dtype=np.int64)
        mapping[self.kept] = np.arange(len(self.kept))
        return mapping[self.labels]


@dataclass
class SideResult:
    config: dict
    defence: dict
    clusters: dict
    classifier: dict
    pool: dict  # Extraction.summary() of the unguided pool
    attack: dict  # Extraction.summary() of the guided samples
    pool_same_budget: dict | None  # the first len(attack) pool images: unguided sampling at the attack's budget
    per_class: list[dict]
    seconds: float
    pool_images: torch.Tensor = field(repr=False)
    attack_images: torch.Tensor = field(repr=False)
    attack_targets: np.ndarray = field(repr=False)
    attack_extraction: Extraction = field(repr=False)
    training_images: np.ndarray = field(repr=False)  # what extraction was judged against

    def to_dict(self) -> dict:
        return {
            "config": self.config,
            "defence": self.defence,
            "clusters": self.clusters,
            "classifier": self.classifier,
            "pool": self.pool,
            "pool_same_budget": self.pool_same_budget,
            "attack": self.attack,
            "per_class": self.per_class,
            "seconds": round(self.seconds, 1),
        }


def count_extractions(images, training_images, threshold: float | None = None, progress: bool = False) -> Extraction:
    """The evaluation's near-copy yardstick on pixel-centred features (threshold None: its pixel default)."""
    found = find_near_copies(images, training_images, "pixels", threshold, progress)
    return Extraction(found.similarity, found.nearest, found.threshold, training_size=len(training_images))


def cluster_pool(
    images: torch.Tensor, clusters: int, min_cohesion: float = PAPER_COHESION, min_size: int = 2, seed: int = 0
) -> Clusters:
    """k-means on unit-normalised pixel-centred features (spherical k-means in effect); keep cohesive clusters."""
    from sklearn.cluster import KMeans

    features = l2_normalise(PixelFeatures()(images))
    labels = KMeans(n_clusters=clusters, n_init=4, random_state=seed).fit_predict(features)
    cohesion, sizes = np.zeros(clusters), np.bincount(labels, minlength=clusters)
    for k in range(clusters):
        members = features[labels == k]
        if len(members):
            centroid = l2_normalise(members.mean(axis=0, keepdims=True))[0]
            cohesion[k] = float((members @ centroid).mean())
    kept = [k for k in range(clusters) if sizes[k] >= min_size and cohesion[k] >= min_cohesion]
    return Clusters(labels=labels, cohesion=cohesion, sizes=sizes, kept=kept)


def train_surrogate_classifier(
    images: torch.Tensor, labels: np.ndarray, schedule, config: SideConfig, work_dir: Path, device: str = "cpu"
) -> tuple[TimeClassifier, dict]:
    """A TimeClassifier with one label per surrogate class, trained on noised images with CPSample's classifier
    loss."""
    from cpsample.training.classifier import noisy_ce_loss, per_timestep_report
    from cpsample.training.loop import TrainConfig, Trainer, make_accelerator

    channels = tuple(config.classifier_channels)
    num_labels = int(labels.max()) + 1
    torch.manual_seed(config.seed)
    model = TimeClassifier(
        sample_size=images.shape[-1],
        in_channels=images.shape[1],
        block_out_channels=channels,
        num_labels=num_labels,
        norm_num_groups=min(16, min(channels)),
    )
    train = TrainConfig(
        steps=config.train_steps,
        batch_size=config.train_batch_size,
        lr=config.lr,
        ema_decay=0.99,
        seed=config.seed,
        save_every=config.train_steps,
        log_every=max(1, config.train_steps // 10),
    )
    targets = torch.from_numpy(labels.astype(np.int64))
    accelerator = make_accelerator(cpu=torch.device(device).type == "cpu")
    trainer = Trainer(
        model, images.float(), noisy_ce_loss(schedule), train, work_dir, targets=targets, accelerator=accelerator
    )
    trainer.run_until(config.train_steps, description="SIDE surrogate classifier")
    classifier = trainer.ema_model().to(device)
    report = per_timestep_report(
        classifier, images.float(), targets, schedule, timesteps=(0, 250, 500, 750), seed=config.seed
    )
    return classifier, {
        "num_labels": num_labels,
        "steps": config.train_steps,
        "channels": list(channels),
        "final_loss": trainer.history[-1]["loss"] if trainer.history else None,
        "per_timestep": report,
    }


def guided_samples(
    denoise: Denoise,
    schedule,
    image_shape: tuple,
    classifier: TimeClassifier,
    classes: int,
    config: SideConfig,
    defence: Guard | None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> tuple[torch.Tensor, np.ndarray]:
    """per_class samples guided towards each surrogate class, batched across classes; defence applied last."""
    targets = np.repeat(np.arange(classes), config.per_class)
    attacker = ClassifierGuidanceGuard(classifier, target=0, scale=config.attack_scale)
    guard: Guard = attacker if defence is None else ChainGuard([attacker, defence])
    guard.to(torch.device(device), dtype)
    images = []
    starts = range(0, len(targets), config.batch_size)
    for batch, start in enumerate(tqdm(starts, desc="SIDE guided sampling", disable=not progress, unit="batch")):
        chunk = targets[start : start + config.batch_size]
        attacker.set_target(torch.from_numpy(chunk))
        generator = batch_generator(config.seed, batch, stream=GUIDED_NOISE_STREAM)  # not the pool's noise
        scheduler = make_scheduler(config.scheduler, schedule.config, config.attack_steps)
        out, _ = sample_batch(
            denoise, scheduler, (len(chunk), *image_shape), guard, generator, torch.device(device), dtype
        )
        images.append(out)
    return torch.cat(images), targets


def side_attack(
    denoise: Denoise,
    schedule,
    image_shape: tuple,
    training_images,
    config: SideConfig | None = None,
    defence: Guard | None = None,
    work_dir: Path | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> SideResult:
    """Run SIDE against `denoise` (optionally defended) and count extracted training images.

    denoise: the unconditional eps model as a callable (x_t, t) -> eps (e.g. `unet_denoiser(unet)`); schedule: its
    training noise schedule (a diffusers DDPMScheduler); training_images: (N, C, H, W) in [-1, 1], used only to count
    extractions. work_dir holds the surrogate classifier's training state (a temporary folder when None).
    decode: for a latent model, latents -> images in [-1, 1]; the pool is clustered and extraction counted on the
    decoded images, while the surrogate classifier learns the latents the attacker guides (None: x is the image).
    """
    config = config or SideConfig()
    config.check()
    started = time.time()
    defence_guard = defence or NoGuard()
    defence_guard.to(torch.device(device), dtype)

    def factory() -> object:
        return make_scheduler(config.scheduler, schedule.config, config.attack_steps)

    pool = sample(
        denoise,
        factory,
        config.samples,
        image_shape,
        guard=defence_guard,
        batch_size=config.batch_size,
        seed=config.seed,
        device=device,
        dtype=dtype,
        progress=progress,
    ).images
    pool_latents, pool = pool, _decoded(pool, decode)
    clusters = cluster_pool(pool, config.clusters, config.min_cohesion, config.min_cluster_size, config.seed)
    if not clusters.kept:
        raise ValueError(
            f"SIDE: no cluster has cohesion >= {config.min_cohesion} and at least {config.min_cluster_size} "
            f"images (best cohesion {clusters.cohesion.max():.3f}); lower --min-cohesion or draw more --samples"
        )
    labels = clusters.surrogate_labels()
    keep = labels >= 0
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(work_dir) / "surrogate_classifier" if work_dir is not None else Path(scratch)
        classifier, classifier_info = train_surrogate_classifier(
            pool_latents[torch.from_numpy(keep)], labels[keep], schedule, config, folder, device
        )
        if work_dir is not None:  # keep the attacker's classifier for inspection or reuse
            classifier.save_pretrained(folder / "classifier", safe_serialization=True)
    attack_images, targets = guided_samples(
        denoise, schedule, image_shape, classifier, len(clusters.kept), config, defence, device, dtype, progress
    )
    attack_images = _decoded(attack_images, decode)
    pool_extraction = count_extractions(pool, training_images, config.threshold)
    attack_extraction = count_extractions(attack_images, training_images, config.threshold)
    # The fair baseline: as many unguided samples as the attack drew (when the pool is large enough).
    same_budget = count_extractions(pool[: len(attack_images)], training_images, config.threshold).summary()
    return SideResult(
        config=asdict(config),
        defence=defence_guard.settings(),
        clusters={
            "k": config.clusters,
            "kept": len(clusters.kept),
            "kept_clusters": clusters.kept,
            "cohesion": np.round(clusters.cohesion, 4).tolist(),
            "sizes": clusters.sizes.tolist(),
            "pool_images_used": int(keep.sum()),
        },
        classifier=classifier_info,
        pool=pool_extraction.summary(),
        attack=attack_extraction.summary(),
        pool_same_budget=same_budget if len(pool) >= len(attack_images) else None,
        per_class=_per_class(attack_extraction, targets, clusters),
        seconds=time.time() - started,
        pool_images=pool,
        attack_images=attack_images,
        attack_targets=targets,
        attack_extraction=attack_extraction,
        training_images=np.asarray(training_images, dtype=np.float32),
    )


def _run_latent_side(
    folder: str, defence: str, classifier, knobs: dict, config, work_dir, device: str, progress: bool
) -> SideResult:
    """SIDE against a text-to-image pipeline by an attacker without its captions: the unconditional branch (the
    empty prompt) is sampled, clustered and guided in latent space; copies are counted on the decoded images."""
    from diffusers import DDPMScheduler

    from cpsample.models.bundle import model_members
    from cpsample.sampling.adapters import LatentAdapter
    from cpsample.sampling.adapters.latent import empty_prompt_denoiser

    members = model_members(folder)
    if members is None:
        raise ValueError(
            f"{folder}: SIDE counts the training images it extracts, and this pipeline does not say which they are "
            "(a `cpsample train-t2i` folder has a split.json); measure samples with `cpsample attack sample-nn`"
        )
    adapter = LatentAdapter.from_pretrained(folder, device)
    guard = None if is_plain(defence) else adapter.guard(CPSampleGuard.name, classifier, device, **knobs)
    schedule = DDPMScheduler.from_config(adapter.pipe.scheduler.config)  # the training schedule, for noising
    result = side_attack(
        empty_prompt_denoiser(adapter.pipe), schedule, adapter.sample_shape, members.images, config, guard,
        work_dir, device, progress=progress, decode=adapter.decode,
    )  # fmt: skip
    for summary in (result.pool, result.attack):
        summary["extracted_names"] = [members.names[row] for row in summary["extracted"]]
    return result


def _decoded(x: torch.Tensor, decode: Callable[[torch.Tensor], torch.Tensor] | None, batch: int = 100) -> torch.Tensor:
    """x as images: itself, or decoded in batches (a VAE on a whole pool at once needs memory for no gain)."""
    if decode is None:
        return x
    return torch.cat([decode(chunk) for chunk in x.split(batch)]).float().cpu()


def _per_class(extraction: Extraction, targets: np.ndarray, clusters: Clusters) -> list[dict]:
    rows = []
    for surrogate, cluster in enumerate(clusters.kept):
        mine = targets == surrogate
        copies = extraction.copies & mine
        rows.append(
            {
                "class": surrogate,
                "cluster": cluster,
                "cohesion": round(float(clusters.cohesion[cluster]), 4),
                "cluster_size": int(clusters.sizes[cluster]),
                "near_copies": int(copies.sum()),
                "extracted": sorted(set(extraction.nearest[copies].tolist())),
            }
        )
    return rows


def run_side(
    model: str | DiffusionModel = "bundled",
    defence: str = "none",
    classifier: str = "bundled",
    alpha: float | None = None,
    scale: float | None = None,
    tau: float | None = None,
    config: SideConfig | None = None,
    work_dir: Path | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> SideResult:
    """SIDE against an unconditional model ('bundled', a folder or a loaded DiffusionModel), or a `train-t2i`
    pipeline folder through its empty prompt; plain or CPSample-defended."""
    from cpsample.sampling.adapters import LatentAdapter, adapter_class
    from cpsample.sampling.pipeline import guard_for_model
    from cpsample.sampling.sampler import unet_denoiser

    if defence not in DEFENCES:
        raise ValueError(f"unknown defence {defence!r}; choose {' or '.join(DEFENCES)}")
    if not isinstance(model, DiffusionModel) and adapter_class(model) is LatentAdapter:
        knobs = {"alpha": alpha, "scale": scale, "tau": tau}
        return _run_latent_side(model, defence, classifier, knobs, config, work_dir, device, progress)
    model = model if isinstance(model, DiffusionModel) else DiffusionModel.from_pretrained(model, device)
    unet, schedule = model.unet, model.schedule
    if model.conditional:
        raise ValueError(f"{model.folder}: SIDE attacks unconditional models; this one is class-conditional")
    dataset, split = model.dataset, model.split
    members = model.members.images
    guard = (
        None
        if is_plain(defence)
        else guard_for_model(model, CPSampleGuard.name, classifier, device, alpha=alpha, scale=scale, tau=tau)
    )
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    result = side_attack(
        unet_denoiser(unet), schedule, shape, members, config, guard, work_dir, device, progress=progress
    )
    for summary in (result.pool, result.attack):  # rows into the members -> dataset names a person can look up
        summary["extracted_names"] = [dataset.names[split.members[row]] for row in summary["extracted"]]
    return result
