"""Settings declared once: a dataclass field carries its default, its help and how the command line reads it, and
every surface (the Python API, the CLI's options, `cpsample guards`, docs/cli.md) takes them from there."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class TextForm:
    """How the command line writes a value whose type it cannot take as is (a tuple of floats as "0.1,0.3"): parse
    turns the option's text into the value, text the value into the option's text (for --help's default);
    repeatable: the option is given once per item instead."""

    parse: Callable[[Any], Any]
    text: Callable[[Any], Any] = str
    repeatable: bool = False


def option(default: Any = MISSING, help: str = "", *, flag: str | None = None, form: TextForm | None = None, **checks):
    """A documented setting. flag: its CLI name where it is not --field-name; form: how the command line writes it;
    checks: typer.Option's own (min=1 ...). A field without help is not offered on the command line."""
    return field(default=default, metadata={"help": help, "cli": {"flag": flag, "form": form, "checks": checks}})
