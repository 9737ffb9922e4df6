"""What every command module shares: the console, option types and turning user errors into one clear line."""

from __future__ import annotations

import errno
import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from cpsample.data import DataError
from cpsample.data.split import images_digest
from cpsample.provenance import RUN_BOOKKEEPING

# soft_wrap: never break paths or messages mid-line. In a log file (long calibrations run in the background) rich
# would squeeze tables into 80 columns and cut every cell to "gua…"; there they get room unless COLUMNS says otherwise.
LOG_WIDTH = 200
console = Console(
    stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() or "COLUMNS" in os.environ else LOG_WIDTH
)

MAX_SEED = 2**32 - 1  # numpy's limit; torch's is higher, and seeds derived from --seed add small offsets to it
Seed = Annotated[int, typer.Option(min=0, max=MAX_SEED - 1000, help="Random seed: same seed, same result.")]
Device = Annotated[str, typer.Option(help="torch device: cpu, cuda, cuda:1 ...")]

# Options every training command shares (defaults stay with each command).
ImageSize = Annotated[Optional[int], typer.Option(help="Resize images to this square size.")]
Subset = Annotated[
    Optional[int], typer.Option(help="Train on this many images picked at random (members); the rest are non-members.")
]
Steps = Annotated[int, typer.Option(min=1, help="Optimizer steps in all (with --resume: the step to train up to).")]
BatchSize = Annotated[int, typer.Option(min=1)]
Channels = Annotated[str, typer.Option(help="Block widths, comma-separated.")]
MixedPrecision = Annotated[str, typer.Option(help="no, fp16 or bf16 (GPU only).")]
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

# CPSample's three knobs, shared by every command that samples or attacks with the guard. Left out, they come from
# the classifier's calibration.json (written by `cpsample calibrate`), else 0.1 / 10 / 0.001 with a note.
_CALIBRATED = " Default: the classifier's calibration (cpsample calibrate)."
Alpha = Annotated[
    Optional[float], typer.Option(help="CPSample: guide when p(y|x_t) > 1 - alpha for either label." + _CALIBRATED)
]
Scale = Annotated[Optional[float], typer.Option(help="CPSample guidance scale s." + _CALIBRATED)]
Tau = Annotated[
    Optional[float],
    typer.Option(help="CPSample: log(tau + p) keeps the gradient finite (paper: 0.001)." + _CALIBRATED),
]

# Left out, a near-copy threshold resolves through the one yardstick, so CLI and library defaults agree.
NearCopyThreshold = Annotated[
    Optional[float],
    typer.Option(
        help=(
            "Near-copy: cosine similarity to the nearest training image above this. Default: the feature space's "
            "(cpsample.evaluation.NEAR_COPY_THRESHOLDS; pixels 0.98)."
        )
    ),
]


GuardOption = Annotated[
    Optional[list[str]],
    typer.Option(
        "--option",
        "-o",
        help="Any option of the chosen guard as NAME=VALUE (repeatable); `cpsample guards` lists them all.",
    ),
]


def parse_guard_options(guard: str, items: list[str] | None, **flags) -> dict:
    """--option NAME=VALUE strings typed by the guard's own declaration, merged with the dedicated flags (None: unset).

    The values are validated when the guard is built; a name the guard does not have is refused there."""
    import typing

    from cpsample.sampling.guards import guard_class

    options_class = guard_class(guard).Options
    types = typing.get_type_hints(options_class)
    parsed = {}
    for item in items or []:
        name, separator, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not separator or not name:
            raise ValueError(f"--option {item!r}: write it as NAME=VALUE, e.g. --option alpha=0.1")
        if name not in types:
            known = ", ".join(options_class.names()) or "none"
            raise ValueError(f"guard {guard!r} has no option {name} (its options: {known})")
        parsed[name] = _typed(name, text.strip(), types[name])
    given = {name: value for name, value in flags.items() if value is not None}
    both = sorted(set(given) & set(parsed))
    if both:
        raise ValueError(f"{', '.join(both)} given both as a flag and as --option; give it once")
    return {**given, **parsed}


def _typed(name: str, text: str, declared):
    """'0.1' -> 0.1 for a float option, 'true' -> True for a bool one, 'none' -> None where None is allowed."""
    import types
    import typing

    choices = (
        typing.get_args(declared)
        if isinstance(declared, types.UnionType) or typing.get_origin(declared) is typing.Union
        else (declared,)
    )
    if text.lower() == "none" and type(None) in choices:
        return None
    kind = next(choice for choice in choices if choice is not type(None))
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        return kind(text)
    except ValueError:
        raise ValueError(f"--option {name}={text}: expected {kind.__name__}") from None


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


def guard_stats(trace: dict) -> dict:
    """How often a guard acted: share of (step, sample) pairs and share of samples guided at least once."""
    from cpsample.evaluation.measures import GuardActivity

    return GuardActivity.of_trace(trace)


def parse_widths(text: str) -> tuple[int, ...]:
    """--channels "32,64,64" -> (32, 64, 64), with a clear error for anything else."""
    try:
        widths = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--channels must be comma-separated integers, got {text!r}") from None
    if not widths or min(widths) <= 0:
        raise ValueError(f"--channels must be positive integers, got {text!r}")
    return widths


def prepare_training(
    data: str, image_size: int | None, subset: int | None, seed: int, init: str | None = None, **loop_settings
):
    """The start of every denoiser training command: seed, load the data, fix the member split, loop settings.

    With `init` (a model to fine-tune), the images that model was pretrained on are kept out of the split."""
    from cpsample.data import load_dataset, make_split
    from cpsample.data.sources import resize_set
    from cpsample.provenance import seed_everything
    from cpsample.training.loop import TrainConfig

    config = TrainConfig(seed=seed, **loop_settings)  # bad loop settings fail before the data loads
    if image_size is not None and image_size < 1:
        raise ValueError(f"--image-size must be at least 1, got {image_size}")
    seed_everything(seed)
    data = absolute_data_spec(data)
    dataset = load_dataset(data)
    pretraining = None if init is None else pretraining_record(init, data)
    split = make_split(len(dataset), subset, seed, data, pretraining=pretraining)
    # Hashed before resizing: the source pixels are exact on every machine, a resize may differ in the last bit.
    split.members_sha256 = images_digest(dataset.take(split.members).images)
    return resize_set(dataset, image_size).take(split.members), split, config


def pretraining_record(init: str, data: str) -> dict:
    """What a model to fine-tune was trained on, and which images of `data` it saw (when it came from the same data).

    A folder without cpsample's records (any diffusers UNet2DModel folder) counts as pretrained on other data."""
    from cpsample.data import Split

    folder = Path(init)
    record, split_path = folder / "cpsample.json", folder / "split.json"
    if not record.exists() or not split_path.exists():
        return {"model": str(folder.resolve()), "data": None, "indices": []}
    pretrained_on = json.loads(record.read_text())["settings"].get("data")
    split = Split.load(split_path)
    seen = set(split.members) | set((split.pretraining or {}).get("indices", []))
    same_data = pretrained_on is not None and absolute_data_spec(pretrained_on) == data
    return {"model": str(folder.resolve()), "data": pretrained_on, "indices": sorted(seen) if same_data else []}


def absolute_data_spec(data: str) -> str:
    """A bundled name as is, a path made absolute: the record must find the data from any working directory."""
    from cpsample.data import BUNDLED

    return data if data in BUNDLED else str(Path(data).resolve())


SAMPLE_OUTPUTS = ("batches", "grid.png", "samples.npz", "trace.npz", "trace.png", "cpsample.json")
# What each command writes into its --out (glob patterns): --overwrite clears these, and those of the command that
# made what the folder holds, before the run starts, so no stale file of an older run survives next to the new ones.
OUTPUTS = {
    "sample": SAMPLE_OUTPUTS,
    "sample-conditional": (*SAMPLE_OUTPUTS, "private.json"),
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
        "calibration.json",
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
TRAINING_COMMANDS = ("train-denoiser", "train-conditional", "train-classifier", "train-latent-classifier")
MODEL_COMMANDS = (*TRAINING_COMMANDS, "train-feature-net", "make-tiny-sd")
# The run lock, and the marker written into every --out a command accepts (and kept): the folder is cpsample's, so
# --overwrite may clear its outputs later even when the run that made it died before its cpsample.json.
LOCK_FILE, OUT_MARKER = RUN_BOOKKEEPING
NEVER = "writes into a model folder (denoiser, classifier or pipeline): pick another --out"


def folder_kind(folder: Path) -> str | None:
    """What a model, classifier or pipeline folder is, recognised by its files; None for anything else."""
    from cpsample.models.denoiser import DDPM_PIPELINE, pipeline_class

    folder = Path(folder)
    if not folder.is_dir():
        return None
    command = _record_command(folder)
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


def prepare_out(out: Path, command: str, overwrite: bool = False, resume: bool = False, inputs=()) -> Path:
    """The one check every command makes on --out before it writes anything (then it locks the folder for the run).

    Refused: a file; a folder inside a model, classifier or pipeline folder; such a folder itself (except the same
    training command's own model, replaced with --overwrite or continued with --resume); a folder holding anything
    but this command's own resumable run, unless --overwrite; a folder holding one of the command's `inputs` (paths;
    names such as 'bundled' are skipped); with --overwrite, a folder cpsample did not make holding files of the
    command's output names. With --overwrite the outputs of the run the folder holds are cleared once the lock is
    held. Sampling commands resume their own unfinished run (batches/) without it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; pass a folder")
    resolved = out.resolve()
    for parent in resolved.parents:
        kind = folder_kind(parent)
        if kind:
            raise FileExistsError(
                f"--out {out} is inside {parent}, which holds {kind}; `cpsample {command}` never {NEVER}"
            )
    contents = _contents(out)
    training = command in MODEL_COMMANDS
    if contents:
        kind = folder_kind(out)
        own_model = training and (
            _record_command(out) == command
            or (command in TRAINING_COMMANDS and _record_command(out) is None and "train_state" in (kind or ""))
        )
        if kind and not own_model:
            raise FileExistsError(f"--out {out} holds {kind}; `cpsample {command}` never {NEVER}")
        what = ", ".join(contents[:3]) + (" ..." if len(contents) > 3 else "")
        if not overwrite and not resume and not _resumable(out, command, contents):
            advice = (
                "--resume to continue its run, --overwrite to replace it"
                if command in TRAINING_COMMANDS
                else "--overwrite to replace it"
            )
            raise FileExistsError(f"--out {out} already holds {what}; pass {advice}, or pick a new --out")
        if overwrite and not resume and not made_by_cpsample(out):
            taken = sorted({path.name for pattern in OUTPUTS.get(command, ()) for path in out.glob(pattern)})
            if taken:  # a folder cpsample never wrote into: its files are the user's, whatever their names
                raise FileExistsError(
                    f"--out {out} holds {', '.join(taken)}, which cpsample did not write and "
                    f"`cpsample {command}` would replace; pick a new --out"
                )
    check_inputs_outside(out, inputs)
    _lock(out, command)
    (out / OUT_MARKER).touch()
    if contents and overwrite and not resume:
        _clear_outputs(out, command)
    return out


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
        or _record_command(folder) is not None
        or any(folder.glob("train_state.*"))
    )


def _contents(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(path.name for path in folder.iterdir() if path.name not in RUN_BOOKKEEPING)


def _resumable(out: Path, command: str, contents: list[str]) -> bool:
    """A sampling command's own unfinished or finished run with its batches (the sampler checks their settings)."""
    if command not in ("sample", "sample-conditional"):
        return False
    foreign = [name for name in contents if name not in OUTPUTS[command] and ".tmp" not in name]
    return not foreign and (out / "batches" / "settings.json").exists() and _record_command(out) in (None, command)


def _clear_outputs(out: Path, command: str) -> None:
    import shutil

    previous = _record_command(out)
    patterns = set(OUTPUTS.get(command, ()) + OUTPUTS.get(previous, ()))
    if command in TRAINING_COMMANDS:
        patterns |= set(TRAINING_STALE)
    for pattern in sorted(patterns):
        for path in out.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


_held_locks: list[tuple[Path, bool]] = []


def _lock(out: Path, command: str) -> None:
    """One run at a time per --out: a lock file naming the process that holds it. A lock left by a process that
    is gone (killed) is taken over; one held by a live process is refused with one line."""
    import socket
    import time

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "since": time.time()}
    for _ in range(3):
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _live_holder(path)
            if holder is None:
                path.unlink(missing_ok=True)
                continue
            if created:
                out.rmdir()
            raise FileExistsError(
                f"--out {out} is in use by another run ({holder}); wait for it to finish or pick "
                f"another --out (if no run is going on, delete {path})"
            ) from None
        with os.fdopen(handle, "w") as file:
            file.write(json.dumps(me))
        _held_locks.append((path, created))
        return
    raise FileExistsError(f"--out {out}: cannot take the lock {path}; delete it if no run is going on")


def _live_holder(path: Path) -> str | None:
    """Who holds a lock, or None when its process is gone (or is this one)."""
    import socket
    import time

    try:
        holder = json.loads(path.read_text())
        pid, host = int(holder["pid"]), holder.get("host")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        # being written by a run that is starting right now, or garbage: garbage older than a minute is stale
        try:
            return None if time.time() - path.stat().st_mtime > 60 else "a run that is starting"
        except FileNotFoundError:
            return None
    description = f"`cpsample {holder.get('command', '?')}`, pid {pid}" + (f" on {host}" if host else "")
    if host != socket.gethostname():
        return description  # cannot see another machine's processes: assume it runs
    if pid == os.getpid():
        return None  # this process runs one command at a time: a lock of its own is left over
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return description
    return description if not _is_zombie(pid) else None


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def release_locks() -> None:
    """Drop the locks this process took (at the end of each command, whatever its outcome)."""
    while _held_locks:
        path, created = _held_locks.pop()
        path.unlink(missing_ok=True)
        if created and not _contents(path.parent):
            (path.parent / OUT_MARKER).unlink(missing_ok=True)
            try:
                path.parent.rmdir()  # a run refused after taking the lock leaves no empty folder behind
            except OSError:
                pass


def _record_command(folder: Path) -> str | None:
    from cpsample.provenance import recorded_command

    return recorded_command(folder)
