"""Feature extractors for nearest-neighbour search: one small interface, three implementations.

A feature extractor has a `name` and is called on images (N, C, H, W) in [-1, 1], returning float32 (N, D).
- `pixels`: the raw image, centred (per-image mean removed) so that cosine similarity measures shape, not brightness.
- `dino:PATH`: a DINO / DINOv2 backbone loaded by `transformers` from a local Hugging Face model folder (config.json
  + model.safetensors; pickled weights are refused); its normed CLS token is the feature, as in the CPSample paper.
- `sscd:PATH`: Meta's SSCD copy-detection descriptor, which is only published as TorchScript. TorchScript runs
  code from the file, so it loads only when the caller says it trusts the file (trust_torchscript=True).
Nothing here downloads anything.
"""

from __future__ import annotations

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


# ---------------------------------------------------------------- DINO / DINOv2 through transformers

# DINO v1 loads as transformers' ViTModel, DINOv2 as Dinov2Model, DINOv2 with registers as Dinov2WithRegistersModel.
DINO_MODEL_TYPES = ("vit", "dinov2", "dinov2_with_registers")
DINO_FOLDER = "a local Hugging Face model folder (config.json + model.safetensors)"
DINO_HOW_TO_GET = (
    "download one beforehand (e.g. `hf download facebook/dinov2-small --local-dir DIR`), or load a model with "
    "transformers and save it with save_pretrained(DIR)"
)


class _ClsToken(nn.Module):
    """A transformers DINO backbone reduced to its CLS token after the final layernorm (the CPSample paper's feature).

    last_hidden_state is already normed in ViTModel, Dinov2Model and Dinov2WithRegistersModel; pooler_output is not
    used because ViTModel's is an extra dense + tanh layer (Dinov2's equals the CLS token anyway)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.patch = int(backbone.config.patch_size)
        # ViTModel resizes its learned position grid to another image size only when asked; DINOv2 always does.
        self.options = {"interpolate_pos_encoding": True} if backbone.config.model_type == "vit" else {}

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.backbone(pixel_values=pixels, **self.options).last_hidden_state[:, 0]


def check_dino_folder(folder: Path) -> None:
    """Refuse, before transformers reads anything, what is not a safetensors Hugging Face folder: a missing path, a
    weights file (the old facebookresearch .pth format), a folder without config.json, pickled weights only."""
    if not folder.exists():
        raise FileNotFoundError(
            f"{folder}: DINO model folder not found; dino:PATH takes {DINO_FOLDER}: {DINO_HOW_TO_GET}"
        )
    if not folder.is_dir():
        raise ValueError(f"{folder} is a file; dino:PATH takes {DINO_FOLDER}: {DINO_HOW_TO_GET}")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no config.json; dino:PATH takes {DINO_FOLDER}: {DINO_HOW_TO_GET}")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.safetensors.index.json")):
        pickled = sorted(path.name for path in folder.glob("*.bin"))
        if pickled:
            raise ValueError(
                f"{folder} holds only pickled weights ({', '.join(pickled)}), which cpsample never loads (unpickling "
                "can run code); convert them once, where you trust the file: "
                "transformers.AutoModel.from_pretrained(DIR).save_pretrained(DIR) writes model.safetensors"
            )
        raise FileNotFoundError(f"{folder} holds no model.safetensors; dino:PATH takes {DINO_FOLDER}")


def load_dino_backbone(folder: str | Path) -> _ClsToken:
    """A DINO / DINOv2 backbone from a local Hugging Face folder, safetensors only, never downloaded."""
    folder = Path(folder)
    check_dino_folder(folder)
    try:
        from transformers import AutoConfig, AutoModel  # imported here: `import cpsample` stays fast
    except ImportError:
        raise ValueError(
            "dino:PATH features need transformers: pip install 'cpsample[latent]' (or pip install transformers)"
        ) from None
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    if config.model_type not in DINO_MODEL_TYPES:
        raise ValueError(
            f"{folder} holds a {config.model_type!r} model; dino:PATH takes a DINO ({', '.join(DINO_MODEL_TYPES)}) "
            "model folder"
        )
    # ViTModel's pooler is not part of DINO's weights: left out rather than randomly initialised.
    extra = {"add_pooling_layer": False} if config.model_type == "vit" else {}
    backbone = AutoModel.from_pretrained(
        folder, local_files_only=True, use_safetensors=True, dtype=torch.float32, **extra
    )
    return _ClsToken(backbone)


class DinoFeatures(_TorchFeatures):
    """DINO / DINOv2 CLS-token features from a local Hugging Face folder; images are upscaled to image_size (224)."""

    def __init__(self, folder: str | Path, image_size: int = 224, device: str = "cpu", batch_size: int = 64):
        model = load_dino_backbone(folder)
        if image_size % model.patch:
            raise ValueError(f"image_size {image_size} must be a multiple of the ViT patch size {model.patch}")
        super().__init__(model, image_size, device, batch_size)
        self.name = f"dino({Path(folder).name})"


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
            what = "model folder" if kind == "dino" else "weights path"
            raise ValueError(f"--features {kind} needs a local {what}: {kind}:PATH (nothing is downloaded)")
        if kind == "dino":
            return DinoFeatures(path, device=device)
        return SSCDFeatures(path, trust_torchscript=trust_torchscript, device=device)
    raise ValueError(f"unknown feature extractor {spec!r}; choose {FEATURE_SPECS}")
