"""Settings declared once: a settings dataclass's documented fields become a command's options, with the field's
default, help, checks and text form, and the command gets their values back as the dataclass takes them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import typer
from typer.testing import CliRunner

from cpsample.cli.options import with_settings
from cpsample.settings import option, widths_form


@dataclass
class Toy:
    steps: int = option(5, "Steps to take.", min=1)
    widths: tuple[int, ...] = option((8, 16), "Block widths.", form=widths_form("--widths"))
    samples: int = option(3, "How many.", flag=("--n-samples", "-n"))
    name: str | None = option(None, "A name.")
    hidden: int = 7  # no help: library only


def _app(seen: list, **options) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    @with_settings(Toy, "toy", **options)
    def run(out: Annotated[str, typer.Option()], toy: dict = None, loud: bool = False):
        seen.append((out, Toy(**toy), loud))

    return app


def test_documented_fields_are_options_with_their_defaults_and_help():
    seen = []
    result = CliRunner().invoke(_app(seen), ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for text in ("--steps", "Steps to take.", "--widths", "8,16", "--n-samples", "-n", "--name", "--out", "--loud"):
        assert text in result.output, text
    assert "--hidden" not in result.output  # no help: not offered
    result = CliRunner().invoke(_app(seen), ["--out", "x"])
    assert result.exit_code == 0, result.output
    assert seen[-1] == ("x", Toy(), False)


def test_given_options_reach_the_dataclass_parsed():
    seen = []
    args = ["--out", "x", "--steps", "9", "--widths", "4,4,8", "-n", "2", "--name", "a", "--loud"]
    result = CliRunner().invoke(_app(seen), args)
    assert result.exit_code == 0, result.output
    assert seen[-1] == ("x", Toy(steps=9, widths=(4, 4, 8), samples=2, name="a"), True)


def test_checks_text_forms_command_defaults_and_required_fields():
    seen = []
    refused = CliRunner().invoke(_app(seen), ["--out", "x", "--steps", "0"])
    assert refused.exit_code == 2 and not seen  # typer's own check, from the field's min=1
    bad = CliRunner().invoke(_app(seen), ["--out", "x", "--widths", "4,a"])
    assert isinstance(bad.exception, ValueError) and "--widths must be comma-separated integers" in str(bad.exception)
    assert CliRunner().invoke(_app(seen, steps=11), ["--out", "x"]).exit_code == 0
    assert seen[-1][1].steps == 11  # the command's own default
    missing = CliRunner().invoke(_app(seen, required=("name",)), ["--out", "x"])
    assert missing.exit_code == 2 and "--name" in missing.output
