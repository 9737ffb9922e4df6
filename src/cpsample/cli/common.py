"""What every command module shares: the console, option types and turning user errors into one clear line."""

from __future__ import annotations

import functools
import importlib.util
import inspect
import json
import logging
import os
import sys
from typing import Any, Callable

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cpsample.runs import release_locks, user_error_line

# soft_wrap: never break paths or messages mid-line. In a log file (long calibrations run in the background) rich
# would squeeze tables into 80 columns and cut every cell to "gua…"; there they get room unless COLUMNS says otherwise.
LOG_WIDTH = 200
# Results (tables, summaries, where a run saved what) go to stdout; errors, warnings and notes to stderr, so
# `cpsample guards > table.txt` keeps the table and a log of a long run keeps both.
output = Console(soft_wrap=True, width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else LOG_WIDTH)
console = Console(
    stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() or "COLUMNS" in os.environ else LOG_WIDTH
)


class Results:
    """What a command prints on stdout. For a person: tables and summary lines as they come. With `--json`: nothing
    until the command ends, then one JSON object of the same results (raw numbers, not formatted cells)."""

    as_json = False
    collected: dict[str, Any] = {}

    @classmethod
    def start(cls, as_json: bool) -> None:
        cls.as_json, cls.collected = as_json, {}

    @classmethod
    def finish(cls) -> None:
        if cls.as_json and cls.collected:
            sys.stdout.write(json.dumps(cls.collected, indent=2, default=str) + "\n")
        cls.reset()

    @classmethod
    def reset(cls) -> None:
        cls.as_json, cls.collected = False, {}  # one command per invocation: the next starts plain


def parse_columns(text: str) -> list[tuple[str, str, str]]:
    """ "AUC=auc:.3f | n" -> [("AUC", "auc", ".3f"), ("n", "n", "")]: header=key:format (format as format()
    takes it, "" = as is), key a dotted path into the row."""
    columns = []
    for part in text.split(" | "):
        header, _, rest = part.strip().partition("=")
        key, _, spec = (rest or header).partition(":")
        columns.append((header.partition(":")[0], key, spec))
    return columns


def show_table(name: str, title: str, rows, columns: str, bold: str | None = None, drop_empty: bool = False) -> None:
    """Print rows as a table of the columns given as text (parse_columns; None cells as "-"), a row in bold where
    its key `bold` is true, and with drop_empty without the columns no row has a value in; with --json, collect the
    raw values under `name`."""
    columns = parse_columns(columns)
    if drop_empty:
        columns = [column for column in columns if any(lookup(row, column[1]) is not None for row in rows)]
    values = [[lookup(row, key) for _, key, _ in columns] for row in rows]
    if Results.as_json:
        keys = [key for _, key, _ in columns]
        Results.collected[name] = {"title": title, "rows": [dict(zip(keys, row)) for row in values]}
        return
    table = Table(title=title)
    for index, (header, _, _) in enumerate(columns):
        prose = any(isinstance(row[index], str) and len(row[index]) > 30 for row in values)  # reads better left
        table.add_column(header, justify="left" if prose else "right")
    for row, cells in zip(rows, values):
        formatted = ["-" if v is None else format(v, spec) for v, (_, _, spec) in zip(cells, columns)]
        table.add_row(*formatted, style="bold" if bold and lookup(row, bold) else None)
    output.print(table)


def lookup(row, path: str):
    """row["a"]["b"] or row.a.b for the path "a.b"; None where a part is missing."""
    for part in path.split("."):
        row = row.get(part) if isinstance(row, dict) else getattr(row, part, None)
    return row


def show(name: str, text: str, value: Any = None) -> None:
    """A result line for a person; with --json, `value` (or the text) under `name`."""
    if Results.as_json:
        Results.collected[name] = text if value is None else value
    else:
        output.print(text)


def call_with(function: Callable, options: dict, **given):
    """Call a library function with the command's options of the same names (the CLI and the Python API share one
    vocabulary), plus what is given explicitly."""
    accepted = inspect.signature(function).parameters
    chosen = {name: value for name, value in options.items() if name in accepted and name not in given}
    return function(**chosen, **given)


class ConsoleLogHandler(logging.Handler):
    """The library's and the CLI's diagnostics on stderr, one line each: "note:" (info), "warning:", "error:"."""

    LABELS = {logging.INFO: "[yellow]note:[/]", logging.WARNING: "[bold red]warning:[/]"}

    def emit(self, record: logging.LogRecord) -> None:
        label = self.LABELS.get(record.levelno, "[bold red]error:[/]" if record.levelno > logging.WARNING else "")
        console.print(f"{label} {escape(record.getMessage())}".strip())


def configure_logging() -> None:
    """cpsample's loggers say notes and warnings on stderr (the console resolves sys.stderr at each line)."""
    logger = logging.getLogger("cpsample")
    if not any(isinstance(handler, ConsoleLogHandler) for handler in logger.handlers):
        logger.addHandler(ConsoleLogHandler())
    logger.setLevel(logging.INFO)


log = logging.getLogger("cpsample.cli")


def check_device_option(device: str) -> None:
    """--device checked before anything is written: a torch device that can hold a model (not 'meta')."""
    from cpsample.sampling.pipeline import check_device

    check_device(device)


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}")  # a path like data.npz[images] is not markup
    raise typer.Exit(code=2)


def run_safely(function):
    """Turn expected user errors into one clear line and exit code 2 instead of a traceback."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            result = function(*args, **kwargs)
            Results.finish()
            return result
        except typer.Exit:
            Results.finish()  # what was measured before a verdict such as "no setting met the goal"
            raise
        except Exception as error:
            line = user_error_line(error)
            if line is None:  # a bug: its traceback is worth seeing
                raise
            fail(line)
        finally:
            release_locks()
            Results.reset()

    return wrapper


def say_warnings(warnings: list[str]) -> None:
    """Say each warning loudly (protection that did not happen is never a quiet success); the run's record keeps
    them already."""
    for warning in warnings:
        log.warning(warning)


def say_trained(summary: dict, out, images: str = "images", note: str = "") -> None:
    """One line for a finished training run: its steps, members, size and time, and where it was saved."""
    size = f"{summary['parameters'] / 1e6:.2f}M parameters, {summary['seconds_this_run']:.0f}s"
    show(
        "summary",
        f"trained {summary['steps']} steps on {summary['members']} {images} ({size}){note}; saved to {out}",
        summary,
    )


def show_loss_table(title: str, summary: dict) -> None:
    """A trained classifier's loss and accuracy on its training images at each reported noise level."""
    show_table("per_timestep", title, summary["per_timestep"], "t | loss:.4f | accuracy:.3f")


def require_transformers() -> None:
    """Stable Diffusion's text encoder and tokenizer come from transformers, an optional dependency."""
    if importlib.util.find_spec("transformers") is None:
        fail(
            "the Stable Diffusion commands need transformers: pip install 'cpsample[latent]' (or pip install "
            "transformers)"
        )
