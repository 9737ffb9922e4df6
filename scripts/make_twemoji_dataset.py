"""Build the bundled RGB dataset src/cpsample/assets/data/twemoji32.npz from the npm package emoji-datasource-twitter.

Run once by a maintainer (nothing runs this at install or test time):

    npm pack emoji-datasource-twitter@16.0.0 && tar xzf emoji-datasource-twitter-16.0.0.tgz
    python scripts/make_twemoji_dataset.py package

Twemoji graphics: Copyright 2019 Twitter, Inc and other contributors (jdecked/twemoji), CC-BY 4.0.
Keeps every base emoji (no skin-tone variants) of six picture-like categories, composited on white and resized
64 -> 32 with Lanczos; label = category index, name = the emoji's short name.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

CATEGORIES = ["Smileys & Emotion", "Animals & Nature", "Food & Drink", "Travel & Places", "Activities", "Objects"]
OUT = Path(__file__).resolve().parent.parent / "src" / "cpsample" / "assets" / "data" / "twemoji32.npz"


def load_emoji(package: Path, size: int = 32) -> tuple[np.ndarray, np.ndarray, list[str]]:
    records = json.loads((package / "emoji.json").read_text())
    chosen = sorted(
        (r for r in records if r["category"] in CATEGORIES and r.get("has_img_twitter")), key=lambda r: r["sort_order"]
    )
    images, labels, names = [], [], []
    for record in chosen:
        with Image.open(package / "img" / "twitter" / "64" / record["image"]) as picture:
            rgba = picture.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        images.append(np.asarray(canvas.convert("RGB").resize((size, size), Image.LANCZOS)))
        labels.append(CATEGORIES.index(record["category"]))
        names.append(record["short_name"])
    return np.stack(images), np.asarray(labels, dtype=np.int64), names


def main(package: str) -> None:
    images, labels, names = load_emoji(Path(package))
    version = json.loads((Path(package) / "package.json").read_text())["version"]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        OUT,
        images=images,
        labels=labels,
        names=np.asarray(names),
        categories=np.asarray(CATEGORIES),
        source=np.asarray(f"emoji-datasource-twitter {version}"),
    )
    print(f"{OUT}: {len(images)} images {images.shape[1:]}, {OUT.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "package")
