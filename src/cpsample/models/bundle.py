"""The bundled default model (shipped in the package) and how to find the data any model was trained on."""

from __future__ import annotations

import json
from pathlib import Path

from cpsample.data import DataError, ImageSet, Split, load_dataset
from cpsample.data.sources import ASSETS_DIR, resize_set
from cpsample.data.split import images_digest

BUNDLED_DIR = ASSETS_DIR / "mnist16"
BUNDLED = "bundled"
# Shipped models by name: the 16x16 grey MNIST model (the default), the 32x32 RGB Twemoji model and a latent
# text-to-image model trained on captioned Twemoji pictures (train-t2i).
BUNDLED_MODELS = {
    BUNDLED: BUNDLED_DIR,
    "bundled-rgb": ASSETS_DIR / "twemoji32",
    "bundled-t2i": ASSETS_DIR / "twemoji32-t2i",  # a Stable Diffusion pipeline (denoiser/) and its latent classifier
}
SELECTIVE = "classifier-selective"  # the bundled model's classifier trained with --negatives samples (cpsample-staged)


def is_bundled(spec: str | Path) -> bool:
    return str(spec) in BUNDLED_MODELS


def resolve_model_dir(spec: str | Path, part: str) -> Path:
    """'bundled' / 'bundled-rgb' -> the shipped denoiser/classifier folder; anything else is a path."""
    if is_bundled(spec):
        folder = BUNDLED_MODELS[str(spec)] / part
        if not folder.exists() and part == SELECTIVE and str(spec) != BUNDLED:
            raise FileNotFoundError(
                f"{spec} ships no selective classifier (the one cpsample-staged's early stage "
                f"needs, trained with --negatives samples); train one on its members with "
                f"`cpsample train-classifier --model {spec} --negatives samples --max-t 100 "
                "--out FOLDER` and pass --option early_classifier=FOLDER, or use --guard cpsample"
            )
        if not folder.exists():
            raise FileNotFoundError(f"the bundled {part} is missing from {folder.parent}; reinstall cpsample")
        return folder
    return Path(spec)


def training_data(model_dir: Path) -> tuple[ImageSet, Split]:
    """The full dataset a model was trained from (as recorded in its cpsample.json) and its member split."""
    model_dir = Path(model_dir)
    record_path, split_path = model_dir / "cpsample.json", model_dir / "split.json"
    if not record_path.exists() or not split_path.exists():
        raise FileNotFoundError(
            f"{model_dir}: missing cpsample.json or split.json (written by cpsample train-denoiser)"
        )
    try:
        settings = json.loads(record_path.read_text())["settings"]
        data = settings["data"]
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(
            f"{record_path}: not a training record naming its data ({type(error).__name__}: {error}); "
            "was it overwritten by another command? Retrain or restore it"
        ) from None
    split = Split.load(split_path)
    dataset = load_dataset(data)
    if max(split.members, default=-1) >= len(dataset):
        raise DataError(
            f"{data}: holds {len(dataset)} images, fewer than {split_path} names; it is not the data {model_dir} was "
            "trained on"
        )
    if split.members_sha256 and images_digest(dataset.take(split.members).images) != split.members_sha256:
        raise DataError(
            f"{data}: the member images differ from those {model_dir} was trained on (content hash in "
            f"{split_path}); restore the original data"
        )
    return resize_set(dataset, settings.get("image_size")), split


def model_members(spec: str | Path) -> ImageSet | None:
    """The member images of a pipeline cpsample trained (`train-t2i`: its split.json and record) or a bundled model,
    else None."""
    folder = resolve_model_dir(spec, "denoiser")
    if not (is_bundled(spec) or (folder / "model_index.json").is_file() and (folder / "split.json").is_file()):
        return None
    dataset, split = training_data(folder)
    members = dataset.take(split.members)
    members.source = str(spec)
    return members
