"""What a calibration samples and measures, and the grid it tries (`GridSettings`), and how it searches
(`SearchSettings`): their documented fields are also `cpsample calibrate`'s options. Light on purpose (torch and
diffusers load inside the checks), so the command line can build its --help from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from cpsample.calibration import grid
from cpsample.settings import (
    CLASSIFIER_HELP,
    DENOISING_STEPS_HELP,
    TextForm,
    check_bounds,
    device_option,
    option,
    seed_option,
    threshold_option,
)


def model_for(classifier: str, model: str | None = None) -> str:
    """The model a calibration samples: the one given, else the Stable Diffusion pipeline a latent classifier was
    trained for, else the denoiser the classifier was trained on (its cpsample.json); never a silent stand-in."""
    from cpsample.models.bundle import BUNDLED_MODELS, resolve_model_dir
    from cpsample.provenance import recorded_settings
    from cpsample.training.latent_classifier import pipeline_of

    if model:
        return model
    if str(classifier) in BUNDLED_MODELS:  # a bundled classifier protects the bundled model of its name
        return str(classifier)
    folder = resolve_model_dir(classifier, "classifier")
    recorded = pipeline_of(folder) or recorded_settings(folder).get("denoiser")
    if not recorded:
        raise ValueError(f"{classifier} does not record the model it protects; give --model")
    return recorded


@dataclass
class GridSettings:
    """What a calibration samples and measures, and the grid of settings it tries (each field's help is also its
    `cpsample calibrate` option)."""

    model: str | None = option(
        None,
        "Denoiser folder, 'bundled', or a Stable Diffusion pipeline folder (then --classifier is a "
        "`train-latent-classifier` folder). Default: the model --classifier was trained for (its record).",
    )
    classifier: str = option("bundled", CLASSIFIER_HELP)
    n_samples: int = option(
        300,
        "Images per setting on the grid's screen (same noise for every setting); the goal-seeking search screens "
        "plain sampling on twice as many and samples only their near-copies again per probe.",
        min=1,
    )
    steps: int = option(50, DENOISING_STEPS_HELP, min=1)
    scheduler: str | None = None  # None: "ddim", or a Stable Diffusion pipeline's own ("default", as `sample`)
    # None: grid.ALPHAS / grid.SCALES on the grid (LATENT_ALPHAS / LATENT_SCALES for a pipeline), SEEK_ALPHAS when
    # seeking (the goal-seeking search finds the scale itself)
    alphas: Sequence[float] | None = option(
        None,
        f"Comma-separated alphas. Default: {grid.as_option(grid.SEEK_ALPHAS)} when seeking, "
        f"{grid.as_option(grid.ALPHAS)} on the grid ({grid.as_option(grid.LATENT_ALPHAS)} for a pipeline).",
        form=grid.floats_form("--alphas"),
    )
    scales: Sequence[float] | None = option(
        None,
        f"Grid: comma-separated scales to try (default {grid.as_option(grid.SCALES)}; "
        f"{grid.as_option(grid.LATENT_SCALES)} for a pipeline).",
        form=grid.floats_form("--scales"),
    )
    tau: float = option(0.001, "CPSample's tau in log(tau + p(other label)), the same for every setting tried.")
    threshold: float | None = threshold_option()
    features: str = "pixels"
    quality_net: str | None = option(
        "bundled",
        "Feature net for the quality (FD) column: 'bundled' (the shipped net for the model's channels: MNIST "
        "digitnet for grey, Twemoji emojinet for RGB), a shipped net's name, or a `cpsample train-feature-net` "
        "folder trained on images like yours. Not used for a Stable Diffusion pipeline (no held-out images there).",
    )
    batch_size: int = option(250, "Images per batch (Stable Diffusion: per prompt).", min=1)
    device: str = device_option()
    seed: int = seed_option()
    # Two stages (cpsample-staged): a selective classifier judging x0_hat early, this classifier on x_t late.
    early_classifier: str | None = option(
        None,
        "A selective classifier of the same members (`train-classifier --negatives samples`): CPSample in two "
        "stages (cpsample-staged) then competes, and becomes `--guard cpsample`'s default if it wins.",
    )
    early_scales: Sequence[float] = option(
        grid.EARLY_SCALES, "Two stages: early-stage scales to try.", form=grid.floats_form("--early-scales")
    )
    staged_scales: Sequence[float] = option(
        grid.STAGED_SCALES,
        "Two stages: late-stage scales to try (alpha 0.1), the main classifier judging x_t; 'none': skip.",
        form=grid.floats_form("--staged-scales", allow_none=True),
    )
    # Caps on each sample's push (None: uncapped), tried for every two-stage setting (bench/README Finding 12).
    push_caps: Sequence[float | None] = option(
        grid.PUSH_CAPS,
        "Two stages: caps on each sample's push to try (RMS in units of eps; 'none': uncapped, the paper's push).",
        form=TextForm(lambda text: parse_caps(text), grid.as_option),
    )
    # Two stages whose late stage is selective too: the early classifier also judges x0_hat at t <= 200 (bench/README
    # Finding 13), at alpha DENOISED_LATE_ALPHA; its pushes through x0_hat are smaller there, hence scales of their
    # own. Empty: not tried.
    denoised_late_scales: Sequence[float] = option(
        grid.DENOISED_LATE_SCALES,
        "Two stages: late-stage scales to try (alpha 0.3) with the early classifier judging x0_hat late too (a "
        "selective late stage); 'none': skip.",
        form=grid.floats_form("--denoised-late-scales", allow_none=True),
    )
    # Other x_t classifiers of the same members (other widths) tried as the late stage beside `classifier`: the width
    # whose push costs least depends on the model (bench/README Findings 16-18). Empty: the main classifier only.
    late_classifiers: Sequence[str] = option(
        (),
        "Two stages: another classifier of the same members (e.g. `train-classifier --channels 16,32,32`) tried as "
        "the late stage on x_t beside --classifier, with the same scales and caps; repeatable. The width that costs "
        "least depends on the model. When one wins, calibration.json (next to --classifier) records its folder.",
        flag="--late-classifier",
        form=TextForm(tuple, repeatable=True),
    )
    # A Stable Diffusion pipeline (`model`) with a latent classifier: the prompts sampled (empty: the classifier's
    # captions), their CFG scale, and the private images near-copies are counted against (None: the classifier's).
    prompts: Sequence[str] = ()
    cfg_scale: float = option(7.5, "Stable Diffusion: classifier-free guidance scale.")
    private: str | None = option(
        None, "Stable Diffusion: private images near-copies are counted against (default: the classifier's)."
    )
    extra: dict = field(default_factory=dict)
    # Columns beside GRID_MEASURES: registered measures by name (a plugin's too: `cpsample.measures` entry points).
    measures: Sequence[str] = ()

    def __post_init__(self):
        from cpsample.evaluation.nearcopy import resolve_threshold

        self.model = model_for(self.classifier, self.model)
        self.threshold = resolve_threshold(self.threshold, self.features)
        if self.late_classifiers and self.early_classifier is None:
            raise ValueError("--late-classifier is a late stage of the two-stage guard; give --early-classifier too")
        if self.scheduler is None:
            self.scheduler = "default" if self.latent else "ddim"
        if self.latent:
            self._check_latent()

    @property
    def latent(self) -> bool:
        """Whether `model` is a Stable Diffusion pipeline folder (sampled with prompts, guarded in latent space)."""
        from cpsample.models.bundle import resolve_model_dir
        from cpsample.models.denoiser import is_sd_pipeline

        return is_sd_pipeline(resolve_model_dir(self.model, "denoiser"))

    def _check_latent(self) -> None:
        from cpsample.models.bundle import resolve_model_dir
        from cpsample.training.latent_classifier import captions_of

        if self.early_classifier is not None or self.late_classifiers:
            raise ValueError(
                "the two-stage guard (--early-classifier, --late-classifier) is not available for a Stable "
                "Diffusion pipeline; calibrate the one-stage guard (leave them out)"
            )
        if latent_heldout(self.model) is None:
            if self.quality_net not in ("bundled", None):
                raise ValueError(
                    "this Stable Diffusion pipeline records no held-out images to measure FD against; leave "
                    "--quality-net out (the least aggressive setting is then the one guiding fewest steps)"
                )
            self.quality_net = None
        if self.features != "pixels":
            raise ValueError(
                "near-copies of the private images are counted in pixels on the Stable Diffusion path "
                "(as `sample` counts them)"
            )
        self.prompts = tuple(self.prompts) or tuple(captions_of(resolve_model_dir(self.classifier, "classifier")))
        if not self.prompts or any(not str(prompt).strip() for prompt in self.prompts):
            raise ValueError(
                f"{self.model} is a Stable Diffusion pipeline: give the prompts to calibrate with (--prompt, "
                "--prompts-file), or train the classifier with --captions (its captions are then used)"
            )


def latent_heldout(model: str):
    """The held-out images of a pipeline `train-t2i` trained on part of a dataset (FD is measured against them);
    None for any other pipeline."""
    from cpsample.models.bundle import resolve_model_dir, training_data

    folder = resolve_model_dir(model, "denoiser")
    if not (folder / "split.json").is_file():
        return None
    dataset, split = training_data(folder)
    return dataset.take(split.nonmembers) if split.nonmembers else None


def parse_caps(text: str) -> tuple[float | None, ...]:
    """`--push-caps` ("none,1,2") as caps, None for uncapped; each cap must be positive."""
    caps = []
    for part in filter(None, (item.strip() for item in text.split(","))):
        if part.lower() == "none":
            caps.append(None)
            continue
        try:
            cap = float(part)
        except ValueError:
            raise ValueError(f"--push-caps takes positive numbers or 'none', got {part!r}") from None
        if not cap > 0:
            raise ValueError(f"--push-caps takes positive numbers or 'none', got {part!r}")
        caps.append(cap)
    if not caps:
        raise ValueError("--push-caps is empty")
    return tuple(caps)


# The grid's confirmation round: the screen's FINALISTS best feasible settings (by FD) and plain, sampled again on
# fresh noise. bench/README.md, Finding 19: on the second model a 300-image screen chose a setting with 12 copies
# against a limit of 13 that 1,200 images showed misses the cut (5.6% vs plain 44.4%), while its fourth-best feasible
# setting had the best FD at 3.8%.
FINALISTS = 4
SEARCHES = ("auto", "seek", "grid")


@dataclass(frozen=True)
class SearchSettings:
    """How a calibration searches and what it may save (each field's help is also its `cpsample calibrate` option)."""

    search: str = option(
        "auto",
        "'seek': bisect on the scale at each alpha (the one-stage guard on an unconditional pixel model, DDIM); "
        "'grid': try every --alphas x --scales; 'auto': seek where it can, else the grid (it says why).",
    )
    finalists: int = option(
        FINALISTS,
        "Below 2,000 images the grid is a screen: its best feasible settings (this many, by FD) and plain are sampled "
        "again on fresh noise, and the choice is made on the pooled near-copies and that round's FD. 0: choose on the "
        "screen alone.",
        min=0,
    )
    confirm_samples: int | None = option(
        None,
        "Fresh images per setting in the grid's confirmation round (default twice --n-samples) or the goal-seeking "
        "search's check (default --n-samples).",
        min=1,
    )
    allow_vacuous: bool = option(
        False,
        "Save the choice even when plain sampling made no near-copies (a cut of nothing, which proves no protection).",
    )

    def __post_init__(self):
        if self.search not in SEARCHES:
            raise ValueError(f"search is one of {', '.join(SEARCHES)}, got {self.search!r}")
        check_bounds(self)  # finalists >= 0, confirm_samples >= 1, as their options declare
