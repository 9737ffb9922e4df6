"""The demo's settings: `DemoSettings`, whose documented fields are also `cpsample demo`'s options. Light on purpose
(torch loads inside its check), so the command line can build its --help from it."""

from __future__ import annotations

from dataclasses import dataclass

from cpsample.settings import (
    BATCH_SIZE_HELP,
    CLASSIFIER_HELP,
    DENOISER_HELP,
    DENOISING_STEPS_HELP,
    KNOB_HELP,
    device_option,
    option,
    seed_option,
    threshold_option,
)


@dataclass
class DemoSettings:
    """Plain vs CPSample vs rejection sampling on one model: what is sampled and measured."""

    n_samples: int = option(500, "Images per method.", min=1)
    # None: the classifier's calibration (calibration.json next to it, as `cpsample calibrate` writes it).
    alpha: float | None = option(None, KNOB_HELP["alpha"])
    scale: float | None = option(None, KNOB_HELP["scale"])
    tau: float | None = option(None, KNOB_HELP["tau"])
    steps: int = option(50, DENOISING_STEPS_HELP, min=1)
    threshold: float | None = threshold_option()
    mia_members: int = option(200, "Members attacked by membership inference (0 skips it).")
    model: str = option("bundled", DENOISER_HELP)
    classifier: str = option("bundled", CLASSIFIER_HELP)
    one_stage_row: bool = option(
        True, "Where the classifier's calibration chose two stages, also sample the paper's one-stage rule."
    )
    batch_size: int = option(250, BATCH_SIZE_HELP, min=1)
    device: str = device_option()
    seed: int = seed_option()
    scheduler: str = "ddim"
    features: str = "pixels"

    def __post_init__(self):
        from cpsample.evaluation.nearcopy import resolve_threshold

        self.threshold = resolve_threshold(self.threshold, self.features)
