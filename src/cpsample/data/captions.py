"""Captions of training images: 'image file<TAB>caption' lines (or a JSON object), as users write them and as
`train-t2i` keeps them beside the model it trains."""

from __future__ import annotations

import json
from pathlib import Path

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
