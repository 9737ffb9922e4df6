"""Feature extractors for nearest-neighbour search: one small interface, three implementations.

A feature extractor has a `name` and is called on images (N, C, H, W) in [-1, 1], returning float32 (N, D).
- `pixels`: the raw image, centred (per-image mean removed) so that cosine similarity measures shape, not brightness.
- `dino:PATH`: a DINO / DINOv2 ViT backbone loaded from local weights (safetensors, or a plain state-dict .pth
  read with torch.load(weights_only=True)); its CLS token is the feature, as in the CPSample paper.
- `sscd:PATH`: Meta's SSCD copy-detection descriptor, which is only published as TorchScript. TorchScript runs
  code from the file, so it loads only when the caller says it trusts the file (trust_torchscript=True).
Nothing here downloads anything.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from cpsample.evaluation.inputs import ImagesLike, as_images

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FEATURE_SPECS = "pixels, dino:PATH or sscd:PATH"


@runtime_checkable
class FeatureExtractor(Protocol):
    name: str

    def __call__(self, images: ImagesLike) -> np.ndarray:
        """Features (N, D) float32 for images (N, C, H, W) in [-1, 1]."""


class PixelFeatures:
    """Raw pixels minus each image's mean, so that a uniformly brighter copy still scores as a copy."""

    name = "pixels"

    def __call__(self, images: ImagesLike) -> np.ndarray:
        array = as_images(images)
        flat = array.reshape(len(array), -1)
        return (flat - flat.mean(axis=1, keepdims=True)).astype(np.float32)


class _TorchFeatures:
    """Shared batching and preprocessing for network-based extractors (RGB, resized, ImageNet-normalised)."""

    name = "torch"

    def __init__(self, model: nn.Module, image_size: int, device: str = "cpu", batch_size: int = 64):
        self.model = model.eval().to(device)
        self.image_size = image_size
        self.device = torch.device(device)
        self.batch_size = batch_size

    def preprocess(self, batch: torch.Tensor) -> torch.Tensor:
        batch = (batch + 1.0) / 2.0  # [-1, 1] -> [0, 1], the range ImageNet normalisation assumes
        if batch.shape[1] == 1:
            batch = batch.expand(-1, 3, -1, -1)
        if batch.shape[-1] != self.image_size or batch.shape[-2] != self.image_size:
            batch = F.interpolate(batch, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
        mean = torch.tensor(IMAGENET_MEAN, device=batch.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=batch.device).view(1, 3, 1, 1)
        return (batch - mean) / std

    @torch.no_grad()
    def __call__(self, images: ImagesLike) -> np.ndarray:
        array = as_images(images)
        chunks = []
        starts = range(0, len(array), self.batch_size)
        for start in tqdm(starts, desc=f"{self.name} features", disable=len(starts) < 4, leave=False):
            batch = torch.from_numpy(array[start : start + self.batch_size]).to(self.device)
            chunks.append(self.model(self.preprocess(batch)).float().cpu().numpy())
        return np.concatenate(chunks).astype(np.float32)


# ---------------------------------------------------------------- DINO / DINOv2 ViT backbone (inference only)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, layer_scale: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, hidden)
        self.ls1 = _LayerScale(dim) if layer_scale else nn.Identity()  # DINOv2 only
        self.ls2 = _LayerScale(dim) if layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class _PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int, channels: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class ViTBackbone(nn.Module):
    """A ViT whose parameter names match facebookresearch/dino and dinov2 backbones; returns the normed CLS token."""

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        patch: int,
        grid: int,
        hidden: int,
        channels: int = 3,
        layer_scale: bool = False,
        registers: int = 0,
    ):
        super().__init__()
        self.patch = patch
        self.patch_embed = _PatchEmbed(dim, patch, channels)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, registers, dim)) if registers else None
        self.blocks = nn.ModuleList(_Block(dim, heads, hidden, layer_scale) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def _positions(self, rows: int, columns: int) -> torch.Tensor:
        """Resize the learned patch-position grid to the input's grid (bicubic), as DINO does for other sizes."""
        cls_position, grid_positions = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        side = int(math.isqrt(grid_positions.shape[1]))
        if side * side == rows * columns and rows == columns:
            return self.pos_embed
        grid = grid_positions.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(rows, columns), mode="bicubic", align_corners=False)
        return torch.cat([cls_position, grid.permute(0, 2, 3, 1).reshape(1, rows * columns, -1)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, columns = x.shape[-2] // self.patch, x.shape[-1] // self.patch
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1) + self._positions(rows, columns)
        if self.register_tokens is not None:
            tokens = torch.cat([tokens[:, :1], self.register_tokens.expand(len(x), -1, -1), tokens[:, 1:]], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)[:, 0]


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from .safetensors, or from a .pth/.pt holding only tensors (torch.load with weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found; pass the path of a local .safetensors or .pth file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)  # never runs code from the file
    except Exception as error:  # the unpickler refuses anything that is not plain tensors/containers
        raise ValueError(
            f"{path}: cannot read as a plain state dict with torch.load(weights_only=True) ({error}); "
            "convert it to .safetensors"
        ) from error
    for key in ("teacher", "model", "state_dict"):  # DINO training checkpoints keep the backbone under these
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(loaded).__name__}")
    return {key: value for key, value in loaded.items() if isinstance(value, torch.Tensor)}


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in ("module.", "backbone."):
        if state and all(key.startswith(prefix) for key in state if not key.startswith("head")):
            state = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    return {key: value for key, value in state.items() if not key.startswith(("head", "mask_token"))}


def build_vit_from_state(state: dict[str, torch.Tensor]) -> ViTBackbone:
    """Infer the ViT's size from its weights (DINO ViT-S/B, DINOv2 S/B/L, with or without registers) and load them."""
    state = _strip_prefixes(state)
    required = ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "norm.weight")
    missing = [key for key in required if key not in state]
    if missing:
        raise ValueError(
            f"these weights are not a DINO/DINOv2 ViT backbone (missing {', '.join(missing)}); "
            "expected the parameter names of facebookresearch/dino or dinov2"
        )
    if "blocks.0.mlp.w12.weight" in state:
        raise ValueError("SwiGLU ViTs (DINOv2 ViT-g) are not supported; use ViT-S/B/L weights")
    dim, channels, patch, _ = state["patch_embed.proj.weight"].shape
    depth = 1 + max(int(key.split(".")[1]) for key in state if key.startswith("blocks."))
    grid = int(math.isqrt(state["pos_embed"].shape[1] - 1))
    registers = state["register_tokens"].shape[1] if "register_tokens" in state else 0
    model = ViTBackbone(
        dim=dim,
        depth=depth,
        heads=max(1, dim // 64),
        patch=patch,
        grid=grid,
        hidden=state["blocks.0.mlp.fc1.weight"].shape[0],
        channels=channels,
        layer_scale="blocks.0.ls1.gamma" in state,
        registers=registers,
    )
    model.load_state_dict(state, strict=True)
    return model


class DinoFeatures(_TorchFeatures):
    """DINO / DINOv2 CLS-token features from a local weights file; images are upscaled to image_size (224 default)."""

    def __init__(self, weights: str | Path, image_size: int = 224, device: str = "cpu", batch_size: int = 64):
        model = build_vit_from_state(read_state_dict(Path(weights)))
        if image_size % model.patch:
            raise ValueError(f"image_size {image_size} must be a multiple of the ViT patch size {model.patch}")
        super().__init__(model, image_size, device, batch_size)
        self.name = f"dino({Path(weights).name})"


class SSCDFeatures(_TorchFeatures):
    """SSCD copy-detection descriptors (Pizzi et al. 2022) from a local TorchScript file you trust."""

    def __init__(
        self,
        weights: str | Path,
        trust_torchscript: bool = False,
        image_size: int = 288,
        device: str = "cpu",
        batch_size: int = 32,
    ):
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: SSCD weights not found; pass the path of a local SSCD TorchScript file "
                "(e.g. sscd_disc_mixup.torchscript.pt)"
            )
        if not trust_torchscript:
            raise ValueError(
                f"{path}: SSCD is published as TorchScript, which runs code stored in the file; "
                "pass trust_torchscript=True (CLI: --trust-torchscript) only for a file you trust"
            )
        model = torch.jit.load(str(path), map_location="cpu")
        super().__init__(model, image_size, device, batch_size)
        self.name = f"sscd({path.name})"


def make_feature_extractor(
    spec: str | FeatureExtractor, trust_torchscript: bool = False, device: str = "cpu"
) -> FeatureExtractor:
    """'pixels', 'dino:PATH' or 'sscd:PATH' -> an extractor; an extractor object is returned unchanged."""
    if not isinstance(spec, str):
        if not callable(spec) or not hasattr(spec, "name"):
            raise TypeError("a feature extractor needs a `name` and must be callable on images")
        return spec
    kind, _, path = spec.partition(":")
    if kind == "pixels" and not path:
        return PixelFeatures()
    if kind in ("dino", "sscd"):
        if not path:
            raise ValueError(f"--features {kind} needs a local weights path: {kind}:PATH (nothing is downloaded)")
        if kind == "dino":
            return DinoFeatures(path, device=device)
        return SSCDFeatures(path, trust_torchscript=trust_torchscript, device=device)
    raise ValueError(f"unknown feature extractor {spec!r}; choose {FEATURE_SPECS}")
