"""Calibrator: the search order of a calibration (screen, confirmation round, choice), with nothing printed or
written; `fit()` returns a CalibrationResult that prints, saves the run and saves the choice."""

from __future__ import annotations

from cpsample.calibration import search as grid_search
from cpsample.calibration import seek
from cpsample.calibration.goal import Goal
from cpsample.calibration.report import FitReport
from cpsample.calibration.result import CalibrationResult
from cpsample.calibration.search import GridSettings
from cpsample.calibration.settings import SearchSettings
from cpsample.evaluation.honesty import unfit_classifier
from cpsample.models.bundle import resolve_model_dir


class Calibrator:
    """Finds the best-quality setting that meets the goal, by one of two searches:

    - "seek" (calibration/seek.py): at each alpha, the smallest scale that meets the goal, by bisection on probes of
      plain sampling's near-copies, then checked in full on `confirm_samples` fresh images (default: the screen's
      count). The one-stage guard on an unconditional pixel model sampled with DDIM.
    - "grid": a screen of every setting of the grid on the same noise, then (below RELIABLE_IMAGES images) its
      `finalists` best feasible settings and plain again on `confirm_samples` fresh images (default: twice the
      screen's), chosen on the pooled near-copies and the confirmation's FD.

    "auto" seeks where it can and says why not where it cannot.

    `allow_vacuous` lets `save_pretrained` save a cut measured against a plain sampling that made no near-copies.

    The seam for a model adapter and a Judge: the grid still names the model, classifier and quality net, and
    `_screen` / `_confirm` are the only places that sample and measure (through run_grid)."""

    def __init__(self, grid: GridSettings, goal: Goal = Goal(), **how):
        """how: SearchSettings' fields (search, finalists, confirm_samples, allow_vacuous), checked there."""
        self.grid, self.goal, self.how = grid, goal, SearchSettings(**how)

    def fit(self, progress: bool = True, report: FitReport | None = None) -> CalibrationResult:
        """Measure, confirm and choose; `progress` shows a progress bar per round, `report` hears each stage."""
        report = report or FitReport()
        unfit = unfit_classifier(resolve_model_dir(self.grid.classifier, "classifier"))
        if unfit:
            report.warning(unfit)
        if self._seeks(report):
            seeker = seek.Seeker(self.grid, self.goal, self.how.confirm_samples)
            rows, confirmed, chosen, missed = seeker.fit(report, progress)
            how = {"search": "seek", "spent": seeker.spent, "finalists": 0, "confirm_samples": seeker.check_samples}
        else:
            rows = self._screen(progress)
            report.screened(rows, self.grid.n_samples)
            confirmed = self._confirm(rows, progress, report)
            chosen, missed = self._choose(rows, confirmed)
            how = {
                "spent": spent_on_grid(rows, confirmed),
                "finalists": self.how.finalists,
                "confirm_samples": self.how.confirm_samples,
            }
        return CalibrationResult(
            grid=self.grid,
            goal=self.goal,
            allow_vacuous=self.how.allow_vacuous,
            rows=rows,
            confirmed=confirmed,
            chosen=chosen,
            missed=missed,
            unfit=unfit,
            **how,
        )

    def _seeks(self, report: FitReport) -> bool:
        """Whether this calibration seeks; "seek" where it cannot is refused, "auto" says why it takes the grid."""
        if self.how.search == "grid":
            return False
        why_not = seek.why_not_seekable(self.grid, scales_given=self.grid.scales is not None)
        if why_not and self.how.search == "seek":
            raise ValueError(f"the goal-seeking search cannot calibrate this: {why_not}; use search 'grid'")
        if why_not:
            report.note(f"calibrating on the grid: {why_not}")
        return not why_not

    def _screen(self, progress: bool) -> list[dict]:
        return grid_search.run_grid(self.grid, progress=progress)

    def _confirm(self, rows: list[dict], progress: bool, report: FitReport) -> list[dict]:
        """The confirmation round's pooled rows (plain first); empty when the screen had no feasible setting, no
        finalists were asked for, or the screen was large enough to decide alone."""
        goal = self.goal
        screen_choice = grid_search.choose_setting(rows, goal.target, goal.reduction)
        if screen_choice is None or not self.how.finalists or self.grid.n_samples >= grid_search.RELIABLE_IMAGES:
            return []
        confirm_n = self.how.confirm_samples or 2 * self.grid.n_samples
        report.confirming(self.how.finalists, confirm_n, self.grid.seed + grid_search.CONFIRM_SEED_OFFSET)
        confirmed = grid_search.confirm_finalists(
            rows, self.grid, goal.target, goal.reduction, self.how.finalists, confirm_n, progress=progress
        )
        report.confirmed(confirmed, self.grid.n_samples, confirm_n)
        return confirmed

    def _choose(self, rows: list[dict], confirmed: list[dict]) -> tuple[dict | None, str | None]:
        """(the chosen row or None, why it misses the goal or None): the confirmed finalists decide when there are
        any; when none of them kept the cut once pooled, the most protective is kept and said to miss."""
        goal = self.goal
        if not confirmed:
            return grid_search.choose_setting(rows, goal.target, goal.reduction), None
        chosen, kept_the_cut = grid_search.choose_confirmed(confirmed, goal.target, goal.reduction)
        if kept_the_cut:
            return chosen, None
        return chosen, (
            f"no finalist kept {goal.describe()} over {chosen['n']} images; kept the most protective, "
            f"{grid_search.setting_label(chosen)} at {chosen['near_copy_share']:.1%} near-copies vs plain "
            f"{confirmed[0]['near_copy_share']:.1%}. Add larger --scales or --staged-scales, or more --finalists"
        )


def spent_on_grid(rows: list[dict], confirmed: list[dict]) -> dict:
    """Settings and images a grid calibration sampled (each in full: image-steps are images times steps)."""
    images = sum(row["n"] for row in rows) + sum(row["confirmation_n"] for row in confirmed)
    return {"settings": len(rows) + len(confirmed), "images": images}
