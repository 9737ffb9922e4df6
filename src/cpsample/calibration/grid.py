"""The calibration grid's default values, declared once: `GridSettings` (search.py) and `cpsample calibrate`'s
options both read them. Light on purpose (no torch, no diffusers), so the command line can show them in --help."""

from __future__ import annotations

ALPHAS = (0.001, 0.01, 0.1)
SCALES = (3.0, 10.0, 30.0, 100.0)
# Two stages (cpsample-staged): the early stage's scales, the late stage's on x_t and on x0_hat, and push caps.
EARLY_SCALES = (3.0,)
STAGED_SCALES = (10.0, 30.0)
DENOISED_LATE_SCALES = (10.0, 15.0)
PUSH_CAPS = (None, 1.0, 1.25, 1.5, 2.0)  # None: uncapped, the paper's push
# The goal-seeking search's alphas (calibration/seek.py), tried in turn until one can meet the goal: the smallest
# alpha guides the fewest samples (alpha 0.1 met a 90-95% cut at the least FD on both bundled models, bench/README.md
# Findings 2 and 21), but it never flags some copies (3 of 203 on `bundled`), which caps its cut.
SEEK_ALPHAS = (0.1, 0.2, 0.3, 0.5)
# A Stable Diffusion pipeline's grid: pushes on VAE latents need larger scales. On bundled-t2i the pixel grid's best,
# alpha 0.1 s 100, cut near-copies 93.5%; alpha 0.1 s 150 cut 96.1% on 600 fresh images (docs/text-to-image.md).
LATENT_ALPHAS = (0.1, 0.3)
LATENT_SCALES = (50.0, 150.0, 300.0)


def as_option(values) -> str:
    """A grid as the command line writes it: '3,10,30,100'; 'none' for None."""
    return ",".join("none" if value is None else f"{value:g}" for value in values)


def parse_floats(text: str, option: str, allow_none: bool = False) -> tuple[float, ...]:
    """Comma-separated numbers; with allow_none, 'none' means no value (that part of the grid is skipped)."""
    if allow_none and text.strip().lower() == "none":
        return ()
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"{option} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise ValueError(f"{option} is empty")
    return values


def floats_form(option: str, allow_none: bool = False):
    """A grid option as the command line writes it ("10,30"; with allow_none, "none" for an empty grid)."""
    from functools import partial

    from cpsample.settings import TextForm

    parse = partial(parse_floats, option=option, allow_none=allow_none)
    return TextForm(parse, lambda values: as_option(values) or "none")
