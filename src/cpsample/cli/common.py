"""What every command module shares: the console, option types and turning user errors into one clear line."""

from __future__ import annotations

import errno
import functools
import importlib.util
import os
import sys

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cpsample.data import DataError
from cpsample.runs import release_locks

# soft_wrap: never break paths or messages mid-line. In a log file (long calibrations run in the background) rich
# would squeeze tables into 80 columns and cut every cell to "gua…"; there they get room unless COLUMNS says otherwise.
LOG_WIDTH = 200
# Results (tables, summaries, where a run saved what) go to stdout; errors, warnings and notes to stderr, so
# `cpsample guards > table.txt` keeps the table and a log of a long run keeps both.
output = Console(soft_wrap=True, width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else LOG_WIDTH)
console = Console(
    stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() or "COLUMNS" in os.environ else LOG_WIDTH
)


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
            return function(*args, **kwargs)
        except (DataError, FileNotFoundError, FileExistsError, ValueError) as error:
            fail(os_error_line(error) if getattr(error, "errno", None) else str(error))  # (the system's own: errno)
        except OSError as error:  # full disk, no permission, read-only, a path through a file ...: said in one line
            fail(os_error_line(error))
        except RuntimeError as error:
            if not str(error).startswith("Symlink loop"):  # pathlib's resolve() of a link cycle
                raise
            fail(f"{error}: a symbolic link leads back to itself; fix the link or pick another path")
        except Exception as error:
            if type(error).__name__ != "SafetensorError":  # safetensors' writer says "os error 28" in its own type
                raise
            from cpsample.training.loop import as_os_error

            fail(os_error_line(as_os_error(error)))
        finally:
            release_locks()

    return wrapper


# What to do about an OSError, by errno; the rest are said as the system says them.
_OS_ADVICE = {
    errno.ENOSPC: "free some space or pick an --out on another disk, then rerun the same command (a training run "
    "continues from its last saved state with --resume)",
    errno.EDQUOT: "your disk quota is full; free some space, then rerun the same command (a training run continues "
    "from its last saved state with --resume)",
    errno.EFBIG: "a file size limit (ulimit -f) or the file system stops it; raise the limit or pick an --out on "
    "another disk, then rerun the same command (a training run continues with --resume)",
    errno.EACCES: "no permission to write there; pick an --out you can write to",
    errno.EPERM: "not permitted there; pick an --out you can write to",
    errno.EROFS: "that file system is read-only; pick an --out on a writable disk",
    errno.ENOTDIR: "a part of that path is a file, not a folder; pick another path",
    errno.EISDIR: "that is a folder where a file was expected",
    errno.ELOOP: "a symbolic link leads back to itself; fix the link or pick another path",
    errno.ENAMETOOLONG: "pick a shorter path",
    errno.EEXIST: "something is in the way there (a file, or a symbolic link to nothing); remove it or pick another "
    "path",
}


def os_error_line(error: OSError) -> str:
    """One line for an OSError: what failed, on which path, and what to do."""
    what = error.strerror or str(error)
    where = f"{error.filename}: " if error.filename else ""
    advice = _OS_ADVICE.get(error.errno)
    return f"{where}{what}" + (f"; {advice}" if advice else "")


def say_warnings(warnings: list[str]) -> dict:
    """Print each warning loudly (protection that did not happen is never a quiet success); returns them for the
    run's record."""
    for warning in warnings:
        console.print(f"[bold red]warning:[/] {warning}")
    return {"warnings": warnings} if warnings else {}


def parse_widths(text: str) -> tuple[int, ...]:
    """--channels "32,64,64" -> (32, 64, 64), with a clear error for anything else."""
    try:
        widths = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--channels must be comma-separated integers, got {text!r}") from None
    if not widths or min(widths) <= 0:
        raise ValueError(f"--channels must be positive integers, got {text!r}")
    return widths


def loss_table(title: str, summary: dict) -> Table:
    """A trained classifier's loss and accuracy on its training images at each reported noise level."""
    table = Table(title=title)
    for column in ("t", "loss", "accuracy"):
        table.add_column(column, justify="right")
    for row in summary["per_timestep"]:
        table.add_row(str(row["t"]), f"{row['loss']:.4f}", f"{row['accuracy']:.3f}")
    return table


def require_transformers() -> None:
    """Stable Diffusion's text encoder and tokenizer come from transformers, an optional dependency."""
    if importlib.util.find_spec("transformers") is None:
        fail(
            "the Stable Diffusion commands need transformers: pip install 'cpsample[latent]' (or pip install "
            "transformers)"
        )
