"""Reading the samples files that `cpsample sample` (and the demo) write, as the commands that judge them name them:
--samples NAME=PATH, repeatable."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from cpsample.data.images import DataError, ImageSet
from cpsample.data.sources import _to_nchw, array_file_kind, load_dataset


def sample_paths(specs: list[str] | None) -> list[str]:
    """The paths of --samples specs (what RunFolder must keep outside --out)."""
    return [split_sample_spec(spec)[1] for spec in specs or []]


def split_sample_spec(spec: str) -> tuple[str, str]:
    """'plain=a/samples.npz' -> ('plain', 'a/samples.npz'); a bare path has no name ('')."""
    name, separator, path = spec.partition("=")
    return (name, path) if separator else ("", spec)


def parse_named_paths(values: list[str]) -> dict[str, Path]:
    """['plain=a/samples.npz', 'b/samples.npz', ...] -> {'plain': Path(...), 'b': Path(...)}: [NAME=]PATH as in
    every command that reads samples (a bare path is named by default_name); names must be unique, files exist."""
    if not values:
        raise ValueError("give at least one --samples [NAME=]PATH (a samples.npz)")
    named = {}
    for value in values:
        name, path = split_sample_spec(value)
        if not path:
            raise ValueError(f"--samples expects [NAME=]PATH, got {value!r}")
        name = name or default_name(Path(path))
        if name in named:
            raise ValueError(f"--samples name {name!r} given twice; name them with NAME=PATH")
        named[name] = check_samples_path(Path(path), f"--samples {name}")
    return named


def default_name(path: Path) -> str:
    """A samples file's name when none is given: its folder's for a samples.npz (runs/plain/samples.npz -> plain),
    else its own stem."""
    return path.parent.name if path.stem == "samples" else path.stem


def check_samples_path(path: Path, what: str) -> Path:
    """A --samples path must be a file: a folder or a missing path is refused with what is expected instead."""
    if path.is_dir():
        inside = path / "samples.npz"
        hint = f"pass {inside}" if inside.is_file() else "pass the samples.npz that `cpsample sample` wrote into it"
        raise DataError(
            f"{what}: {path} is a folder; expected a samples file (.npz, or an .npy array of images): {hint}"
        )
    if path.is_symlink() and not path.exists():
        raise FileNotFoundError(f"{what}: {path} is a symbolic link to nothing (or a loop of links); fix the link")
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} does not exist")
    return path


def load_samples(path: Path) -> ImageSet:
    """samples.npz from `cpsample sample` holds float images in [-1, 1] under 'images': take them as they are
    (the generic loader would read an all-non-negative float set as [0, 1]); other files go through load_dataset.
    A plain .npy array of images (np.save) is read the same way."""
    if array_file_kind(path) == "npy":
        return _load_npy_samples(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "images" in archive and np.issubdtype(archive["images"].dtype, np.floating):
                images = archive["images"].astype(np.float32)
                if images.ndim == 4 and np.isfinite(images).all() and images.min() >= -1.0 and images.max() <= 1.0:
                    labels = next(
                        (archive[k].astype(np.int64).reshape(-1) for k in ("labels", "y") if k in archive), None
                    )
                    return ImageSet(
                        images=images,
                        names=[f"{path.name}:{i}" for i in range(len(images))],
                        labels=labels,
                        source=str(path),
                    )
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        pass  # the generic loader names what is wrong (empty file, pickled objects, no images ...)
    return load_dataset(str(path))


def _load_npy_samples(path: Path) -> ImageSet:
    """An .npy file holding one array of images: float in [-1, 1] as it is, anything else as load_dataset reads it."""
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as error:
        pickled = "allow_pickle" in str(error)
        reason = "it holds pickled Python objects, which cpsample never loads" if pickled else error
        raise DataError(
            f"{path}: cannot read the .npy array ({reason}); save plain numeric images with np.save"
        ) from None
    except (OSError, EOFError) as error:
        raise DataError(f"{path}: damaged .npy file ({type(error).__name__}: {error})") from None
    as_is = (
        array.ndim == 4
        and np.issubdtype(array.dtype, np.floating)
        and len(array)
        and array.shape[1] in (1, 3)
        and np.isfinite(array).all()
        and array.min() >= -1.0
        and array.max() <= 1.0
    )
    images = array.astype(np.float32) if as_is else _to_nchw(array, str(path))
    return ImageSet(images=images, names=[f"{path.name}:{i}" for i in range(len(images))], source=str(path))


def read_sample_sets(specs: list[str]) -> dict:
    """['plain=a/samples.npz', 'b/samples.npz', ...] -> {name: images}. A file's name defaults to its folder's name; an
    .npz without an 'images' array but with several image arrays (the demo's samples.npz) gives one set per array."""
    sets = {}
    for spec in specs:
        name, path = split_sample_spec(spec)
        path = check_samples_path(Path(path), f"--samples {spec}")
        found = _named_arrays(path) or {"": load_samples(path).images}
        for key, images in found.items():
            label = "/".join(part for part in (name, key) if part) or default_name(path)
            if label in sets:
                raise ValueError(f"--samples: two sets are named {label!r}; name them with NAME=PATH")
            sets[label] = images
    return sets


def _named_arrays(path: Path) -> dict:
    """The image arrays of an .npz with no 'images' key and several (N, C, H, W) float arrays in [-1, 1], by name."""
    if path.suffix != ".npz" or array_file_kind(path) != "npz":
        return {}
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "images" in archive or len(archive.files) < 2:
                return {}
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError):
        return {}  # load_samples says what is wrong with the file
    images = {
        key: a.astype(np.float32)
        for key, a in arrays.items()
        if a.ndim == 4
        and a.shape[1] in (1, 3)
        and np.issubdtype(a.dtype, np.floating)
        and np.isfinite(a).all()
        and a.min() >= -1.0
        and a.max() <= 1.0
    }
    return images if len(images) == len(arrays) else {}
