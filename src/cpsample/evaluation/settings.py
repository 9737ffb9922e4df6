"""What `evaluate` measures and against what: `EvaluateSettings`, whose documented fields are also `cpsample
evaluate`'s options. Light on purpose, so the command line can build its --help from it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cpsample.settings import BATCH_SIZE_HELP, DENOISER_HELP, option, seed_option, threshold_option, widths_form

FEATURES_HELP = (
    "Feature space of the near-copy yardstick: pixels, dino:PATH (a local Hugging Face DINO/DINOv2 folder: "
    "config.json + model.safetensors) or sscd:PATH (TorchScript)."
)
TRUST_TORCHSCRIPT_HELP = "Allow loading an SSCD TorchScript file (it runs code from the file)."


@dataclass
class EvaluateSettings:
    model: str = option("bundled", DENOISER_HELP)
    data: str | None = option(
        None,
        "The training images (folder or .npz), for a model without cpsample's record of them (a Stable Diffusion "
        "fine-tune): all count as members.",
    )
    features: str = option("pixels", FEATURES_HELP)
    threshold: float | None = threshold_option()
    quality_net: str = option(
        "bundled",
        "Feature net for FD and class checks: 'bundled' (the shipped net for the images' channels: digitnet for "
        "grey, emojinet for RGB), 'digitnet', 'emojinet', a folder, or 'none'.",
    )
    inception: Path | None = option(
        None, "Local Inception-v3 FID weights: adds real FID (needs torchmetrics + torch-fidelity)."
    )
    permutation_rounds: int = option(1000, "Null draws for the App. E permutation test.", min=1)
    relative_metric: str = option("l2", "Carlini ratio distance: l2 or tiled.")
    top_k: int = option(4, "Most similar pairs shown per method.", min=1)
    trust_torchscript: bool = option(False, TRUST_TORCHSCRIPT_HELP)
    seed: int = seed_option()


@dataclass
class FeatureNetTraining:
    """How `train-feature-net` trains the small classifier whose features give the offline Frechet distance."""

    epochs: int = option(12, "Passes over the training images.", min=1)
    batch_size: int = option(128, BATCH_SIZE_HELP, min=1)
    lr: float = option(3e-3, "Learning rate.")
    weight_decay: float = 1e-4
    held_out: float = option(0.2, "Share of images kept aside to measure accuracy.")  # stratified
    seed: int = seed_option()
    # pictures keep their class mirrored; digits do not
    flip: bool = option(False, "Also mirror half the training images left-right (for pictures; not digits).")
    widths: tuple[int, ...] = option(
        (32, 64, 128), "Channels of the conv stages, comma-separated (max-pool between).", form=widths_form("--widths")
    )
