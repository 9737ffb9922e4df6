"""The training loop's settings: `TrainConfig`, whose documented fields are every training command's options (each
command gives its own defaults). Light on purpose, so the command line can build its --help from it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from cpsample.settings import BATCH_SIZE_HELP, option, seed_option, widths_form

EMA_HELP = "Decay of the weights' moving average (EMA); the saved model is the average."
SAVE_EVERY_HELP = "Save a resumable state every this many steps."


@dataclass
class TrainConfig:
    steps: int = option(1000, "Optimizer steps in all (with --resume: the step to train up to).", min=1)
    batch_size: int = option(64, BATCH_SIZE_HELP, min=1)
    lr: float = option(1e-3, "Learning rate (AdamW).")
    ema_decay: float = option(0.999, EMA_HELP)
    save_every: int = option(500, SAVE_EVERY_HELP)
    mixed_precision: str = option("no", "no, fp16 or bf16 (GPU only).")  # accelerate's
    seed: int = seed_option()
    log_every: int = 50
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "ema_decay", "grad_clip"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number, got {getattr(self, name)}")
        if self.lr <= 0 or not 0.0 <= self.ema_decay <= 1.0:
            raise ValueError(f"--lr must be positive and --ema-decay in [0, 1], got {self.lr} and {self.ema_decay}")


@dataclass
class ClassifierTraining:
    """`train-classifier`'s settings: a recipe (training/recipes.py) and what is given to override it (None: the
    recipe's), the labels' seed and the negatives of a selective classifier."""

    recipe: str = option(
        "auto",
        "Training recipe: 'paper' (every noise level, 6,000 steps: fits about 200 members), 'scaled' (t <= 500, "
        "higher decaying LR, steps growing with the members; above 1,000 members low noise and misfit members drawn "
        "more often: fits 1,000 and 4,000) or 'auto' (paper up to 200 members, scaled above). Options below given "
        "explicitly override the recipe's.",
    )
    steps: int | None = option(None, "Optimizer steps in all (default: the recipe's).", min=1)
    relabel_after: int | None = option(None, "Step at which images still not fitted get a common label.")
    batch_size: int | None = option(None, BATCH_SIZE_HELP, min=1)
    lr: float | None = option(None, "Learning rate (AdamW; default: the recipe's).")
    ema_decay: float = option(0.999, EMA_HELP)
    channels: tuple[int, ...] | None = option(None, "Block widths, comma-separated.", form=widths_form("--channels"))
    label_seed: int | None = option(None, "Seed of the random labels (default: --seed).")
    negatives: str = option(
        "none",
        "Non-member images trained towards p = 0.5, so the guard acts only near members: 'none' (the paper's "
        "classifier), 'samples' (the denoiser's own non-copy samples) or a data spec (folder, .npz, 'mnist').",
    )
    negatives_count: int | None = option(None, "How many negatives (default: as many as members).")
    max_t: int | None = option(
        None,
        "Train only at noise levels t <= MAX_T (e.g. 100 for a classifier that only judges denoised estimates: the "
        "early stage of two-stage CPSample); CPSample then never checks it above MAX_T. Default: the recipe's "
        "(paper: every t).",
    )
    save_every: int = option(500, SAVE_EVERY_HELP)
    seed: int = seed_option()
