"""Captions of training images: 'image file<TAB>caption' lines (or a JSON object), as users write them and as
`train-t2i` keeps them beside the model it trains."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cpsample.data.images import DataError, ImageSet

MODEL_CAPTIONS = "captions.txt"  # beside a text-to-image model: 'image name<TAB>caption' of every member
MODEL_PROMPTS = "prompts.txt"  # and the same captions one per line: a --prompts-file (`sample` reads it by default)


def read_captions(path: str | Path, names: list[str] | None) -> dict[str, str]:
    """'image file<TAB>caption' per line (or a JSON object file -> caption); every file must be in the image set
    (names; None: not checked)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such captions file")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        captions = {str(k): str(v) for k, v in json.loads(text).items()}
    else:
        captions = {}
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if "\t" not in line:
                raise ValueError(f"{path}:{number}: expected 'image file<TAB>caption'")
            name, caption = line.split("\t", 1)
            captions[name.strip()] = caption.strip()
    unknown = [] if names is None else sorted(set(captions) - set(names))
    if unknown:
        raise ValueError(f"{path}: captions name images that are not in the image folder: {', '.join(unknown[:5])}")
    return captions


def twemoji_captions(names: list[str]) -> list[str]:
    """The bundled Twemoji pictures' captions: their short names in words ('smiling_face_with_3_hearts' ->
    'smiling face with 3 hearts')."""
    from cpsample.data.sources import TWEMOJI_NPZ

    with np.load(TWEMOJI_NPZ, allow_pickle=False) as archive:
        short_names = [str(name) for name in archive["names"]]
    return [short_names[int(name.rsplit(":", 1)[1])].replace("_", " ").replace("-", " ") for name in names]


def captions_for(images: ImageSet, data: str, captions_file: str | Path | None) -> list[str]:
    """One caption per image: from captions_file ('image<TAB>caption' lines or JSON), or the Twemoji names."""
    if captions_file is None:
        if data == "twemoji":
            return twemoji_captions(images.names)
        raise DataError(f"{data}: give --captions (a file of 'image file<TAB>caption' lines, or a JSON object)")
    captions = read_captions(captions_file, None)  # (it may caption held-out images too)
    missing = [name for name in images.names if not captions.get(name, "").strip()]
    if missing:
        raise DataError(
            f"{captions_file}: {len(missing)} of {len(images)} images have no caption ({', '.join(missing[:5])}); "
            "every image scored or trained on needs one"
        )
    return [captions[name] for name in images.names]
