"""`cpsample train-classifier` as one call: the recipe for the member count, the negatives of a selective classifier,
the training itself, and what to change when the members were not fitted."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cpsample.provenance import seed_everything
from cpsample.training.classifier import PAPER_LOSS, denoiser_training_set, train_classifier
from cpsample.training.recipes import not_fitted_advice, plan_line, recipe_settings
from cpsample.training.settings import ClassifierTraining, TrainConfig


@dataclass
class ClassifierRun:
    summary: dict
    advice: str | None  # what to change when the members were not fitted; None when they were

    def verdict(self, out) -> str:
        """One line: relabelled images, the low-noise loss against the paper's, where the classifier is."""
        summary = self.summary
        reached = "reached" if summary["reached_paper_loss"] else "did NOT reach"
        loss = f"low-noise loss {summary['low_noise_loss']:.4f} {reached} the paper's < {PAPER_LOSS}"
        return f"relabelled {summary['relabelled']} images; {loss}; saved to {out}"

    @property
    def not_fitted(self) -> str | None:
        """The warning to say loudly when the members were not fitted (None when they were)."""
        if not self.advice:
            return None
        return (
            f"the {self.summary['members']} members were NOT fitted: CPSample is not confident on all of them, so it "
            f"cannot keep samples away from those. To fix: {self.advice}"
        )


def train_classifier_run(
    out: Path,
    model: str,
    settings: ClassifierTraining | None = None,
    resume: bool = False,
    overwrite: bool = False,
    say: Callable[[str], None] = print,
) -> ClassifierRun:
    """Train the random-label classifier of `model`'s members into out (prepared already, see cpsample.runs); `say`
    hears the plan and its time estimate before training starts."""
    settings = settings or ClassifierTraining()
    seed_everything(settings.seed)
    folder, schedule, members, split = denoiser_training_set(model)
    overrides = {name: getattr(settings, name) for name in ("steps", "relabel_after", "batch_size", "lr", "max_t")}
    chosen, recipe = recipe_settings(settings.recipe, len(members), channels=settings.channels, **overrides)
    config = TrainConfig(
        steps=recipe["steps"], batch_size=recipe["batch_size"], lr=recipe["lr"], ema_decay=settings.ema_decay,
        save_every=settings.save_every, seed=settings.seed,
    )  # fmt: skip
    say(plan_line(chosen, recipe, members))
    negatives = None
    if settings.negatives != "none":
        from cpsample.workflows.negatives import load_negatives

        count = settings.negatives_count or len(members)
        negatives = load_negatives(
            settings.negatives, members.images, count, str(folder), members.size, seed=settings.seed
        )
    summary = train_classifier(
        members, split, schedule, out, config,
        label_seed=settings.seed if settings.label_seed is None else settings.label_seed,
        relabel_after=recipe["relabel_after"], block_out_channels=recipe["channels"], resume=resume,
        denoiser_path=str(folder), overwrite=overwrite, negatives=negatives, negatives_source=settings.negatives,
        recorded={"recipe": chosen.name}, max_t=recipe["max_t"], lr_decay=recipe["lr_decay"],
        low_noise_bias=recipe["low_noise_bias"], hard_examples=recipe["hard_examples"],
    )  # fmt: skip
    advice = None if summary["reached_paper_loss"] else not_fitted_advice(summary, recipe, chosen)
    return ClassifierRun(summary, advice)
