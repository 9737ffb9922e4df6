"""Model adapters: one per model kind, each giving the one denoising loop the same call contract (see base.py).

adapter = load_adapter("runs/cond").conditioned([0, 1, 2], guidance_scale=3.0)
result = generate(adapter, GuardSpec.create("cpsample", alpha=0.1), SampleConfig(n=8), classifier="runs/clf")
"""

from __future__ import annotations

from pathlib import Path

from cpsample.models.bundle import resolve_model_dir
from cpsample.sampling.adapters.base import ModelAdapter
from cpsample.sampling.adapters.conditional import ConditionalAdapter
from cpsample.sampling.adapters.latent import LatentAdapter
from cpsample.sampling.adapters.pixel import PixelAdapter

# Asked in this order which kind a folder holds: the first that claims it loads it.
ADAPTERS: dict[str, type[ModelAdapter]] = {
    "latent": LatentAdapter,
    "conditional": ConditionalAdapter,
    "pixel": PixelAdapter,
}


def adapter_class(folder_or_name: str | Path) -> type[ModelAdapter]:
    """The adapter class of a model folder (or a bundled name), told by its model_index.json and unet config; a
    folder no kind claims goes to the pixel adapter, whose loader says what is missing."""
    folder = resolve_model_dir(folder_or_name, "denoiser")  # a bundled name's folder; a path as it is
    claimed = next((adapter for adapter in ADAPTERS.values() if adapter.claims(folder)), None)
    if claimed is None and not (Path(folder) / "unet" / "config.json").exists():
        raise FileNotFoundError(
            f"{folder}: no denoiser here (expected unet/config.json, as written by train-denoiser) and no diffusers "
            "pipeline here (expected model_index.json, as a Stable Diffusion folder or train-t2i writes)"
        )
    return claimed or PixelAdapter


def load_adapter(
    folder_or_name: str | Path, device: str = "cpu", dtype: str = "float32", scheduler: str | None = None
) -> ModelAdapter:
    """The adapter of a model folder or bundled name ("bundled", "bundled-rgb"): a pixel denoiser (DDPMPipeline), a
    class-conditional one (its UNet has class embeddings) or a Stable Diffusion pipeline (its model_index.json),
    loaded on device. scheduler: the one `generate` uses unless its config names another (None: ddim for denoisers,
    the pipeline's own for Stable Diffusion)."""
    return adapter_class(folder_or_name).from_pretrained(folder_or_name, device, dtype, scheduler)


__all__ = ["ADAPTERS", "ConditionalAdapter", "LatentAdapter", "ModelAdapter", "PixelAdapter", "load_adapter"]
