"""The training loop's settings: `TrainConfig`, whose documented fields are every training command's options (each
command gives its own defaults). Light on purpose, so the command line can build its --help from it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from cpsample.settings import BATCH_SIZE_HELP, option, seed_option


@dataclass
class TrainConfig:
    steps: int = option(1000, "Optimizer steps in all (with --resume: the step to train up to).", min=1)
    batch_size: int = option(64, BATCH_SIZE_HELP, min=1)
    lr: float = option(1e-3, "Learning rate (AdamW).")
    ema_decay: float = option(0.999, "Decay of the weights' moving average (EMA); the saved model is the average.")
    save_every: int = option(500, "Save a resumable state every this many steps.")
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
