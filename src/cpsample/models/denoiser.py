"""The denoiser: a diffusers UNet2DModel predicting eps, stored with its noise schedule as a diffusers folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel

# The bundled model's shape: three resolutions, attention at the lowest. About 1.1M parameters at 16x16.
DEFAULT_CHANNELS = (32, 64, 64)


def build_denoiser(
    image_size: int,
    channels: int,
    block_out_channels=DEFAULT_CHANNELS,
    layers_per_block: int = 1,
    num_class_embeds: int | None = None,
) -> UNet2DModel:
    levels = len(block_out_channels)
    if image_size % (2 ** (levels - 1)):
        raise ValueError(
            f"image size {image_size} must be divisible by {2 ** (levels - 1)} for {levels} resolution levels"
        )
    return UNet2DModel(
        sample_size=image_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        down_block_types=("DownBlock2D",) * (levels - 1) + ("AttnDownBlock2D",),
        up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1),
        norm_num_groups=min(16, min(block_out_channels)),
        num_class_embeds=num_class_embeds,
    )


def build_noise_schedule(num_train_timesteps: int = 1000) -> DDPMScheduler:
    # clip_sample off: a DDPMPipeline/DDIMPipeline loading this folder then steps with the model's own eps.
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps, beta_schedule="linear", prediction_type="epsilon", clip_sample=False
    )


# A diffusers pipeline folder's index: which pipeline class, and which class each component folder holds.
PIPELINE_INDEX = "model_index.json"
DDPM_PIPELINE = "DDPMPipeline"


def save_denoiser(folder: Path, unet: UNet2DModel, schedule: DDPMScheduler) -> None:
    """Write unet/ (safetensors + config) and scheduler/ in the diffusers layout; an unconditional denoiser also gets
    model_index.json, so `diffusers.DDPMPipeline.from_pretrained(folder)` loads it as a pipeline."""
    folder = Path(folder)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    schedule.save_pretrained(folder / "scheduler")
    if unet.config.num_class_embeds is None:  # DDPMPipeline calls the UNet without class labels
        write_pipeline_index(folder, schedule)


def write_pipeline_index(folder: Path, schedule: DDPMScheduler | None = None) -> Path:
    """model_index.json naming DDPMPipeline with unet/ (UNet2DModel) and scheduler/ (the schedule's class)."""
    import diffusers

    scheduler_class = type(schedule).__name__ if schedule is not None else "DDPMScheduler"
    index = {
        "_class_name": DDPM_PIPELINE,
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", scheduler_class],
        "unet": ["diffusers", "UNet2DModel"],
    }
    path = Path(folder) / PIPELINE_INDEX
    path.write_text(json.dumps(index, indent=2) + "\n")
    return path


def pipeline_class(folder: str | Path) -> str | None:
    """The pipeline class a diffusers folder's model_index.json names ("DDPMPipeline", "StableDiffusionPipeline"),
    or None where there is no readable index."""
    path = Path(folder) / PIPELINE_INDEX
    try:
        return str(json.loads(path.read_text()).get("_class_name")) if path.is_file() else None
    except (OSError, ValueError, AttributeError):
        return None


def is_sd_pipeline(folder: str | Path) -> bool:
    """A text-to-image Stable Diffusion pipeline folder (not a DDPM pipeline that also carries model_index.json)."""
    name = pipeline_class(folder)
    return name is not None and name.startswith("StableDiffusion")


def load_noise_schedule(folder: Path) -> DDPMScheduler:
    """The training noise schedule stored next to a denoiser (all a classifier needs from it)."""
    path = Path(folder) / "scheduler"
    if not (path / "scheduler_config.json").exists():
        raise FileNotFoundError(f"{folder}: no noise schedule here (expected scheduler/scheduler_config.json)")
    try:
        schedule = DDPMScheduler.from_pretrained(path)
    except Exception as error:  # a broken scheduler_config.json
        raise ValueError(
            f"{path}: cannot read the noise schedule ({type(error).__name__}); restore scheduler_config.json"
        ) from None
    if schedule.config.prediction_type != "epsilon":
        raise ValueError(
            f"{folder}: cpsample needs an eps-predicting model, this one predicts {schedule.config.prediction_type}"
        )
    return schedule


def load_denoiser(folder: Path, device: str | torch.device = "cpu") -> tuple[UNet2DModel, DDPMScheduler]:
    folder = Path(folder)
    if not (folder / "unet" / "config.json").exists():
        raise FileNotFoundError(
            f"{folder}: no denoiser here (expected unet/config.json, as written by train-denoiser)"
        )
    unet = from_pretrained_safely(UNet2DModel, folder / "unet").to(device).eval()
    check_trained_size(folder, unet.config.sample_size, unet.config.in_channels)
    return unet, load_noise_schedule(folder)


def check_trained_size(folder: Path, sample_size, in_channels=None) -> None:
    """unet/config.json's sample_size sets the size of every sample; it must be the size the model was trained at
    (its cpsample.json), or sampling silently makes images at a size the model never saw."""
    try:
        trained = json.loads((Path(folder) / "cpsample.json").read_text())["settings"].get("image_size")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return  # no record (any diffusers UNet2DModel folder): nothing to compare with
    if trained is not None and trained != sample_size:
        raise ValueError(
            f"{folder}: unet/config.json says sample_size {sample_size} but the model was trained on "
            f"{trained}x{trained} images (cpsample.json); restore sample_size {trained}"
        )


def from_pretrained_safely(model_class, path: Path):
    """model_class.from_pretrained(path) from safetensors only, any failure as one line naming the folder and the
    fix."""
    try:
        return model_class.from_pretrained(path, use_safetensors=True)
    except Exception as error:  # broken config.json, pickled .bin only, truncated weights: all a damaged folder
        detail = " ".join(str(error).split())[:160]
        raise ValueError(
            f"{path}: cannot load the model ({type(error).__name__}: {detail}); it needs a valid config.json "
            "and diffusion_pytorch_model.safetensors (pickled .bin weights are never loaded)"
        ) from None


@dataclass(frozen=True)
class ClassInfo:
    """What a conditional model knows about its classes: labels 0..num_classes-1, plus the null label."""

    num_classes: int
    null_label: int

    def check(self, class_labels) -> list[int]:
        """The labels as ints; a label the model was not trained on is an error, not a silent null label."""
        labels = [int(label) for label in class_labels]
        unknown = sorted({label for label in labels if not 0 <= label < self.num_classes})
        if unknown:
            raise ValueError(
                f"unknown class {', '.join(map(str, unknown))}: this model knows classes 0-{self.num_classes - 1}"
            )
        return labels


def read_class_info(model_dir: Path, num_class_embeds: int | None) -> ClassInfo:
    """num_classes / null_label from the model's cpsample.json, else from the UNet (last embedding = null label)."""
    if num_class_embeds is None:
        raise ValueError(
            f"{model_dir}: this denoiser is not class-conditional (its UNet has no class embedding); "
            "train one with `cpsample train-conditional`"
        )
    record = Path(model_dir) / "cpsample.json"
    settings = json.loads(record.read_text()).get("settings", {}) if record.exists() else {}
    if "num_classes" in settings and "null_label" in settings:
        info = ClassInfo(int(settings["num_classes"]), int(settings["null_label"]))
    else:
        info = ClassInfo(num_class_embeds - 1, num_class_embeds - 1)
    if info.null_label >= num_class_embeds:
        raise ValueError(
            f"{model_dir}: null label {info.null_label} has no embedding (the UNet has {num_class_embeds})"
        )
    return info
