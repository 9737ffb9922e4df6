"""Train CPSample's random-label classifier on the VAE latents of a private image set (paper section 4.2).

Only the private subset gets protected: the classifier memorises random labels of these images' latents
z0 = vae.encode(x).mean * scaling_factor, noised with the pipeline scheduler's own schedule
(z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps), so at sampling time it recognises latents heading to them.
The training itself is `train_classifier` (EMA, relabelling of unfit images, resume) on the latents.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from cpsample.data import ImageSet, Split
from cpsample.data.captions import MODEL_CAPTIONS, read_captions
from cpsample.data.split import images_digest
from cpsample.models.bundle import is_bundled, resolve_model_dir
from cpsample.sampling.latent import latent_shape, load_private_images, load_sd_pipeline
from cpsample.sampling.latent_pairing import LATENTS_FILE, encode_latents, latent_record, vae_digests
from cpsample.training.classifier import train_classifier
from cpsample.training.loop import TrainConfig

CAPTIONS_FILE = "captions.json"


def pipeline_noise_schedule(pipe):
    """A DDPMScheduler with the pipeline's betas: `add_noise` for training, saved beside the classifier."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(pipe.scheduler.config, prediction_type="epsilon")


def train_latent_classifier(
    pipeline_dir: str | Path,
    images_dir: str | Path | None,
    out_dir: Path,
    config: TrainConfig,
    label_seed: int | None,
    relabel_after: int,
    captions_file: str | Path | None = None,
    block_out_channels=(32, 64, 64),
    resume: bool = False,
    device: str = "cpu",
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Encode the private images with the pipeline's VAE and train the latent classifier; returns a summary.

    out_dir gets classifier/, scheduler/ (the pipeline's schedule), labels.json, split.json, latents.safetensors,
    captions.json (when given) and cpsample.json naming the pipeline and the image folder. Seeds everything with
    config.seed first; label_seed None: config.seed.
    """
    from cpsample.provenance import seed_everything

    seed_everything(config.seed)
    label_seed = config.seed if label_seed is None else label_seed
    out_dir = Path(out_dir)
    pipe = load_sd_pipeline(resolve_model_dir(pipeline_dir, "denoiser"), device=device)
    channels, height, width = latent_shape(pipe)
    if height != width:
        raise ValueError(f"{pipeline_dir}: the classifier needs square latents, this pipeline makes {height}x{width}")
    image_size = height * pipe.vae_scale_factor
    images_dir = recorded_path(pipeline_dir if images_dir is None else images_dir)
    private = load_private_images(images_dir, image_size)
    if captions_file is None and images_dir == recorded_path(pipeline_dir):  # the pipeline's own members: its captions
        captions_file = own_captions(pipeline_dir)
    captions = read_captions(captions_file, private.names) if captions_file else {}
    latents = encode_latents(pipe, private, progress=progress)
    members = ImageSet(images=latents.numpy(), names=private.names, source=f"{images_dir} (VAE latents)")
    digest = images_digest(private.images)
    split = Split(source=str(images_dir), seed=label_seed, members=list(range(len(private))), nonmembers=[])
    # The digests let every later pairing with a pipeline (check_latent_pairing) refuse another VAE or image set.
    recorded = {
        "pipeline": recorded_path(pipeline_dir),
        "images": str(images_dir),
        "images_digest": digest,
        "vae_digest": vae_digests(pipe.vae),
        "image_size": image_size,
        "latent_shape": [channels, height, width],
        "scaling_factor": pipe.vae.config.scaling_factor,
        "captions": str(Path(captions_file).resolve()) if captions_file else None,
        "image_names": private.names,
    }
    summary = train_classifier(
        members,
        split,
        pipeline_noise_schedule(pipe),
        out_dir,
        config,
        label_seed=label_seed,
        relabel_after=relabel_after,
        block_out_channels=block_out_channels,
        resume=resume,
        overwrite=overwrite,
        denoiser_path=str(pipeline_dir),
        command="train-latent-classifier",
        recorded=recorded,
        run_extra={"vae_sha256": recorded["vae_digest"]["float32"], "images_sha256": digest},
    )
    save_file({"latents": latents.contiguous()}, str(out_dir / LATENTS_FILE))
    if captions:
        (out_dir / CAPTIONS_FILE).write_text(json.dumps(captions, indent=2))
    return {
        **summary,
        "image_size": image_size,
        "latent_shape": [channels, height, width],
        "latent_std": float(latents.std()),
        "captions": len(captions),
    }


def recorded_path(spec: str | Path) -> str:
    """A bundled model's name as it is, a path made absolute: later commands find it from any folder."""
    return str(spec) if is_bundled(spec) else str(Path(spec).resolve())


def own_captions(pipeline_dir: str | Path) -> Path | None:
    """The captions a pipeline was trained with (train-t2i's captions.txt), if it has them."""
    path = resolve_model_dir(pipeline_dir, "denoiser") / MODEL_CAPTIONS
    return path if path.is_file() else None


def pipeline_of(classifier_dir: str | Path) -> str | None:
    """The Stable Diffusion pipeline folder a latent classifier was trained for (its cpsample.json), else None."""
    settings = latent_record(classifier_dir)
    return None if settings is None else settings.get("pipeline")


def captions_of(classifier_dir: str | Path) -> list[str]:
    """The captions kept with a latent classifier (train-latent-classifier --captions), in image-name order."""
    path = Path(classifier_dir) / CAPTIONS_FILE
    if not path.is_file():
        return []
    captions = json.loads(path.read_text())
    return [captions[name] for name in sorted(captions)]
