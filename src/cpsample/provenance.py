"""Every output records how it was made: the command's settings and the versions of what ran it."""

from __future__ import annotations

import json
import platform
import random
import shlex
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

# A run folder's lock, --out marker and lock holder's description (cpsample.runs): bookkeeping in a run's folder,
# not its files.
RUN_BOOKKEEPING = (".cpsample.lock", ".cpsample-out", ".cpsample.lock.holder")
PACKAGES = (
    "cpsample",
    "torch",
    "diffusers",
    "accelerate",
    "safetensors",
    "faiss-cpu",
    "numpy",
    "scipy",
    "scikit-learn",
)


def versions() -> dict:
    found = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def recorded_command(folder: str | Path, name: str = "cpsample.json") -> str | None:
    """The command that wrote a folder's provenance record: None without one, "unreadable" for a damaged one."""
    try:
        return json.loads((Path(folder) / name).read_text()).get("command")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError):
        return "unreadable"


def recorded_settings(folder: str | Path, name: str = "cpsample.json") -> dict:
    """The settings a folder's provenance record holds; {} without a readable one."""
    try:
        settings = json.loads((Path(folder) / name).read_text()).get("settings")
    except (OSError, ValueError, AttributeError):
        return {}
    return settings if isinstance(settings, dict) else {}


def command_line(command: str, options: dict) -> str:
    """The exact `cpsample ...` invocation that reproduces a run, for the provenance record."""
    parts = ["cpsample", command]
    for key, value in options.items():
        if value is None:
            continue
        parts += [f"--{key.replace('_', '-')}", shlex.quote(str(value))]
    return " ".join(parts)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    import torch  # (here, not at the top: the command line starts without torch)

    torch.manual_seed(seed)


def write_record(
    folder: Path, command: str, settings: dict, results: dict | None = None, name: str = "cpsample.json"
) -> Path:
    """Write <folder>/<name> with the command, its settings, versions and (optionally) results."""
    folder = Path(folder)
    _refuse_to_replace_a_model_record(folder / name, command)
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "command": command,
        "settings": settings,
        "versions": versions(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results": results or {},
    }
    path = folder / name
    tmp = path.with_name(path.name + ".tmp")  # whole or not at all: a kill never leaves half a record
    tmp.write_text(json.dumps(record, indent=2, default=_jsonable))
    tmp.replace(path)
    return path


def _refuse_to_replace_a_model_record(path: Path, command: str) -> None:
    """A model folder's record names its training data: only another training command may replace it (with
    --overwrite); any other command writing its own record there would break every later use of the model."""
    if command.startswith("train-") or not path.is_file():
        return
    try:
        existing = json.loads(path.read_text()).get("command", "")
    except (OSError, ValueError, AttributeError):
        return
    if existing.startswith("train-"):
        raise FileExistsError(
            f"{path.parent} holds a model ({existing}); `{command}` never writes into a model folder: "
            "pick another --out"
        )


TORCH_NAMES = {("torch", "device"), ("torch", "dtype")}  # recorded by name (torch is not imported here for them)


def _jsonable(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, Path) or (type(value).__module__, type(value).__name__) in TORCH_NAMES:
        return str(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot record {type(value).__name__}")
