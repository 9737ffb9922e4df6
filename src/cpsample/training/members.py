"""What a denoiser trains on: the data loaded from its spec, seeded, and the member split fixed (leaving out the
images a model to fine-tune was pretrained on)."""

from __future__ import annotations

import json
from pathlib import Path

from cpsample.data import BUNDLED, ImageSet, Split, load_dataset, make_split
from cpsample.data.sources import resize_set
from cpsample.data.split import images_digest
from cpsample.provenance import seed_everything
from cpsample.training.loop import TrainConfig


def prepare_training(
    data: str, image_size: int | None, subset: int | None, config: TrainConfig, init: str | None = None
) -> tuple[ImageSet, Split]:
    """The start of every denoiser training (after its loop settings were checked): seed, load the data, fix the
    member split (seeded by config.seed).

    With `init` (a model to fine-tune), the images that model was pretrained on are kept out of the split."""
    seed = config.seed
    if image_size is not None and image_size < 1:
        raise ValueError(f"--image-size must be at least 1, got {image_size}")
    seed_everything(seed)
    data = absolute_data_spec(data)
    dataset = load_dataset(data)
    pretraining = None if init is None else pretraining_record(init, data)
    split = make_split(len(dataset), subset, seed, data, pretraining=pretraining)
    # Hashed before resizing: the source pixels are exact on every machine, a resize may differ in the last bit.
    split.members_sha256 = images_digest(dataset.take(split.members).images)
    return resize_set(dataset, image_size).take(split.members), split


def pretraining_record(init: str, data: str) -> dict:
    """What a model to fine-tune was trained on, and which images of `data` it saw (when it came from the same data).

    A folder without cpsample's records (any diffusers UNet2DModel folder) counts as pretrained on other data."""
    folder = Path(init)
    record, split_path = folder / "cpsample.json", folder / "split.json"
    if not record.exists() or not split_path.exists():
        return {"model": str(folder.resolve()), "data": None, "indices": []}
    pretrained_on = json.loads(record.read_text())["settings"].get("data")
    split = Split.load(split_path)
    seen = set(split.members) | set((split.pretraining or {}).get("indices", []))
    same_data = pretrained_on is not None and absolute_data_spec(pretrained_on) == data
    return {"model": str(folder.resolve()), "data": pretrained_on, "indices": sorted(seen) if same_data else []}


def absolute_data_spec(data: str) -> str:
    """A bundled name as is, a path made absolute: the record must find the data from any working directory."""
    return data if data in BUNDLED else str(Path(data).resolve())
