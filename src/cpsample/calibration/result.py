"""CalibrationResult: what a calibration measured and chose, the warnings it owes, and its two ways to disk: the run
record (`save`) and the classifier's calibration.json (`save_pretrained`)."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from cpsample.calibration import search
from cpsample.calibration.goal import Goal
from cpsample.calibration.search import GridSettings
from cpsample.evaluation.honesty import vacuous_baseline
from cpsample.evaluation.replication import cut_interval
from cpsample.models.bundle import is_bundled, resolve_model_dir
from cpsample.provenance import write_record
from cpsample.sampling.spec import GuardSpec

# The run's own record in its output folder; the classifier's calibration.json (what guarded commands read) is a
# different file, written by save_pretrained.
RUN_RECORD = "calibration_run.json"


@dataclass
class CalibrationResult:
    """A calibration's measurements (`rows`: the screen, plain first; `confirmed`: the confirmation round, pooled,
    empty without one) and its choice (`chosen`, None when no setting met the goal; `missed`: why the chosen row
    misses the goal after the confirmation round). The rest is derived from them, once, on first use."""

    grid: GridSettings
    goal: Goal
    finalists: int
    confirm_samples: int | None
    allow_vacuous: bool
    rows: list[dict]
    confirmed: list[dict]
    chosen: dict | None
    missed: str | None
    unfit: str | None  # the classifier's training record says it never fit its members' labels
    search: str = "grid"  # how it was found: "seek" (bisection on probes, then a check in full) or "grid"
    spent: dict | None = None  # settings sampled and images drawn ("image_steps" where probes ran part of the way)

    @cached_property
    def cut(self) -> dict | None:
        """The chosen setting's cut of near-copies vs plain on the deciding rows, with its 95% interval."""
        if self.chosen is None:
            return None
        chosen, plain = self.chosen, self.plain
        return cut_interval(chosen["near_copies"], chosen["n"], plain["near_copies"], plain["n"])

    @cached_property
    def deciding(self) -> list[dict]:
        """The rows the choice was made on: the confirmation round's when there was one, else the screen's."""
        return self.confirmed or self.rows

    @cached_property
    def plain(self) -> dict:
        """Plain sampling's row among the deciding rows."""
        return self.deciding[0]

    @cached_property
    def one_stage(self) -> dict | None:
        """The setting the paper's one-stage rule keeps (`--option one_stage=true`, or any knob given)."""
        return search.one_stage_setting(self.rows, self.chosen, self.goal.target, self.goal.reduction)

    @cached_property
    def confirmation(self) -> dict | None:
        """The confirmation round as the run record keeps it (its rows included), or None without one."""
        if not self.confirmed:
            return None
        return {
            "n_samples": max(row["confirmation_n"] for row in self.confirmed),  # the seek's plain is the screen's
            "seed": self.grid.seed + search.CONFIRM_SEED_OFFSET,
            "finalists": [search.setting_label(row) for row in self.confirmed[1:]],
            "rows": self.confirmed,
        }

    @cached_property
    def vacuous(self) -> str | None:
        """Said when plain sampling made no near-copies: a cut of nothing proves no protection."""
        return vacuous_baseline("plain sampling", self.plain["near_copies"], self.plain["n"])

    @property
    def vacuous_refused(self) -> bool:
        """A cut was the goal, there was nothing to cut, and allow_vacuous was not given: nothing may be saved."""
        return bool(self.vacuous and self.goal.reduction and not self.allow_vacuous)

    @cached_property
    def knobs(self) -> dict | None:
        """The one-stage knobs calibration.json records ("settings"), or None when nothing was chosen."""
        return None if self.chosen is None else search.calibrated_settings(self.one_stage, self.grid.tau)

    @cached_property
    def two_stage(self) -> dict | None:
        """cpsample-staged's options when a two-stage row was chosen, else None."""
        return None if self.chosen is None else search.two_stage_calibration(self.chosen, self.grid)

    @cached_property
    def warnings(self) -> list[str]:
        """Protection that may not have happened: a vacuous cut, a classifier that never fit, a guard that never
        fired."""
        found = [warning for warning in (self.vacuous, self.unfit) if warning]
        if self.chosen is not None and self.chosen.get("steps_guided") == 0:
            found.append(f"the chosen setting never guided a step on {self.chosen['n']} images: its cut is chance")
        return found

    @cached_property
    def cost_warnings(self) -> list[str]:
        """Where the chosen setting costs more quality or time than the project aims for."""
        return [] if self.chosen is None else search.cost_warnings(self.chosen, self.plain)

    @cached_property
    def decided_on(self) -> int:
        """Images per setting the choice was made on (pooled over both rounds after a confirmation)."""
        return self.chosen.get("confirmation_n", self.grid.n_samples) if self.chosen else self.grid.n_samples

    @cached_property
    def close_calls(self) -> list[dict]:
        """Other feasible rows too close to the chosen one in FD to tell apart on this many images."""
        if self.chosen is None or self.decided_on >= search.RELIABLE_IMAGES:
            return []
        return search.close_calls(self.deciding, self.chosen, self.goal.target, self.goal.reduction)

    @cached_property
    def close_call_note(self) -> str | None:
        """How to settle the close calls: the same command on more images, narrowed to the candidates."""
        if not self.close_calls:
            return None
        candidates = [self.chosen, *self.close_calls]
        if all(row["guard"] != search.ONE_STAGE for row in candidates):
            candidates.append(self.one_stage)
        without_early = self.grid.early_classifier and not any(r["guard"] == search.TWO_STAGE for r in candidates)
        return (
            f"{', '.join(search.setting_label(row) for row in self.close_calls)} came within "
            f"{search.CLOSE_FD:.0%} of the chosen FD on {self.decided_on} images, closer than FD's seed-to-seed noise "
            f"at this size. To choose between them, rerun the same command with --n-samples {search.RELIABLE_IMAGES} "
            f"{search.narrowed_grid_flags(candidates)}" + (" and without --early-classifier" if without_early else "")
        )

    @cached_property
    def summary(self) -> str | None:
        """One line: the chosen setting (with its check window), its near-copies and FD against plain's."""
        chosen, plain = self.chosen, self.plain
        if chosen is None:
            return None
        max_t = self.knobs["max_t"]
        window = (
            "" if self.two_stage else (" (checks at every step)" if max_t is None else f" (checks at t <= {max_t})")
        )
        fd = chosen["frechet_distance"]
        quality = "" if fd is None else f", FD {fd:.2f} vs {plain['frechet_distance']:.2f}"
        cut = self.cut
        cut_text = (
            "" if cut["cut"] is None else f" (cut {cut['cut']:.1%}, 95% CI {cut['cut_low']:.1%}-{cut['cut_high']:.1%})"
        )
        return (
            f"chosen: {search.setting_label(chosen)}{window}; near-copy share {chosen['near_copy_share']:.1%} vs "
            f"plain {plain['near_copy_share']:.1%} over {chosen['n']} images{cut_text}{quality}"
        )

    @cached_property
    def details(self) -> dict | None:
        """Everything calibration.json records beside the knobs: the model, the goal, what was measured, warnings."""
        if self.chosen is None:
            return None
        grid, confirmation = self.grid, self.confirmation
        return {
            "model": str(resolve_model_dir(grid.model, "denoiser").resolve()),
            "goal": self.goal.as_dict(),
            "measured": self.chosen,
            "cut": self.cut,
            "search": self.search,
            "spent": self.spent,
            "measured_one_stage": self.one_stage,
            "plain": self.plain,
            "n_samples": grid.n_samples,
            "steps": grid.steps,
            "seed": grid.seed,
            "threshold": grid.threshold,
            **({"two_stage": self.two_stage} if self.two_stage else {}),
            **(
                {"prompts": list(grid.prompts), "cfg_scale": grid.cfg_scale, "scheduler": grid.scheduler}
                if grid.latent
                else {}
            ),
            **({"confirmation": {k: v for k, v in confirmation.items() if k != "rows"}} if confirmation else {}),
            **({"missed": self.missed} if self.missed else {}),
            **({"warnings": self.warnings} if self.warnings else {}),
            "cost_warnings": self.cost_warnings,
            **({"close_calls": [search.setting_label(row) for row in self.close_calls]} if self.close_calls else {}),
        }

    def save(self, out: str | Path) -> Path:
        """The run record in `out`: calibration_run.json (the goal, the choice, every row, the confirmation round),
        the rows as calibration.csv / confirmation.csv with their plots, and cpsample.json (how the run was made).
        Written whatever was chosen, refused or missed: the measurements are worth keeping. Returns the record."""
        out, goal = Path(out), self.goal
        out.mkdir(parents=True, exist_ok=True)
        _write_csv(out / "calibration.csv", self.rows)
        if self.confirmed:
            _write_csv(out / "confirmation.csv", self.confirmed)
            limit = search.share_limit(self.confirmed, goal.target, goal.reduction)
            search.plot_grid(self.confirmed, out / "confirmation.png", self.chosen, limit)
        limit = search.share_limit(self.rows, goal.target, goal.reduction)
        search.plot_grid(self.rows, out / "calibration.png", self.chosen, limit)
        confirmation = {"confirmation": self.confirmation} if self.confirmation else {}
        record = out / RUN_RECORD
        record.write_text(
            json.dumps(
                {
                    **goal.as_dict(),
                    "search": self.search,
                    "spent": self.spent,
                    "chosen": self.chosen,
                    "cut": self.cut,
                    "rows": self.rows,
                    **confirmation,
                },
                indent=2,
            )
        )
        settings = {
            **self.grid.__dict__,
            **goal.as_dict(),
            "finalists": self.finalists,
            "confirm_samples": self.confirm_samples,
            "search": self.search,
        }
        write_record(out, "calibrate", settings, {"chosen": self.chosen})
        return record

    def save_pretrained(self, classifier_dir: str | Path | None = None) -> Path:
        """The choice as calibration.json in `classifier_dir` (default: the classifier calibrated), where every
        guarded command finds it. Refused when nothing was chosen, when the cut is vacuous and allow_vacuous was
        not given, and for a bundled classifier by name (it ships its own calibration: pass a copy's folder)."""
        if self.chosen is None:
            raise ValueError(f"no setting met {self.goal.describe()}: there is no choice to save")
        if self.vacuous_refused:
            raise ValueError(f"{self.vacuous}. Nothing was saved; pass allow_vacuous=True to save this choice anyway")
        if classifier_dir is None:
            if is_bundled(self.grid.classifier):
                raise ValueError(
                    "the bundled classifier ships its own calibration, which stays as it is: copy its folder and "
                    "pass the copy as classifier_dir"
                )
            classifier_dir = resolve_model_dir(self.grid.classifier, "classifier")
        return GuardSpec.create(search.ONE_STAGE, **self.knobs).save_pretrained(classifier_dir, self.details)


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as handle:
        columns = list(dict.fromkeys(key for row in rows for key in row))  # a row may lack another's columns
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
