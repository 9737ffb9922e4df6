"""What the CLI tests share: run a command in-process, checksum folders, hold a run folder's lock from another
process."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from typer.testing import CliRunner

import cpsample
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


# The child: take the lock as a cpsample command does, say so, then run until killed.
HOLD = """
import sys, time
from cpsample.runs import RunFolder
RunFolder(sys.argv[1], sys.argv[2]).prepare()
print("locked", flush=True)
time.sleep(120)
"""


@contextmanager
def run_holding_the_lock(out: Path, command: str):
    """Another process that took --out's lock as a cpsample command does, and keeps it until it is killed."""
    source = str(Path(cpsample.__file__).resolve().parents[1])  # this checkout's cpsample, in the child too
    runner = subprocess.Popen(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {source!r})\n{HOLD}", str(out), command],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert runner.stdout.readline().strip() == "locked", "the holder could not take the lock"
        yield runner
    finally:
        runner.kill()
        runner.wait()
        runner.stdout.close()
