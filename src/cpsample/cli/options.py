"""Option types every command shares, one per meaning: name, help and checks declared once (defaults stay with each
command). Commands read them as `opt.Seed`, `opt.Device` ..."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from pathlib import Path
from typing import Annotated, Optional

import typer

from cpsample.settings import (
    DENOISER_HELP,
    DEVICE_HELP,
    KNOB_HELP,
    MAX_SEED,
    SEED_HELP,
)

Seed = Annotated[int, typer.Option(min=0, max=MAX_SEED - 1000, help=SEED_HELP)]
Device = Annotated[str, typer.Option(help=DEVICE_HELP)]

# Options every training command shares (defaults stay with each command).
ImageSize = Annotated[Optional[int], typer.Option(help="Resize images to this square size.")]
Subset = Annotated[
    Optional[int], typer.Option(help="Train on this many images picked at random (members); the rest are non-members.")
]
Channels = Annotated[str, typer.Option(help="Block widths, comma-separated.")]
Resume = Annotated[bool, typer.Option(help="Continue the run in --out after a kill, losing no finished step.")]
Trace = Annotated[
    bool,
    typer.Option(
        help="Also write trace.npz / trace.png: the classifier's verdict on every sample. Private: never share it."
    ),
]
Overwrite = Annotated[
    bool, typer.Option(help="Replace what --out already holds (a model folder is never sampled into).")
]

# Options several commands share with one meaning (defaults stay with each command).
Denoiser = Annotated[str, typer.Option(help=DENOISER_HELP)]
LabelSeed = Annotated[Optional[int], typer.Option(help="Seed of the random labels (default: --seed).")]
AttackOut = Annotated[Path, typer.Option(help="Output folder: result.json, roc.png, cpsample.json.")]

# Shorthands for the chosen guard's most used options (= --option NAME=VALUE): what they mean, and their defaults,
# are declared once, in the guard's Options (`cpsample guards`). Left out, CPSample's come from the classifier's
# calibration.json (written by `cpsample calibrate`), else the paper's setting, with a note.
Alpha = Annotated[Optional[float], typer.Option(help=KNOB_HELP["alpha"])]
Scale = Annotated[Optional[float], typer.Option(help=KNOB_HELP["scale"])]
Tau = Annotated[Optional[float], typer.Option(help=KNOB_HELP["tau"])]


GuardOption = Annotated[
    Optional[list[str]],
    typer.Option(
        "--option",
        "-o",
        help="Any option of the chosen guard as NAME=VALUE (repeatable); `cpsample guards` lists them all.",
    ),
]


def with_settings(cls, into: str, *, skip: tuple[str, ...] = (), required: tuple[str, ...] = (), **cli_defaults):
    """Offer every documented field of the settings dataclass `cls` as an option of the decorated command (name,
    default, help and checks as the field declares them, so a knob is declared once, in the library) and hand the
    command their values as one dict, its parameter `into`. skip: fields the command sets itself; required: fields
    the command line must give; cli_defaults: a command's own default for a field (None: resolved by the library)."""
    documented = [item for item in dataclasses.fields(cls) if item.metadata.get("help") and item.name not in skip]
    hints = typing.get_type_hints(cls)

    def parameter(item) -> inspect.Parameter:
        cli, form = item.metadata["cli"], item.metadata["cli"]["form"]
        default = ... if item.name in required else cli_defaults.get(item.name, item.default)
        annotation = hints[item.name]
        if form is not None:  # the option takes text (or repeated text) and the field gets form.parse(text)
            annotation = Optional[list[str]] if form.repeatable else Optional[str]
            default = None if default is None or form.repeatable else form.text(default)
        flags = (cli["flag"],) if isinstance(cli["flag"], str) else cli["flag"] or ()
        option = typer.Option(*flags, help=item.metadata["help"], **cli["checks"])
        return inspect.Parameter(item.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                 annotation=Annotated[annotation, option])  # fmt: skip

    def value(item, given):
        form = item.metadata["cli"]["form"]
        if form is None:
            return given
        return item.default if given is None else form.parse(given)  # left out: the field's own default

    def decorate(command):
        own = list(inspect.signature(command, eval_str=True).parameters.values())
        at = [p.name for p in own].index(into)  # the settings' options stand where `into` stands
        offered = own[:at] + [parameter(item) for item in documented] + own[at + 1 :]

        @functools.wraps(command)
        def wrapper(**given):
            values = {item.name: value(item, given.pop(item.name)) for item in documented}
            return command(**given, **{into: values})

        wrapper.__signature__ = inspect.Signature([p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in offered])
        return wrapper

    return decorate
