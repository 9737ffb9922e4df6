"""What every command module shares: the console, option types and turning user errors into one clear line."""

from __future__ import annotations

import functools
from typing import Annotated

import typer
from rich.console import Console

from cpsample.data import DataError

console = Console(stderr=True, soft_wrap=True)  # never break paths or messages mid-line

Seed = Annotated[int, typer.Option(help="Random seed: same seed, same result.")]
Device = Annotated[str, typer.Option(help="torch device: cpu, cuda, cuda:1 ...")]


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


def run_safely(function):
    """Turn expected user errors into one clear line and exit code 2 instead of a traceback."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except (DataError, FileNotFoundError, FileExistsError, ValueError) as error:
            fail(str(error))

    return wrapper


