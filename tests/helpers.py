"""What the CLI tests share: run a command in-process, checksum folders."""

from __future__ import annotations

import hashlib
from pathlib import Path

from typer.testing import CliRunner

from cpsample.cli.main import app

# A quick sampling run of the bundled model, and a tiny denoiser trained in seconds (with checkpoints to resume).
SAMPLE = ["sample", "--model", "bundled", "-n", "4", "--steps", "3", "--batch-size", "2"]
TRAIN = ["train-denoiser", "--data", "mnist", "--subset", "16", "--steps", "4", "--batch-size", "4", "--channels",
         "8,16", "--save-every", "2"]  # fmt: skip


def cli(*args, traceback_fails: bool = False) -> tuple[int, str]:
    """(exit code, output on one line) of `cpsample ARGS`; with traceback_fails, an exception that is not a clean
    exit (a traceback the user would see) is raised, so the test shows it."""
    result = CliRunner().invoke(app, [str(arg) for arg in args])
    if traceback_fails and result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, " ".join(result.output.split())


def checksums(*folders) -> dict:
    """sha256 of every file under each folder (and the file list): equal before and after means untouched."""
    sums = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            sums[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
    return sums
