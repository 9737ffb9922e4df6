"""The bundled default model (shipped in the package) and how to find the data any model was trained on."""

from __future__ import annotations

import json
from pathlib import Path

from cpsample.data import ImageSet, Split, load_dataset

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "assets" / "mnist16"
BUNDLED = "bundled"


def resolve_model_dir(spec: str | Path, part: str) -> Path:
    """'bundled' -> the shipped denoiser/classifier folder; anything else is a path."""
    if str(spec) == BUNDLED:
        folder = BUNDLED_DIR / part
        if not folder.exists():
            raise FileNotFoundError(f"the bundled {part} is missing from {BUNDLED_DIR}; reinstall cpsample")
        return folder
    return Path(spec)


def training_data(model_dir: Path) -> tuple[ImageSet, Split]:
    """The full dataset a model was trained from (as recorded in its cpsample.json) and its member split."""
    model_dir = Path(model_dir)
    record_path, split_path = model_dir / "cpsample.json", model_dir / "split.json"
    if not record_path.exists() or not split_path.exists():
        raise FileNotFoundError(f"{model_dir}: missing cpsample.json or split.json (written by cpsample train-denoiser)")
    settings = json.loads(record_path.read_text())["settings"]
    split = Split.load(split_path)
    dataset = load_dataset(settings["data"], image_size=settings.get("image_size"))
    return dataset, split
