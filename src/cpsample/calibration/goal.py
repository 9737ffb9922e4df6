"""What a calibration must reach: a cut of near-copies relative to plain sampling, a ceiling on their share, or
both."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cpsample.settings import option


@dataclass(frozen=True)
class Goal:
    """Near-copies cut by at least `reduction` relative to plain sampling (0.95: to a twentieth) and kept at a share
    of at most `target`; None leaves that part out (both None: any setting meets it)."""

    reduction: float | None = option(
        0.95, "Cut near-copies by at least this share relative to plain sampling (0.95: to a twentieth)."
    )
    target: float | None = option(None, "Also keep the near-copy share at most this, e.g. 0.01.")

    def __post_init__(self):
        # named as the CLI names them: calibrate's refusal reads the same from the command line and from Python
        for name, value in (("--target", self.target), ("--reduction", self.reduction)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} is a share in [0, 1], got {value}")

    def as_dict(self) -> dict:
        """{"reduction": ..., "target": ...}, as the run record and calibration.json record the goal."""
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """The goal in words, e.g. "cut >= 90% vs plain and share <= 1.0%"."""
        parts = ([f"cut >= {self.reduction:.0%} vs plain"] if self.reduction is not None else []) + (
            [f"share <= {self.target:.1%}"] if self.target is not None else []
        )
        return " and ".join(parts) or "any setting"
