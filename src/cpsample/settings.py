"""Settings declared once: a dataclass field carries its default, its help and how the command line reads it, and
every surface (the Python API, the CLI's options, `cpsample guards`, docs/cli.md) takes them from there."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Callable


@dataclass(frozen=True)
class TextForm:
    """How the command line writes a value whose type it cannot take as is (a tuple of floats as "0.1,0.3"): parse
    turns the option's text into the value, text the value into the option's text (for --help's default);
    repeatable: the option is given once per item instead."""

    parse: Callable[[Any], Any]
    text: Callable[[Any], Any] = str
    repeatable: bool = False


def option(
    default: Any = MISSING,
    help: str = "",
    *,
    flag: str | tuple[str, ...] | None = None,
    form: TextForm | None = None,
    unit: str | None = None,
    **checks,
):
    """A documented setting. flag: its CLI name(s) where it is not --field-name; form: how the command line writes it;
    checks: typer.Option's own (min=1, max=, min_open= ...), the field's range; unit: what a refusal calls the value
    ("width in pixels"). A field without help is not offered on the command line."""
    cli = {"flag": flag, "form": form, "checks": checks, "unit": unit}
    return field(default=default, metadata={"help": help, "cli": cli})


def bounds_text(item) -> str | None:
    """The range a field's option declares (its checks min / max / min_open), as "[0, 0.5]", ">= 0" or "> 0"; None
    for an unbounded field."""
    checks = item.metadata.get("cli", {}).get("checks", {})
    low, high = checks.get("min"), checks.get("max")
    if low is None:
        return None if high is None else f"<= {high:g}"
    if high is not None:
        return f"[{low:g}, {high:g}]"
    return f"{'>' if checks.get('min_open') else '>='} {low:g}"


def out_of_bounds(item, value) -> bool:
    """Whether a number lies outside the range its field's option declares."""
    checks = item.metadata.get("cli", {}).get("checks", {})
    low, high = checks.get("min"), checks.get("max")
    below = low is not None and (value < low or (value == low and checks.get("min_open")))
    return below or (high is not None and value > high)


def check_bounds(settings) -> None:
    """Refuse a number outside the range its field's option declares, naming the field as its flag ("--alpha must lie
    in [0, 0.5], got 0.7"; a field without help, which the command line does not offer, by its name): the range is
    written once, where the option is, for the command line and for Python."""
    for item in fields(settings):
        value = getattr(settings, item.name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and out_of_bounds(item, value):
            cli, named = item.metadata["cli"], item.metadata["cli"]["flag"]
            flag = named if isinstance(named, str) else named[0] if named else f"--{item.name.replace('_', '-')}"
            name = flag if item.metadata["help"] else item.name
            raise ValueError(f"{name} {_must_be(bounds_text(item), cli['unit'])}, got {value}")


def _must_be(bounds: str, unit: str | None = None) -> str:
    """ "[0, 0.5]" -> "must lie in [0, 0.5]"; ">= 0" -> "must be non-negative"; "> 0" -> "must be positive" (with a
    unit: "must be a positive width in pixels")."""
    words = {">= 0": "non-negative", "> 0": "positive"}
    if bounds in words:
        return f"must be a {words[bounds]} {unit}" if unit else f"must be {words[bounds]}"
    return f"must lie in {bounds}" if bounds.startswith("[") else f"must be {bounds}"


# What several commands' settings mean alike, said once (cli/options.py's shared option types read them too).
MAX_SEED = 2**32 - 1  # numpy's limit; torch's is higher, and seeds derived from --seed add small offsets to it
SEED_HELP = "Random seed: same seed, same result."
DEVICE_HELP = "torch device: cpu, cuda, cuda:1 ..."
DENOISING_STEPS_HELP = "Denoising steps."
BATCH_SIZE_HELP = "Images per batch."
DENOISER_HELP = "Denoiser folder (with its split.json), or 'bundled'."
CLASSIFIER_HELP = "CPSample classifier folder, or 'bundled'."
NEAR_COPY_THRESHOLD_HELP = (
    "Near-copy: cosine similarity to the nearest training image above this. Default: the feature space's "
    "(cpsample.evaluation.NEAR_COPY_THRESHOLDS; pixels 0.98)."
)
_CALIBRATED = " Left out: the guard's default; CPSample's come from the classifier's calibration (cpsample calibrate)."
KNOB_HELP = {knob: f"= --option {knob}=VALUE (`cpsample guards`).{_CALIBRATED}" for knob in ("alpha", "scale", "tau")}


def seed_option(default: int = 0):
    return option(default, SEED_HELP, min=0, max=MAX_SEED - 1000)


def device_option(default: str = "cpu"):
    return option(default, DEVICE_HELP)


def threshold_option():
    return option(None, NEAR_COPY_THRESHOLD_HELP)


def parse_widths(text: str, option: str = "--channels") -> tuple[int, ...]:
    """--channels "32,64,64" -> (32, 64, 64), with a clear error for anything else."""
    try:
        widths = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"{option} must be comma-separated integers, got {text!r}") from None
    if not widths or min(widths) <= 0:
        raise ValueError(f"{option} must be positive integers, got {text!r}")
    return widths


def widths_form(option: str) -> TextForm:
    """Block widths as the command line writes them: "32,64,64"."""
    return TextForm(lambda text: parse_widths(text, option), lambda widths: ",".join(str(width) for width in widths))
