"""What every entry point checks before it samples: the device, the scheduler's prediction type, and that each
classifier a guard holds fits the model (its image size and channels, its noise schedule, its member split)."""

from __future__ import annotations

from pathlib import Path

import torch

from cpsample.data import Split
from cpsample.models import load_noise_schedule
from cpsample.sampling.guards import Guard


def check_device(device: str) -> None:
    """--device cuda on a machine without CUDA: one clear line, not a traceback from deep inside torch."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a torch device; use cpu, cuda or cuda:1 ...") from None
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise ValueError(
            f"--device {device}: a {parsed.type} device holds no data to sample or train with; use cpu, "
            "cuda or cuda:1 ..."
        )
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: torch sees no CUDA GPU on this machine; use --device cpu")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: torch sees no MPS device on this machine; use --device cpu")


def check_scheduler(scheduler, says: str) -> None:
    """CPSample pushes eps: a scheduler that reads the UNet's output as v or as x0 would take the push for something
    else (schedulers without a prediction_type, such as PNDM, step with eps)."""
    prediction = scheduler.config.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        raise ValueError(
            f"CPSample corrects an eps prediction; {says} {prediction!r}. Use an eps-predicting scheduler "
            '(e.g. type(scheduler).from_config(scheduler.config, prediction_type="epsilon")) for an '
            "eps-predicting model, or cpsample.unprotect(pipe)"
        )


def model_folder_of(unet) -> Path | None:
    """The cpsample model folder a diffusers UNet was loaded from (its config's _name_or_path is <folder>/unet), when
    that folder records a member split; None for a UNet built in memory or loaded from elsewhere."""
    loaded_from = unet.config.get("_name_or_path") if hasattr(unet, "config") else None
    if not loaded_from:
        return None
    folder = Path(loaded_from).parent
    return folder if (folder / "split.json").exists() else None


def check_guard_fits(guard: Guard, unet, schedule, model_dir: Path | None) -> None:
    """A classifier made for other images protects nothing (or crashes): each classifier the guard holds (both stages
    of a chain) must take this model's image size and channels and, when its folder is known, share the model's noise
    schedule and member split."""
    for member in getattr(guard, "guards", [guard]):
        classifier = getattr(member, "classifier", None)
        if classifier is not None:
            check_classifier_fits(classifier, getattr(member, "folder", None), unet, schedule, model_dir)


def check_classifier_fits(classifier, classifier_dir: Path | None, unet, schedule, model_dir: Path | None) -> None:
    """The classifier takes this model's images, learned its noise schedule and, where both record one, its members."""
    expected = (unet.config.in_channels, unet.config.sample_size)
    found = (classifier.config.in_channels, classifier.config.sample_size)
    fix = "train one on this model's members with `cpsample train-classifier --model MODEL`"
    if found != expected:
        raise ValueError(
            f"the classifier takes {found[0]}-channel {found[1]}x{found[1]} inputs but this model makes "
            f"{expected[0]}-channel {expected[1]}x{expected[1]} images; {fix}"
        )
    if classifier_dir is None:
        return
    check_same_schedule(classifier_dir, schedule, fix, model_dir or "this model")
    if (
        model_dir is not None
        and (Path(model_dir) / "split.json").exists()
        and not (Path(classifier_dir) / "split.json").exists()
    ):
        raise ValueError(
            f"{classifier_dir}: the classifier folder has no split.json, so nothing shows it was trained on "
            f"{model_dir}'s members (a classifier of other images guides at nearly every step); {fix}, or "
            "restore its split.json"
        )
    from cpsample.sampling.latent_pairing import latent_record

    if latent_record(classifier_dir) is not None:
        return  # a latent classifier's members are its images' and VAE's digests: check_latent_pairing compares them
    splits = [Path(folder) / "split.json" for folder in (model_dir, classifier_dir) if folder is not None]
    if len(splits) == 2 and all(path.exists() for path in splits):
        model_split, classifier_split = (Split.load(path) for path in splits)
        if (model_split.source, model_split.members) != (classifier_split.source, classifier_split.members):
            raise ValueError(
                f"{classifier_dir}: the classifier was trained on other member images than {model_dir} "
                f"({classifier_split.source}, {len(classifier_split.members)} members vs "
                f"{model_split.source}, {len(model_split.members)}); {fix}"
            )


def check_same_schedule(classifier_dir: Path, schedule, fix: str, sampled: str | Path = "this model") -> None:
    """The classifier learned p(y | x_t, t) for one noise schedule; under another its t means another noise level."""
    if not (Path(classifier_dir) / "scheduler").exists():
        return  # a classifier saved without its schedule: nothing to compare
    theirs = load_noise_schedule(classifier_dir).alphas_cumprod.float()
    used = schedule.alphas_cumprod.float().cpu()
    if theirs.shape != used.shape or not torch.allclose(theirs, used):
        raise ValueError(
            f"{classifier_dir}: the classifier was trained with another noise schedule than {sampled}; {fix}"
        )
