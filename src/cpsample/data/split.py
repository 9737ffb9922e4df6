"""Fixed member / non-member splits, so later attacks know which images the model was trained on."""

from __future__ import annotations

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

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> "Split":
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as error:
            raise DataError(f"{path}: not a cpsample split file ({error})") from error


def make_split(n_total: int, subset: int | None, seed: int, source: str) -> Split:
    """Pick `subset` members uniformly at random (all images when subset is None); the rest are non-members."""
    if subset is None or subset >= n_total:
        if subset is not None and subset > n_total:
            raise DataError(f"{source}: asked for a subset of {subset} but the dataset holds only {n_total} images")
        return Split(source=source, seed=seed, members=list(range(n_total)), nonmembers=[])
    if subset <= 0:
        raise DataError(f"subset must be positive, got {subset}")
    order = np.random.default_rng(seed).permutation(n_total)
    return Split(source=source, seed=seed, members=sorted(order[:subset].tolist()), nonmembers=sorted(order[subset:].tolist()))
