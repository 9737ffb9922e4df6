"""Fixed member / non-member splits, so later attacks know which images the model was trained on."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cpsample.data.images import DataError


@dataclass
class Split:
    source: str
    seed: int
    members: list[int]  # indices into the full dataset used for training
    nonmembers: list[int]  # the rest, held out: the reference set for membership inference
    # For a fine-tuned model: the model it started from, that model's data, and which images of this dataset it was
    # pretrained on (neither members nor non-members: the model saw them, but they are not what it protects).
    pretraining: dict | None = None
    members_sha256: str | None = None  # of the member images as trained on (uint8): checked when they are loaded again

    def fingerprint(self) -> str:
        """One line naming exactly this split, for comparing a resumed run with the run it continues."""
        digest = hashlib.sha256(json.dumps([self.source, self.seed, self.members]).encode()).hexdigest()[:12]
        return f"{len(self.members)} members of {self.source} (seed {self.seed}, {digest})"

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> "Split":
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as error:
            raise DataError(f"{path}: not a cpsample split file ({error})") from error


def make_split(n_total: int, subset: int | None, seed: int, source: str, pretraining: dict | None = None) -> Split:
    """Pick `subset` members uniformly at random (all images when subset is None); the rest are non-members.

    Images listed in pretraining["indices"] (a pretrained model already saw them) are left out of both sides.
    """
    seen = set((pretraining or {}).get("indices", []))
    available = np.array([i for i in range(n_total) if i not in seen], dtype=np.int64)
    if subset is None or subset >= len(available):
        if subset is not None and subset > len(available):
            left = f" ({len(seen)} of {n_total} were used in pretraining)" if seen else ""
            raise DataError(
                f"{source}: asked for a subset of {subset} but the dataset holds only {len(available)} images{left}"
            )
        return Split(source=source, seed=seed, members=available.tolist(), nonmembers=[], pretraining=pretraining)
    if subset <= 0:
        raise DataError(f"subset must be positive, got {subset}")
    order = (
        available[np.random.default_rng(seed).permutation(len(available))]
        if seen
        else np.random.default_rng(seed).permutation(n_total)
    )
    return Split(
        source=source,
        seed=seed,
        members=sorted(order[:subset].tolist()),
        nonmembers=sorted(order[subset:].tolist()),
        pretraining=pretraining,
    )


def images_digest(images: np.ndarray) -> str:
    """sha256 of images in [-1, 1] as uint8 pixels: the same pictures give the same digest despite float noise."""
    from cpsample.data.images import to_uint8

    return hashlib.sha256(to_uint8(images).tobytes()).hexdigest()
