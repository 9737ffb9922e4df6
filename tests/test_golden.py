"""Sampled images stay bit-identical across refactors: every guard, every model kind, the same seed.

`tests/golden_samples.json` holds the sha256 of the float32 images each command line below wrote, recorded with the
code before the "one shape" refactor (one torch thread, as conftest sets). A refactor that changes one bit of any
guard's output fails here. Regenerate only for a change of behaviour made on purpose, and say so in the commit:
`CPSAMPLE_WRITE_GOLDEN=1 python -m pytest tests/test_golden.py`.

Bits depend on the CPU's arithmetic as well as the code (torch picks other kernels on another CPU), so the file holds
one set of digests per kind of machine it was recorded on. Plain sampling, which no guard touches, picks the set
whose arithmetic this machine shares; every case must then match that set exactly. A machine none was recorded on
fails here with how to record one (with the code of an earlier release, not the code under test).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import cli

GOLDEN = Path(__file__).with_name("golden_samples.json")
WRITE = os.environ.get("CPSAMPLE_WRITE_GOLDEN") == "1"
QUICK = ["-n", "16", "--steps", "50", "--seed", "7", "--batch-size", "16"]

PIXEL = {
    "none": ["--guard", "none"],
    "cpsample-calibrated": ["--guard", "cpsample"],
    "cpsample-knobs": ["--guard", "cpsample", "--alpha", "0.3", "--scale", "30"],
    "cpsample-options": ["--guard", "cpsample", "-o", "alpha=0.3", "-o", "scale=20", "-o", "max_push=2"],
    "cpsample-ddpm": ["--guard", "cpsample", "--alpha", "0.3", "--scale", "30", "--scheduler", "ddpm"],
    "cpsample-staged": ["--guard", "cpsample-staged"],
    "amg": ["--guard", "amg"],
    "rgb-none": ["--model", "bundled-rgb", "--classifier", "bundled-rgb", "--guard", "none"],
    "rgb-cpsample": ["--model", "bundled-rgb", "--classifier", "bundled-rgb", "--guard", "cpsample"],
}
CONDITIONAL = {
    "cond-none": ["--guard", "none"],
    "cond-cpsample": ["--guard", "cpsample", "--alpha", "0.5", "--scale", "30"],
    "cond-delayed-cfg": ["--guard", "delayed-cfg"],
    "cond-opposite-cfg": ["--guard", "opposite-cfg"],
}


def _digest(out: Path) -> str:
    return hashlib.sha256(np.load(out / "samples.npz")["images"].astype(np.float32).tobytes()).hexdigest()


def _run(out: Path, *args) -> str:
    code, text = cli(*args, "--out", out)
    assert code == 0, text
    return _digest(out)


@pytest.fixture(scope="module")
def digests(tmp_path_factory):
    root = tmp_path_factory.mktemp("golden")
    found = {}
    for name, args in PIXEL.items():
        model = [] if "--model" in args else ["--model", "bundled", "--classifier", "bundled"]
        found[name] = _run(root / name, "sample", *model, *QUICK, *args)
    # A tiny class-conditional model and its classifier, trained in seconds by the CLI (training is seeded).
    model, clf = root / "cond-model", root / "cond-clf"
    tiny = ["--steps", "4", "--batch-size", "8", "--channels", "8,16", "--seed", "0"]
    code, text = cli("train-conditional", "--data", "digits", "--image-size", "8", "--subset", "32", *tiny,
                     "--out", model)  # fmt: skip
    assert code == 0, text
    code, text = cli("train-classifier", "--model", model, *tiny, "--out", clf)
    assert code == 0, text
    for name, args in CONDITIONAL.items():
        found[name] = _run(root / name, "sample", "--model", model, "--classifier", clf, "--classes",
                           "0,1,2,3", "-n", "2", "--steps", "20", "--seed", "7", *args)  # fmt: skip
    found.update(_latent(root))
    return found


def _latent(root: Path) -> dict:
    """A tiny random-weight Stable Diffusion pipeline and a latent classifier on six private PNGs."""
    pytest.importorskip("transformers")
    from PIL import Image

    private = root / "private"
    private.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, size=(32, 32, 3), dtype=np.uint8)).save(private / f"p{i}.png")
    pipeline, clf = root / "pipe", root / "latent-clf"
    assert cli("make-tiny-sd", "--out", pipeline)[0] == 0
    code, text = cli("train-latent-classifier", "--model", pipeline, "--data", private, "--steps", "4",
                     "--batch-size", "6", "--channels", "8,16", "--seed", "0", "--out", clf)  # fmt: skip
    assert code == 0, text
    prompts = root / "prompts.txt"
    prompts.write_text("a red square\nClassic cars for sale\n")
    base = ["sample", "--model", pipeline, "--prompts-file", prompts, "-n", "2", "--steps", "5", "--seed", "7"]
    return {
        "sd-none": _run(root / "sd-none", *base, "--guard", "none"),
        "sd-cpsample": _run(
            root / "sd-cpsample", *base, "--guard", "cpsample", "--classifier", clf, "--alpha", "0.5", "--scale", "100"
        ),
    }


def _machine() -> str:
    import platform

    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), "")
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{cpu or platform.processor()}, torch {torch.__version__}, CPU capability {capability}"


def _cpuinfo() -> list[str]:
    path = Path("/proc/cpuinfo")
    return path.read_text().splitlines() if path.exists() else []


def test_every_guard_samples_the_recorded_images(digests):
    sets = json.loads(GOLDEN.read_text())["sets"]
    if WRITE:
        sets = [s for s in sets if s["digests"]["none"] != digests["none"]]
        sets.append({"recorded_on": _machine(), "digests": digests})
        GOLDEN.write_text(json.dumps({"sets": sets}, indent=2, sort_keys=True) + "\n")
    same_arithmetic = [s for s in sets if s["digests"]["none"] == digests["none"]]
    assert same_arithmetic, (
        f"plain sampling matches none of the {len(sets)} recorded machines ({_machine()} here): either plain sampling "
        "changed, or this machine's arithmetic was never recorded; record it with an earlier release's code "
        "(CPSAMPLE_WRITE_GOLDEN=1) and run this test again"
    )
    recorded = same_arithmetic[0]["digests"]
    assert sorted(recorded) == sorted(digests), "the golden file covers other cases than this test runs"
    changed = [name for name in recorded if recorded[name] != digests[name]]
    assert not changed, f"sampled images changed for {changed}"


def test_the_guards_change_what_plain_sampling_gives(digests):
    """The recorded cases are not vacuous: each guard moved at least one image away from plain sampling."""
    for name, digest in digests.items():
        plain = {"rgb": "rgb-none", "cond": "cond-none", "sd": "sd-none"}.get(name.split("-")[0], "none")
        assert name == plain or digest != digests[plain], f"{name} sampled exactly what plain sampling gives"
