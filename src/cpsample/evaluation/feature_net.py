"""A small CNN classifier trained on a dataset's real class labels, used offline in place of Inception.

Its penultimate activations give the feature space for a Frechet distance (reported as "FD_<name>", e.g.
FD_digitnet, never "FID"), and its predictions check that class-conditional samples keep their class.
Two ship with cpsample: `digitnet` (16x16 grey MNIST digits) and `emojinet` (32x32 RGB Twemoji pictures, six
categories); 'bundled' picks the one whose channel count matches the images, and a net never runs on images with
another channel count (a digit net's FD on colour pictures would be a number about nothing).
Saved as config.json + model.safetensors (no pickle) beside a cpsample.json provenance record.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from cpsample.data import DataError, ImageSet, resize
from cpsample.data.sources import ASSETS_DIR
from cpsample.evaluation.inputs import ImagesLike, as_images
from cpsample.evaluation.settings import FeatureNetTraining

BUNDLED_FEATURE_NETS = {
    "digitnet": ASSETS_DIR / "mnist16" / "digitnet",
    "emojinet": ASSETS_DIR / "twemoji32" / "emojinet",
}
BUNDLED_FEATURE_NET = BUNDLED_FEATURE_NETS["digitnet"]
BUNDLED_BY_CHANNELS = {1: "digitnet", 3: "emojinet"}  # what 'bundled' means for grey and for RGB images
WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"


@dataclass
class FeatureNetConfig:
    name: str = "digitnet"
    in_channels: int = 1
    image_size: int = 16
    num_classes: int = 10
    widths: tuple[int, ...] = (32, 64, 128)
    feature_dim: int = 64


class DigitNet(nn.Module):
    """conv-BN-ReLU stages (max-pool between), global average pool, a feature layer, then the class head."""

    def __init__(self, config: FeatureNetConfig):
        super().__init__()
        stages, channels = [], config.in_channels
        for i, width in enumerate(config.widths):
            stages += [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            if i < len(config.widths) - 1:
                stages.append(nn.MaxPool2d(2))
            channels = width
        self.body = nn.Sequential(*stages, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embed = nn.Linear(channels, config.feature_dim)
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.2), nn.Linear(config.feature_dim, config.num_classes))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, logits). Features are taken before the ReLU: no dead (always-zero) dimensions, so the
        covariance in the Frechet distance stays full rank."""
        features = self.embed(self.body(x))
        return features, self.head(features)


_told_resized: set[tuple[str, int]] = set()  # (net, image size): said once per process
logger = logging.getLogger(__name__)


class FeatureNet:
    """A trained DigitNet behind the feature-extractor interface: `name`, `__call__` -> features, `predict` ->
    class."""

    def __init__(self, net: DigitNet, config: FeatureNetConfig, device: str = "cpu", batch_size: int = 512):
        self.net = net.eval().to(device)
        self.config = config
        self.device = torch.device(device)
        self.batch_size = batch_size

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def __call__(self, images: ImagesLike) -> np.ndarray:
        """Penultimate-layer features (N, feature_dim) float32."""
        return self._run(images)[0]

    def predict_proba(self, images: ImagesLike) -> np.ndarray:
        return self._run(images)[1]

    def predict(self, images: ImagesLike) -> np.ndarray:
        """Most probable real class per image (int64)."""
        return self.predict_proba(images).argmax(axis=1).astype(np.int64)

    def prepare(self, images: ImagesLike) -> np.ndarray:
        """Match the net's input size (resized); images with another channel count are refused, never converted."""
        array = as_images(images)
        if array.shape[1] != self.config.in_channels:
            raise ValueError(
                f"feature net {self.name} takes {_channels(self.config.in_channels)} images, these have "
                f"{_channels(array.shape[1])}; use a net trained on images like these "
                "(`cpsample train-feature-net`), 'bundled' (picks the shipped net for their channels), "
                "or none"
            )
        size = self.config.image_size
        if array.shape[-1] != size and (self.name, array.shape[-1]) not in _told_resized:
            _told_resized.add((self.name, array.shape[-1]))
            logger.warning(
                f"feature net {self.name} was trained on {size}x{size} images; these are {array.shape[-2]}x"
                f"{array.shape[-1]} and are resized to {size}x{size} for it, so its FD and class checks see them at "
                f"that size. For a faithful measure, train a net on images like these (`cpsample train-feature-net "
                f"--image-size {array.shape[-1]}`)."
            )
        return resize(array, size)

    @torch.no_grad()
    def _run(self, images: ImagesLike) -> tuple[np.ndarray, np.ndarray]:
        array = self.prepare(images)
        features, probabilities = [], []
        for start in range(0, len(array), self.batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(array[start : start + self.batch_size])).to(self.device)
            feature, logits = self.net(batch)
            features.append(feature.cpu().numpy())
            probabilities.append(logits.softmax(dim=1).cpu().numpy())
        return np.concatenate(features).astype(np.float32), np.concatenate(probabilities)

    def save(self, folder: Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_FILE).write_text(json.dumps({"architecture": "DigitNet", **asdict(self.config)}, indent=2))
        state = {key: value.detach().cpu().contiguous() for key, value in self.net.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_FILE))
        (folder / WEIGHTS_FILE).chmod(
            0o644
        )  # safetensors writes owner-only; the shipped asset must be readable by all
        return folder


def _channels(count: int) -> str:
    return {1: "1-channel (grey)", 3: "3-channel (RGB)"}.get(int(count), f"{count}-channel")


def bundled_feature_net(channels: int = 1) -> str:
    """The name of the shipped feature net for images with this many channels (1: digitnet, 3: emojinet)."""
    if int(channels) not in BUNDLED_BY_CHANNELS:
        raise ValueError(
            f"no bundled feature net for {channels}-channel images; train one with `cpsample train-feature-net`"
        )
    return BUNDLED_BY_CHANNELS[int(channels)]


def load_feature_net(spec: str | Path = "bundled", device: str = "cpu", channels: int | None = None) -> FeatureNet:
    """'bundled' (the shipped net for `channels`-channel images: 1, the default, 16x16 MNIST digitnet; 3, the
    32x32 Twemoji emojinet), a shipped net's name ('digitnet', 'emojinet'), or a folder written by
    train_feature_net."""
    name = bundled_feature_net(1 if channels is None else channels) if str(spec) == "bundled" else str(spec)
    folder = BUNDLED_FEATURE_NETS[name] if name in BUNDLED_FEATURE_NETS else Path(spec)
    if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(
            f"{folder}: no feature net here (needs {CONFIG_FILE} and {WEIGHTS_FILE}); "
            "train one with `cpsample train-feature-net --out DIR`"
        )
    raw = json.loads((folder / CONFIG_FILE).read_text())
    raw.pop("architecture", None)
    config = FeatureNetConfig(**{**raw, "widths": tuple(raw.get("widths", FeatureNetConfig.widths))})
    net = DigitNet(config)
    net.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=True)
    return FeatureNet(net, config, device=device)


def train_feature_net(
    dataset: ImageSet,
    training: FeatureNetTraining | None = None,
    name: str = "digitnet",
    device: str = "cpu",
    progress: bool = True,
) -> tuple[FeatureNet, dict]:
    """Train a DigitNet on dataset's real labels; returns the net and a summary with held-out accuracy.

    Augmentation is a random shift of up to 1 pixel, so that slightly off-centre generated digits get the same
    features as real ones; with training.flip, also a left-right mirror of half the images.
    """
    training = training or FeatureNetTraining()
    if dataset.labels is None:
        raise DataError(f"{dataset.source}: a feature net needs real class labels, and this dataset has none")
    images = as_images(dataset.images, dataset.source or "dataset")
    labels = np.asarray(dataset.labels, dtype=np.int64)
    train_idx, held_idx = stratified_split(labels, training.held_out, training.seed)
    config = FeatureNetConfig(
        name=name,
        in_channels=images.shape[1],
        image_size=images.shape[-1],
        num_classes=int(labels.max()) + 1,
        widths=tuple(training.widths),
    )
    torch.manual_seed(training.seed)
    net = DigitNet(config).to(device)
    optimiser = torch.optim.AdamW(net.parameters(), lr=training.lr, weight_decay=training.weight_decay)
    steps_per_epoch = int(np.ceil(len(train_idx) / training.batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=training.lr, total_steps=training.epochs * steps_per_epoch
    )
    x_train = torch.from_numpy(images[train_idx]).to(device)
    y_train = torch.from_numpy(labels[train_idx]).to(device)
    generator = torch.Generator().manual_seed(training.seed)
    started = time.time()
    bar = tqdm(range(training.epochs), desc="feature net", disable=not progress)
    for _ in bar:
        net.train()
        order = torch.randperm(len(x_train), generator=generator).to(device)
        for start in range(0, len(order), training.batch_size):
            batch = order[start : start + training.batch_size]
            inputs = random_shift(x_train[batch], generator)
            if training.flip:
                inputs = random_flip(inputs, generator)
            _, logits = net(inputs)
            loss = F.cross_entropy(logits, y_train[batch])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    recalibrate_batchnorm(net, x_train, training.batch_size)
    model = FeatureNet(net, config, device=device)
    summary = {
        "train_images": len(train_idx),
        "held_out_images": len(held_idx),
        "train_accuracy": float((model.predict(images[train_idx]) == labels[train_idx]).mean()),
        "held_out_accuracy": float((model.predict(images[held_idx]) == labels[held_idx]).mean())
        if len(held_idx)
        else None,
        "seconds": round(time.time() - started, 1),
        "parameters": sum(p.numel() for p in net.parameters()),
        "held_out_indices": held_idx.tolist(),
        **asdict(training),
    }
    return model, summary


def train_feature_net_into(
    out: Path,
    data: str,
    training: FeatureNetTraining,
    image_size: int | None = None,
    name: str = "digitnet",
    device: str = "cpu",
    widths: str | None = None,
) -> dict:
    """`cpsample train-feature-net` in one call: train on data, save the net into out (prepared already, see
    cpsample.runs.RunFolder) with its cpsample.json record; returns the summary. widths: as the command line gave
    them, for the record (default: training's)."""
    from cpsample.data import load_dataset
    from cpsample.provenance import command_line, seed_everything, write_record

    seed_everything(training.seed)
    dataset = load_dataset(data, image_size=image_size)
    net, summary = train_feature_net(dataset, training, name=name, device=device)
    net.save(out)
    settings = {
        "data": data,
        "image_size": image_size,
        "epochs": training.epochs,
        "batch_size": training.batch_size,
        "lr": training.lr,
        "held_out": training.held_out,
        "name": name,
        "widths": ",".join(map(str, training.widths)) if widths is None else widths,
        "flip": training.flip,
        "device": device,
        "seed": training.seed,
    }
    summary["command_line"] = command_line("train-feature-net", {"out": out, **settings})
    write_record(out, "train-feature-net", settings, summary)
    return summary


@torch.no_grad()
def recalibrate_batchnorm(net: nn.Module, images: torch.Tensor, batch_size: int) -> None:
    """Replace BatchNorm's running statistics by exact averages over the training images (final weights), so that
    eval mode is right even after few steps, when the momentum-based running averages have not caught up."""
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches below
    net.train()
    for start in range(0, len(images), batch_size):
        net(images[start : start + batch_size])
    for norm in norms:
        norm.momentum = 0.1
    net.eval()


def stratified_split(labels: np.ndarray, held_out: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class, keep round(held_out * count) images aside; returns sorted (train, held-out) indices."""
    if not 0.0 <= held_out < 1.0:
        raise ValueError(f"held_out must be in [0, 1), got {held_out}")
    rng = np.random.default_rng(seed)
    held = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        held.extend(rng.choice(members, size=int(round(held_out * len(members))), replace=False).tolist())
    held = np.sort(np.asarray(held, dtype=np.int64))
    return np.setdiff1d(np.arange(len(labels)), held), held


def random_flip(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the images left-right."""
    mirrored = torch.rand(len(batch), generator=generator) < 0.5
    return torch.where(mirrored.view(-1, 1, 1, 1).to(batch.device), batch.flip(-1), batch)


def random_shift(batch: torch.Tensor, generator: torch.Generator, pixels: int = 1) -> torch.Tensor:
    """Shift each image by up to `pixels` in x and y, filling with the edge pixels: the background, whatever its
    colour (black for digits, white for the Twemoji pictures)."""
    padded = F.pad(batch, (pixels,) * 4, mode="replicate")
    height, width = batch.shape[-2:]
    shifts = torch.randint(0, 2 * pixels + 1, (len(batch), 2), generator=generator)
    return torch.stack([padded[i, :, dy : dy + height, dx : dx + width] for i, (dy, dx) in enumerate(shifts.tolist())])
