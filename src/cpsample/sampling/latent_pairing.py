"""Which VAE and which private images a latent classifier belongs to: the checks every entry point pairing a latent
classifier with a Stable Diffusion pipeline makes (sample, calibrate, protect), and the member latents stored
beside the classifier."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from cpsample.data import ImageSet
from cpsample.data.split import images_digest
from cpsample.sampling.sampler import DTYPES, weights_digest

LATENT_COMMAND = "train-latent-classifier"


def latent_record(classifier_dir: str | Path) -> dict | None:
    """The settings train-latent-classifier recorded in the folder's cpsample.json; None for any other folder."""
    record = Path(classifier_dir) / "cpsample.json"
    try:
        content = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(content, dict) or content.get("command") != LATENT_COMMAND:
        return None
    settings = content.get("settings")
    return settings if isinstance(settings, dict) else {}


def private_images_of(classifier_dir: str | Path) -> str:
    """The private image folder a latent classifier was trained on (from its cpsample.json)."""
    record = Path(classifier_dir) / "cpsample.json"
    try:
        settings = json.loads(record.read_text()).get("settings", {}) if record.is_file() else {}
    except (ValueError, AttributeError) as error:
        raise ValueError(
            f"{record}: not a readable cpsample record ({type(error).__name__}: {error}); restore it, "
            "or pass --private FOLDER"
        ) from None
    if not isinstance(settings, dict) or "images" not in settings:
        raise FileNotFoundError(
            f"{classifier_dir}: cpsample.json does not name the private images; pass --private FOLDER"
        )
    return settings["images"]


def vae_digests(vae) -> dict[str, str]:
    """sha256 of the VAE's weights as each sampling dtype holds them (a half-precision copy has its own digest)."""
    return {name: weights_digest(vae, dtype) for name, dtype in DTYPES.items()}


def pipeline_name(pipe) -> str:
    return str(getattr(pipe, "name_or_path", None) or "this pipeline")


def check_latent_pairing(classifier_dir: str | Path, pipe, private: ImageSet | None = None) -> None:
    """The one check of every entry point pairing a latent classifier with a pipeline (sample, calibrate,
    protect): the pipeline's VAE must be the one the classifier was trained on (else its guard judges latents it
    never saw, and fires on every step), and the private images measured against (when given) must be its own.

    Folders trained before the digests were recorded are checked on what they record: the VAE's scaling factor
    and the image names. Folders of other commands (pixel classifiers) are not latent classifiers: nothing to check."""
    settings = latent_record(classifier_dir)
    if settings is None:
        return
    trained_for = settings.get("pipeline") or "another pipeline"
    here = pipeline_name(pipe)
    retrain = f"train a classifier for this pipeline: `cpsample train-latent-classifier --model {here} --data PRIVATE`"
    digests = settings.get("vae_digest") or {}
    dtype = next((name for name, value in DTYPES.items() if value == pipe.vae.dtype), None)
    if dtype in digests and weights_digest(pipe.vae) != digests[dtype]:
        raise ValueError(
            f"{classifier_dir} was trained on the latents of another VAE (that of {trained_for}, sha256 "
            f"{digests[dtype][:12]}) than {here}'s (sha256 {weights_digest(pipe.vae)[:12]}): its guard "
            f"would misjudge every latent; use the pipeline it was trained for, or {retrain}"
        )
    scaling = settings.get("scaling_factor")
    if scaling is not None and scaling != pipe.vae.config.scaling_factor:
        raise ValueError(
            f"{classifier_dir} was trained on latents scaled by {scaling} (the VAE of {trained_for}), "
            f"but {here}'s VAE scales by {pipe.vae.config.scaling_factor}; {retrain}"
        )
    if private is not None:
        check_private_images(classifier_dir, settings, private)
        if dtype not in digests:  # no digest recorded (an older folder): what does this VAE make of a private image?
            check_stored_latent(classifier_dir, pipe, private, f"{retrain}, or restore the image")


# The members' VAE latents a latent classifier was trained on, saved beside it (train-latent-classifier).
LATENTS_FILE = "latents.safetensors"


@torch.no_grad()
def encode_latents(pipe, images: ImageSet, batch_size: int = 8, progress: bool = True) -> torch.Tensor:
    """Scaled VAE latents (N, 4, h, w) of images in [-1, 1]; the posterior mean, so the targets are fixed."""
    vae, device = pipe.vae, pipe.device
    pixels = images.tensor()
    chunks = []
    for start in tqdm(
        range(0, len(pixels), batch_size), desc="encoding private images", disable=not progress, leave=False
    ):
        batch = pixels[start : start + batch_size].to(device=device, dtype=vae.dtype)
        chunks.append(vae.encode(batch).latent_dist.mean.float().cpu() * vae.config.scaling_factor)
    return torch.cat(chunks)


def member_latents(classifier_dir: str | Path) -> np.ndarray:
    return load_file(str(Path(classifier_dir) / LATENTS_FILE))["latents"].numpy()


def check_stored_latent(classifier_dir: str | Path, pipe, private: ImageSet, fix: str) -> None:
    """The latent the classifier was trained on for the first private image must be what this VAE encodes it to."""
    if not len(private) or not (Path(classifier_dir) / LATENTS_FILE).is_file():
        return
    stored = torch.from_numpy(member_latents(classifier_dir)[:1])
    encoded = encode_latents(pipe, private.take([0]), progress=False)
    if stored.shape != encoded.shape or float((encoded - stored).norm() / stored.norm().clamp_min(1e-12)) > 0.05:
        raise ValueError(
            f"{classifier_dir} was trained on other latents of {private.names[0]} than "
            f"{pipeline_name(pipe)}'s VAE makes of it: it was trained on another VAE (or the image "
            f"changed); {fix}"
        )


def check_private_images(classifier_dir: str | Path, settings: dict, private: ImageSet) -> None:
    """The images similarity is measured against must be those the classifier was trained on, unchanged."""
    trained_on = settings.get("images") or "its image folder"
    retrain = f"retrain the classifier on these images with `cpsample train-latent-classifier --data {private.source}`"
    same_folder = settings.get("images") and Path(private.source).resolve() == Path(settings["images"]).resolve()
    fix = (
        f"restore them as they were, or {retrain}"
        if same_folder
        else f"pass --private with the images it was trained on ({trained_on}), or {retrain}"
    )
    recorded = settings.get("images_digest")
    names = settings.get("image_names")
    if recorded:
        found = images_digest(private.images)
        if found != recorded:
            count = f"{len(names)} images" if isinstance(names, list) else "images"
            raise ValueError(
                f"the private images in {private.source} ({len(private)} images, sha256 {found[:12]}) "
                f"are not those {classifier_dir} was trained on ({count} of {trained_on}, sha256 "
                f"{recorded[:12]}): near-copies would be counted against the wrong images; {fix}"
            )
    elif isinstance(names, list) and list(names) != list(private.names):
        raise ValueError(
            f"the private images in {private.source} ({len(private)} images) are not those "
            f"{classifier_dir} was trained on ({len(names)} images of {trained_on}, by their names): "
            f"near-copies would be counted against the wrong images; {fix}"
        )
