"""FitReport: what `Calibrator.fit()` tells while it runs. Light on purpose (no torch), so the command line can
subclass it without loading the calibration."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


class FitReport:
    """What `fit()` tells while it runs, in order (a calibration takes minutes to hours, so the screen's table is
    worth seeing before the confirmation round starts). Warnings and notes go to the `cpsample` log as the rest of
    the library's do; the tables go nowhere here (`cpsample calibrate` prints each)."""

    def warning(self, text: str) -> None:
        """A warning known before anything is sampled (a classifier that never fit)."""
        logger.warning(text)

    def note(self, text: str) -> None:
        """A note on how the calibration goes (the grid taken where the goal-seeking search cannot be)."""
        logger.info(text)

    def screened(self, rows: list[dict], n_samples: int) -> None:
        """The screen's rows: plain first, then every setting of the grid on the same noise."""

    def confirming(self, finalists: int, n_samples: int, seed: int) -> None:
        """The confirmation round starts: plain and up to `finalists` settings on `n_samples` fresh images."""
        self.note(
            f"confirmation round: plain and the {finalists} best feasible settings again on {n_samples} fresh images "
            f"(seed {seed})"
        )

    def confirmed(self, rows: list[dict], screen_n: int, confirm_n: int) -> None:
        """The confirmation round's rows, each pooled with its screen row."""

    def checking(self, settings: list[str], n_samples: int, seed: int) -> None:
        """The goal-seeking search's check starts: plain and each found setting in full on `n_samples` fresh images."""
        self.note(f"check: plain and {', '.join(settings)} in full on {n_samples} fresh images (seed {seed})")

    def checked(self, rows: list[dict], n_samples: int) -> None:
        """The check's rows, plain first (a setting that missed the goal is followed by its retry)."""
