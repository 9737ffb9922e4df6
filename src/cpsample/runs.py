"""A run's --out folder: the one check every command makes before it writes there, the lock that keeps one run per
folder, and the marker that says cpsample made the folder.

    folder = RunFolder(out, "sample", overwrite=False, inputs=(model, classifier))
    folder.prepare()  # refused with one clear FileExistsError, or checked, locked and marked
    ...               # the run writes into out
    folder.release()  # or release_locks(): every lock this process holds (the CLI does it after each command)

`with RunFolder(...) as out:` does both.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path

from cpsample.provenance import RUN_BOOKKEEPING, recorded_command

SAMPLE_OUTPUTS = ("batches", "grid.png", "samples.npz", "trace.npz", "trace.png", "cpsample.json")
# What each command writes into its --out (glob patterns): --overwrite clears these, and those of the command that
# made what the folder holds, before the run starts, so no stale file of an older run survives next to the new ones.
OUTPUTS = {
    "sample": (*SAMPLE_OUTPUTS, "plain", "private.json"),
    "sample-conditional": (*SAMPLE_OUTPUTS, "private.json"),  # (folders of removed commands, to overwrite)
    "sample-sd": (*SAMPLE_OUTPUTS, "plain", "private.json"),
    "evaluate": (
        "report.html",
        "report.md",
        "report.json",
        "similarity_histogram.png",
        "top_pairs.png",
        "cpsample.json",
    ),
    "attack mia": ("result.json", "roc.png", "cpsample.json"),
    "attack sample-nn": ("result.json", "roc.png", "cpsample.json"),
    "attack side": ("result.json", "pool.png", "attack.png", "pairs.png", "surrogate_classifier", "cpsample.json"),
    "calibrate": (
        "calibration_run.json",
        "calibration.json",  # the run record's name before calibration_run.json, in older run folders
        "calibration.csv",
        "calibration.png",
        "confirmation.csv",
        "confirmation.png",
        "cpsample.json",
    ),
    "demo": (
        "report.html",
        "report.md",
        "report.json",
        "grid_*.png",
        "trace.png",
        "similarity_histogram.png",
        "top_pairs.png",
        "mia_*.png",
        "samples.npz",
        "samples",
        "cpsample.json",
    ),
    "make-tiny-sd": ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler", "cpsample.json"),
    "train-feature-net": ("config.json", "model.safetensors", "cpsample.json"),
}
# Training commands replace their exported files at the end (their train_state is dropped by the run itself); these
# files of an older run would otherwise survive --overwrite and be used with the new model.
TRAINING_STALE = ("calibration.json", "captions.json", "latents.safetensors")
TRAINING_COMMANDS = (
    "train-denoiser",
    "train-conditional",
    "train-classifier",
    "train-latent-classifier",
    "train-t2i",
)
MODEL_COMMANDS = (*TRAINING_COMMANDS, "train-feature-net", "make-tiny-sd")
# The run lock; the marker written into every --out a command accepts (and kept): the folder is cpsample's, so
# --overwrite may clear its outputs later even when the run that made it died before its cpsample.json; and who holds
# the lock (pid, host, command), for the refusal of a second run.
LOCK_FILE, OUT_MARKER, LOCK_HOLDER = RUN_BOOKKEEPING
NEVER = "writes into a model folder (denoiser, classifier or pipeline): pick another --out"


class RunFolder:
    """One command's --out: checked before anything is written, then locked for the run and marked as cpsample's.

    command: the cpsample command that writes there (its name picks its outputs, see OUTPUTS). inputs: the paths
    the command reads (names such as 'bundled' are skipped), which must lie outside the folder."""

    def __init__(self, out, command: str, overwrite: bool = False, resume: bool = False, inputs=()):
        self.out = Path(out)
        self.command = command
        self.overwrite = overwrite
        self.resume = resume
        self.inputs = tuple(inputs)
        self._file_lock = None  # a filelock.FileLock while the folder is locked
        self._created = False  # by this run's lock: then released empty, the folder goes too

    def prepare(self) -> Path:
        """The one check every command makes on --out before it writes anything (then it locks the folder).

        Refused: a file; a folder inside a model, classifier or pipeline folder; such a folder itself (except the
        same training command's own model, replaced with --overwrite or continued with --resume); a folder holding
        anything but this command's own resumable run, unless --overwrite; a folder holding one of the command's
        `inputs`; with --overwrite, a folder cpsample did not make holding files of the command's output names. With
        --overwrite the outputs of the run the folder holds are cleared once the lock is held. Sampling commands
        resume their own unfinished run (batches/) without it."""
        out = self.out
        if out.exists() and not out.is_dir():
            raise FileExistsError(f"--out {out} is a file; pass a folder")
        self._refuse_a_model_around()
        contents = _contents(out)
        if contents:
            self._refuse_what_it_holds(contents)
        check_inputs_outside(out, self.inputs)
        self._lock()
        (out / OUT_MARKER).touch()
        if contents and self.overwrite and not self.resume:
            _clear_outputs(out, self.command)
        return out

    def release(self) -> None:
        """Drop the lock; a folder the lock created that holds nothing else goes too (a run refused after taking
        the lock leaves no empty folder behind). Nothing to do when not locked."""
        if self._file_lock is None:
            return
        if self in _held:
            _held.remove(self)
        # Both files go while the lock is still held, so this never deletes the lock of a run that starts next.
        (self.out / LOCK_HOLDER).unlink(missing_ok=True)
        (self.out / LOCK_FILE).unlink(missing_ok=True)
        self._file_lock.release()
        self._file_lock = None
        if self._created and not _contents(self.out):
            (self.out / OUT_MARKER).unlink(missing_ok=True)
            try:
                self.out.rmdir()
            except OSError:
                pass

    def __enter__(self) -> Path:
        try:
            return self.prepare()
        except BaseException:  # failed after taking the lock (marking or clearing the folder): not left held
            self.release()
            raise

    def __exit__(self, *_) -> None:
        self.release()

    def _refuse_a_model_around(self) -> None:
        for parent in self.out.resolve().parents:
            kind = folder_kind(parent)
            if kind:
                raise FileExistsError(
                    f"--out {self.out} is inside {parent}, which holds {kind}; `cpsample {self.command}` never {NEVER}"
                )

    def _refuse_what_it_holds(self, contents: list[str]) -> None:
        out, command = self.out, self.command
        kind = folder_kind(out)
        own_model = command in MODEL_COMMANDS and (
            recorded_command(out) == command
            or (command in TRAINING_COMMANDS and recorded_command(out) is None and "train_state" in (kind or ""))
        )
        if kind and not own_model:
            raise FileExistsError(f"--out {out} holds {kind}; `cpsample {command}` never {NEVER}")
        what = ", ".join(contents[:3]) + (" ..." if len(contents) > 3 else "")
        if not self.overwrite and not self.resume and not _resumable(out, command, contents):
            advice = (
                "--resume to continue its run, --overwrite to replace it"
                if command in TRAINING_COMMANDS
                else "--overwrite to replace it"
            )
            raise FileExistsError(f"--out {out} already holds {what}; pass {advice}, or pick a new --out")
        if self.overwrite and not self.resume and not made_by_cpsample(out):
            taken = sorted({path.name for pattern in OUTPUTS.get(command, ()) for path in out.glob(pattern)})
            if taken:  # a folder cpsample never wrote into: its files are the user's, whatever their names
                raise FileExistsError(
                    f"--out {out} holds {', '.join(taken)}, which cpsample did not write and "
                    f"`cpsample {command}` would replace; pick a new --out"
                )

    def _lock(self) -> None:
        """One run at a time per --out: an OS lock on LOCK_FILE (filelock), which the kernel drops when the process
        ends, however it ends, so a killed run's lock never blocks the next run. A second run is refused at once
        with one line naming the holder, which writes who it is next to the lock (LOCK_HOLDER)."""
        from filelock import FileLock, Timeout

        out = self.out
        _release_own_leftover(out)
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        lock = FileLock(out / LOCK_FILE, timeout=0, thread_local=False)  # timeout 0: refuse, never wait
        try:
            lock.acquire()
        except Timeout:
            if created:
                _remove_if_empty(out)
            raise FileExistsError(
                f"--out {out} is in use by another run ({_holder(out)}); wait for it to finish or pick another --out"
            ) from None
        self._file_lock, self._created = lock, created
        _held.append(self)
        _write_holder(out / LOCK_HOLDER, self.command)


# The folders this process has locked, in order: release_locks() drops them all, newest first.
_held: list[RunFolder] = []


def release_locks() -> None:
    """Drop the locks this process took (the CLI does it at the end of each command, whatever its outcome)."""
    while _held:
        _held[-1].release()


def folder_kind(folder: Path) -> str | None:
    """What a model, classifier or pipeline folder is, recognised by its files; None for anything else."""
    from cpsample.models.denoiser import DDPM_PIPELINE, pipeline_class

    folder = Path(folder)
    if not folder.is_dir():
        return None
    command = recorded_command(folder)
    # Denoiser folders carry a DDPMPipeline model_index.json too: only another (or unreadable) index is a pipeline.
    if (folder / "model_index.json").exists() and pipeline_class(folder) != DDPM_PIPELINE:
        return "a Stable Diffusion pipeline (model_index.json)"
    if (folder / "unet").is_dir():
        return "a denoiser (unet/)"
    if (folder / "classifier").is_dir():
        return "a classifier (classifier/)"
    if (folder / "scheduler").is_dir():
        return "a model (scheduler/)"
    if (folder / "calibration.json").exists() and command != "calibrate":
        return "a classifier's calibration (calibration.json)"
    if (folder / "train_state").is_dir() or any(folder.glob("train_state.*")):
        return "a training run (train_state/)"
    if command in MODEL_COMMANDS:
        return f"a model made by `cpsample {command}`"
    if (folder / "split.json").exists():
        return "a model (split.json)"
    if (folder / "model.safetensors").exists() and (folder / "config.json").exists():
        return "a model (model.safetensors)"
    return None


def check_inputs_outside(out: Path, inputs) -> None:
    """An input inside --out would be overwritten or cleared by the run that reads it: refused before anything.
    inputs: paths, or names such as 'bundled' (skipped like any path that is not there)."""
    resolved = Path(out).resolve()
    for value in inputs:
        if value is None:
            continue
        path = Path(value)
        if not path.exists():
            continue  # a bundled name, or a path the command itself will report as missing
        where = path.resolve()
        if where == resolved or resolved in where.parents:
            raise FileExistsError(
                f"--out {out} holds {value}, an input of this command; the run would overwrite or "
                "clear it: pick another --out"
            )


def made_by_cpsample(folder: Path) -> bool:
    """A folder a cpsample command wrote into: its marker or record, a sampling run's batches, a training state, or
    the lock of a run that was killed."""
    folder = Path(folder)
    return (
        any((folder / name).exists() for name in (OUT_MARKER, LOCK_FILE, "batches/settings.json", "train_state"))
        or recorded_command(folder) is not None
        or any(folder.glob("train_state.*"))
    )


def _contents(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(path.name for path in folder.iterdir() if path.name not in RUN_BOOKKEEPING)


def _resumable(out: Path, command: str, contents: list[str]) -> bool:
    """A sampling command's own unfinished or finished run with its batches (the sampler checks their settings)."""
    if command != "sample":
        return False
    foreign = [name for name in contents if name not in OUTPUTS[command] and ".tmp" not in name]
    return not foreign and (out / "batches" / "settings.json").exists() and recorded_command(out) in (None, command)


def _clear_outputs(out: Path, command: str) -> None:
    previous = recorded_command(out)
    patterns = set(OUTPUTS.get(command, ()) + OUTPUTS.get(previous, ()))
    if command in TRAINING_COMMANDS:
        patterns |= set(TRAINING_STALE)
    for pattern in sorted(patterns):
        for path in out.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


def _release_own_leftover(out: Path) -> None:
    """This process runs one command at a time: a lock it still holds on `out` is left over from an earlier one."""
    for folder in [folder for folder in _held if folder.out.resolve() == out.resolve()]:
        folder.release()


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty: the holder's lock files are there
        pass


def _write_holder(path: Path, command: str) -> None:
    import socket
    import time

    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "since": time.time()}
    path.write_text(json.dumps(me))


def _holder(folder: Path) -> str:
    """Who holds a folder's lock, as the holder wrote it; one that has not written it yet is starting."""
    try:
        holder = json.loads((folder / LOCK_HOLDER).read_text())
        description = f"`cpsample {holder.get('command', '?')}`, pid {int(holder['pid'])}"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "a run that is starting"
    return description + (f" on {holder['host']}" if holder.get("host") else "")


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
    """One line for an OSError met while a run reads or writes: what failed, on which path, and what to do (the
    command line says it instead of a traceback)."""
    what = error.strerror or str(error)
    where = f"{error.filename}: " if error.filename else ""
    advice = _OS_ADVICE.get(error.errno)
    return f"{where}{what}" + (f"; {advice}" if advice else "")


def user_error_line(error: BaseException) -> str | None:
    """One line for an error the user can fix (bad input, a missing or unwritable path, a full disk, a link cycle),
    or None for anything else (a bug). The command line says the line instead of a traceback."""
    from cpsample.data import DataError

    if isinstance(error, (DataError, FileNotFoundError, FileExistsError, ValueError)):
        return os_error_line(error) if getattr(error, "errno", None) else str(error)  # (the system's own: errno)
    if isinstance(error, OSError):  # full disk, no permission, read-only, a path through a file ...
        return os_error_line(error)
    if isinstance(error, RuntimeError) and str(error).startswith("Symlink loop"):  # pathlib's resolve() of a cycle
        return f"{error}: a symbolic link leads back to itself; fix the link or pick another path"
    if type(error).__name__ == "SafetensorError":  # safetensors' writer says "os error 28" in its own type
        return os_error_line(as_os_error(error))
    return None


def as_os_error(error: BaseException, filename=None) -> BaseException:
    """safetensors' SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)") as
    the OSError it carries, naming `filename`; any other error as it is."""
    if type(error).__name__ != "SafetensorError":
        return error
    found = re.search(r"os error (\d+)", str(error))
    if found is None:
        return OSError(0, f"cannot write a safetensors file ({error})", None if filename is None else str(filename))
    code = int(found.group(1))
    return OSError(code, os.strerror(code), None if filename is None else str(filename))
