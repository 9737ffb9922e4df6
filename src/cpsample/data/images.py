"""Image sets: the one in-memory format every other part of cpsample works on.

Images are float32 arrays of shape (N, C, H, W) scaled to [-1, 1], the range diffusion models train on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


class DataError(ValueError):
    """Bad input data; the message names the offending file or array."""


@dataclass
class ImageSet:
    images: np.ndarray  # float32 (N, C, H, W) in [-1, 1]
    names: list[str]  # one id per image: file name or "<dataset>:<index>"
    labels: np.ndarray | None = None  # int64 class labels when the source has them
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise DataError(f"{self.source}: expected images of shape (N, C, H, W), got {self.images.shape}")
        if len(self.names) != len(self.images):
            raise DataError(f"{self.source}: {len(self.names)} names for {len(self.images)} images")
        if self.labels is not None and len(self.labels) != len(self.images):
            raise DataError(f"{self.source}: {len(self.labels)} labels for {len(self.images)} images")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    def take(self, indices: np.ndarray | list[int]) -> "ImageSet":
        indices = np.asarray(indices, dtype=np.int64)
        return ImageSet(
            images=self.images[indices],
            names=[self.names[i] for i in indices],
            labels=None if self.labels is None else self.labels[indices],
            source=self.source,
            meta=dict(self.meta),
        )

    def tensor(self) -> torch.Tensor:
        import torch  # (here, not at the top: the command line starts without torch)

        return torch.from_numpy(np.ascontiguousarray(self.images))


def to_unit_range(images: np.ndarray, max_value: float) -> np.ndarray:
    """Map [0, max_value] pixel values to float32 [-1, 1]."""
    return (np.asarray(images, dtype=np.float32) / max_value) * 2.0 - 1.0


def to_uint8(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Map [-1, 1] images (N, C, H, W) to uint8 (N, H, W, C) for saving."""
    if hasattr(images, "detach"):  # a torch tensor
        images = images.detach().float().cpu().numpy()
    pixels = np.clip((images + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return pixels.transpose(0, 2, 3, 1)


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """Resize (N, C, H, W) images to size x size with antialiasing (area-like when shrinking)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    out = F.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.clamp(-1.0, 1.0).numpy()
