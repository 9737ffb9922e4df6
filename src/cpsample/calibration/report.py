"""FitReport: what `Calibrator.fit()` tells while it runs. Light on purpose (no torch), so the command line can
subclass it without loading the calibration."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


class FitReport:
    """What `fit()` tells while it runs, in order (a calibration takes minutes to hours, so the screen's table is
    worth seeing before the confirmation round starts). Warnings and notes go to the `cpsample` log as the rest of
    the library's do; each round's rows reach `table(name, rows, title)`, which does nothing here (`cpsample
    calibrate` prints them)."""

    def warning(self, text: str) -> None:
        """A warning known before anything is sampled (a classifier that never fit)."""
        logger.warning(text)

    def note(self, text: str) -> None:
        """A note on how the calibration goes (the grid taken where the goal-seeking search cannot be)."""
        logger.info(text)

    def table(self, name: str, rows: list[dict], title: str) -> None:
        """A round's rows ("screen", "confirmation" or "check") and what they are, in words."""

    def screened(self, rows: list[dict], n_samples: int) -> None:
        """The screen's rows: plain first, then every setting of the grid on the same noise."""
        probed = "; probes sample plain's near-copies again" if any(row.get("probed") for row in rows) else ""
        self.table("screen", rows, f"screen on {n_samples} images{probed}")

    def confirming(self, finalists: int, n_samples: int, seed: int) -> None:
        """The confirmation round starts: plain and up to `finalists` settings on `n_samples` fresh images."""
        self.note(
            f"confirmation round: plain and the {finalists} best feasible settings again on {n_samples} fresh images "
            f"(seed {seed})"
        )

    def confirmed(self, rows: list[dict], screen_n: int, confirm_n: int) -> None:
        """The confirmation round's rows, each pooled with its screen row."""
        pooled = f"near-copies pooled over {screen_n} + {confirm_n} images"
        self.table("confirmation", rows, f"confirmation: {pooled}, FD and time on the {confirm_n}")

    def checking(self, settings: list[str], n_samples: int, seed: int) -> None:
        """The goal-seeking search's check starts: each found setting in full on `n_samples` fresh images."""
        self.note(f"check: {', '.join(settings)} in full on {n_samples} fresh images (seed {seed})")

    def checked(self, rows: list[dict], n_samples: int) -> None:
        """The check's rows, plain first (a setting that missed the goal is followed by its retry)."""
        plain = rows[0]
        said = f"check: in full on {n_samples} fresh images"
        if plain.get("plain_from") == "screen":
            said += f"; plain is the screen's ({plain['n']} images; FD and time on {n_samples} of them)"
        if any(row["n"] > n_samples for row in rows[1:]):
            said += "; near-copies pooled with the screen's exact counts"
        self.table("check", rows, said + " (the choice is made here)")
