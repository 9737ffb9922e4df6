"""How to train CPSample's classifier for N members: network widths, batch, learning rate and schedule, noise levels,
steps. The numbers come from bench/bench_members.py (16x16 MNIST, one CPU thread; docs/results.md).

"paper" is the paper's recipe (every noise level, constant LR): it fits 200 members but not 1,000 in the same
budget. "scaled" trains only where the calibrated guard acts (t <= 500), with a 3x higher LR decaying to the end:
up to 1,000 members with t uniform and 7 steps per member (1,000 fit in 5,000 steps, 6.6 CPU minutes). Above 1,000
it draws low noise more often (t ~ u**3: half the draws at t < 63), where members differ most, and members still
misfit more often (hard examples, re-weighed every 2,000 steps): 4,000 members fit at step 36,000 of a 48,000-step
schedule (51 CPU minutes), where uniform t left them at loss 0.055 after 60. The price, measured on 200 members: at
the same 98% cut, FD +79% against +48% with uniform t (the members are less often confident at t >= 100), so it is
used only where uniform t does not fit in time. "auto" keeps the paper's recipe up to the member count it is
measured to fit.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

RECIPES = ("auto", "paper", "scaled")
PAPER_FITS_UP_TO = 200  # members the paper's recipe was measured to fit (low-noise loss 0.011 at 3,000 steps)
# CPU seconds per step at batch 64, 16x16, widths (32, 64, 64), one thread (bench_members.py); scales with batch
# and pixels, and roughly with the square of the widths.
SECONDS_PER_STEP = 0.082
UNIFORM_FITS_UP_TO = 1000  # members the scaled recipe fits with t uniform on [0, 500] (6.6 CPU min)
# (members, steps) of the scaled recipe's schedules measured to fit (bench_members.py); 1,000: t uniform
SCALED_SCHEDULES = ((1000, 7000), (2000, 13000), (4000, 48000))
REFERENCE_WIDTHS = (32, 64, 64)


@dataclass(frozen=True)
class Recipe:
    name: str
    channels: tuple[int, ...]
    batch_size: int
    lr: float
    max_t: int | None  # train at t <= max_t only (None: every noise level)
    lr_decay: bool  # warm up, then cosine decay to 5% of lr at the last step
    steps: int
    relabel_after: int
    low_noise_bias: float = 1.0  # t drawn as u**bias * (max_t + 1): low noise more often (1: uniform)
    hard_examples: bool = False  # draw members still misfit at low noise more often (re-weighed every 2,000 steps)


def choose_recipe(name: str, members: int) -> Recipe:
    """The recipe `name` ("auto", "paper" or "scaled") resolves to for this many members."""
    if name not in RECIPES:
        raise ValueError(f"--recipe must be one of {', '.join(RECIPES)}, got {name!r}")
    if name == "paper" or (name == "auto" and members <= PAPER_FITS_UP_TO):
        return Recipe("paper", (32, 64, 64), 64, 1e-3, None, False, 6000, 4000)
    steps = scaled_steps(members)
    # Above UNIFORM_FITS_UP_TO members, low noise and misfit members drawn more often: what fits 4,000 in an hour.
    emphasised = members > UNIFORM_FITS_UP_TO
    return Recipe(
        "scaled", (32, 64, 64), 64, 3e-3, 500, True, steps, int(steps * 0.75),
        low_noise_bias=3.0 if emphasised else 1.0, hard_examples=emphasised,
    )  # fmt: skip


def scaled_steps(members: int) -> int:
    """Steps of the scaled recipe for this many members: 7 per member up to 1,000 (1,000 reached loss 0.029 at step
    5,000 of a 7,000-step schedule), then through the schedules measured to fit (SCALED_SCHEDULES), growing as a
    power of N between them and beyond the last (extrapolated there, not measured). At least 3,000, rounded up to
    500."""
    if members <= UNIFORM_FITS_UP_TO:
        return max(3000, int(math.ceil(7 * members / 500) * 500))
    # The segment of anchors around N (beyond the last anchor: the last segment, extrapolated)
    upper = min(bisect.bisect_left([n for n, _ in SCALED_SCHEDULES], members), len(SCALED_SCHEDULES) - 1)
    (small_n, small_steps), (large_n, large_steps) = SCALED_SCHEDULES[upper - 1], SCALED_SCHEDULES[upper]
    growth = math.log(large_steps / small_steps) / math.log(large_n / small_n)
    return int(math.ceil(small_steps * (members / small_n) ** growth / 500 - 1e-9) * 500)


def estimated_seconds(steps: int, batch_size: int, channels, image_size: int, image_channels: int = 1) -> float:
    """CPU seconds of training on one thread, from the measured cost of a reference step."""
    width = sum(c * c for c in channels) / sum(c * c for c in REFERENCE_WIDTHS)
    pixels = (image_size / 16) ** 2
    return steps * SECONDS_PER_STEP * (batch_size / 64) * pixels * width * (1 + 0.1 * (image_channels - 1))


def lr_warmup_cosine(total: int, warmup: int = 200, floor: float = 0.05):
    """step -> multiple of the LR: linear warmup, then cosine decay to `floor` at `total` (and `floor` after it)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def recipe_settings(name: str, members: int, **given) -> tuple[Recipe, dict]:
    """The recipe for this many members and its settings, each overridden by a value given (not None)."""
    recipe = choose_recipe(name, members)
    defaults = {
        "steps": recipe.steps,
        "relabel_after": recipe.relabel_after,
        "batch_size": recipe.batch_size,
        "lr": recipe.lr,
        "channels": recipe.channels,
        "max_t": recipe.max_t,
    }
    unknown = set(given) - set(defaults)
    if unknown:
        raise TypeError(f"not a recipe setting: {', '.join(sorted(unknown))}")
    settings = {key: given[key] if given.get(key) is not None else value for key, value in defaults.items()}
    emphasis = {name: getattr(recipe, name) for name in ("lr_decay", "low_noise_bias", "hard_examples")}
    return recipe, {**settings, **emphasis}


def plan_line(recipe: Recipe, settings: dict, members) -> str:
    """What will train and about how long it takes, said before it starts (`members`: an ImageSet)."""
    seconds = estimated_seconds(
        settings["steps"], settings["batch_size"], settings["channels"], members.size, members.channels
    )
    duration = f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
    return (
        f"recipe {recipe.name} for {len(members)} members: {settings['steps']} steps at batch "
        f"{settings['batch_size']}, about {duration} on one CPU thread (less with more threads or a GPU)"
    )


def not_fitted_advice(summary: dict, settings: dict, recipe: Recipe) -> str:
    """What to change when the members were not fitted (low-noise loss still above the paper's 0.05)."""
    more = settings["steps"] * 2
    advice = [f"train longer: rerun with --resume --steps {more} (continues this run)"]
    if recipe.name == "paper" and summary["members"] > PAPER_FITS_UP_TO:
        advice.append(f"or --recipe scaled (the paper's recipe is measured to fit only up to {PAPER_FITS_UP_TO})")
    if settings["max_t"] is None:
        advice.append("or --max-t 500 (train only where the guard acts)")
    return "; ".join(advice)
