"""Write docs/cli.md, the command reference, from the CLI itself (every command's options) and the guard registry.

    python scripts/make_cli_docs.py

Rerun it after adding or changing a command or option; the text between the tables lives here.
"""

from __future__ import annotations

from pathlib import Path

import typer

from cpsample.cli.main import app
from cpsample.sampling.guards import GUARDS
from cpsample.sampling.guards import option_rows as guard_option_rows

OUT = Path(__file__).resolve().parent.parent / "docs" / "cli.md"

INTRO = """\
# Command reference

Every command takes `--seed` and writes a `cpsample.json` with its settings, results and library versions.
`cpsample COMMAND --help` prints the same options in the terminal. This file is written by
`python scripts/make_cli_docs.py` from the command line itself.

Results (tables, one-line summaries, where a run saved what) go to stdout; notes, warnings and errors go to stderr
through Python's `logging` (logger `cpsample`), so `cpsample guards > guards.txt` keeps the table. For scripts,
`cpsample --json COMMAND ...` prints the same results as one JSON object (raw numbers) when the command ends, e.g.
`cpsample --json guards`. An option means the same in every command that takes it, and the Python functions behind
the commands take the same names (`--batch-size` is `batch_size=`). Outside `demo`, every command is told what it
works on: `--model` (the model sampled, attacked or protected; `--data` for training), and `--classifier` where the guard
uses one; `bundled` names the bundled 16x16 MNIST demo model, and nothing falls back to it silently.

**What a run costs** (measured on one CPU thread, no other job; [results.md](results.md) has the runs; no GPU was
measured): sampling with 50 DDIM steps takes 0.094 s per 16x16 grey image (1.9 ms per step) and 0.34 s per 32x32
RGB image (6.8 ms per step); CPSample's calibrated default adds about 8%, AMG about 60%, rejection sampling one
extra draw per near-copy. Training the classifier costs 0.082 CPU s per step at batch 64 and 16x16 (1,000 members fit
in 6.6 CPU minutes, 4,000 in 51; `train-classifier` prints its estimate first). `calibrate` (bisection on the scale) costs about
2.5-5x plain sampling of 600 images: 216-239 s at 16x16 and 525 s at 32x32 (`--n-samples 150` about halves it); the
grid took 11 minutes at 16x16. Run parallel jobs with `OMP_NUM_THREADS=1`.

## What each command does

| command | what it does |
|---|---|
| `cpsample train-denoiser` | train a diffusers `UNet2DModel` (eps-prediction, `DDPMScheduler`) with accelerate, EMA, safetensors checkpoints, or fine-tune one with `--init FOLDER`; `--subset N --seed S` fixes the member / non-member split (`split.json`, leaving out images a pretrained model saw); `--resume` continues a killed run exactly |
| `cpsample train-classifier` | train the random-label classifier p(y \\| x_t, t) of CPSample on the denoiser's training images and noise schedule; relabels images it cannot fit; prints per-t loss/accuracy and whether the paper's loss < 0.05 was reached; `--negatives samples` (or a folder of public images) trains non-members towards p = 0.5, a more selective classifier; `--max-t 100` trains it at low noise only, for the early stage that judges denoised estimates |
| `cpsample sample` | DDIM / DDPM / DPM-Solver++ sampling, plain or `--guard cpsample --alpha --scale --tau`; writes `grid.png`, `samples.npz`; with `--trace` also `trace.npz` and `trace.png` (per-step p(y=1 \\| x_t), paper Fig. 7: private, see README "What is safe to share") |
| `cpsample evaluate` | nearest-neighbour similarity (exact search; pixels, DINO or SSCD from a local path), near-copy share with Clopper-Pearson CIs and chi-square, Carlini's criterion, Frechet distance, permutation test; `report.html` |
| `cpsample demo` | plain vs CPSample vs rejection sampling, evaluated and attacked (membership inference), one report |
| `cpsample calibrate` | find the gentlest CPSample setting that cuts near-copies by `--reduction` (default 95%) vs plain and/or keeps them under `--target`: by bisection on the scale (`--search seek`, checked in full on fresh images), or on a grid whose best few are confirmed on fresh images (`--search grid`; with `--early-classifier` CPSample in two stages competes too, and with `--late-classifier` other classifiers (widths) in its late stage); saves the winner as `calibration.json` next to the classifier, which every guarded command then uses ([calibration.md](calibration.md)) |
| `cpsample attack mia` | membership inference: loss attack (Z-test), PIA; ROC AUC, TPR at 1% FPR; plain or guarded |
| `cpsample attack side` | SIDE extraction: cluster samples into surrogate classes, guide towards each, count extracted training images (plain or CPSample-protected sampler) |
| `cpsample sample --guard amg` | Anti-Memorization Guidance (needs the training images at sampling time) |
| `cpsample guards` | every guidance strategy and each of its options with its default (table at the end of this page); set any of them with `--option NAME=VALUE` on `sample` (e.g. `--guard cpsample --option adaptive=true`) |
| `cpsample train-conditional`, `sample --classes` | class-conditional UNet with label dropout; classifier-free guidance with `--guard none / cpsample / delayed-cfg / opposite-cfg` |
| `cpsample make-tiny-sd`, `train-latent-classifier`, `sample --prompt` | CPSample in latent space for any local Stable Diffusion folder (`from_pretrained(path)`, nothing downloads); per-prompt similarity for original vs modified captions (paper Table 2) |
| `cpsample train-feature-net` | the small classifier whose features give the offline Frechet distance (`--quality-net` of `calibrate`) |
| `python bench/bench_frontier.py` | the protection / quality frontier: CPSample (per classifier), AMG and rejection sampling, each knob swept on one model; MIA and time at each method's 90%-cut setting (findings: `bench/README.md`) |
| `python bench/bench_cpsample.py` | time ratio CPSample / plain at alpha 0.5, 0.1, 0.001 and the replication / quality trade-off grid |
| `python bench/bench_methods.py` | every defence side by side: near-copies, quality, seconds per image, SIDE extraction count |

## Runs that stop, resume and refuse

Training runs save `train_state/` every `--save-every` steps; after a kill, rerun the same command with
`--resume` and training continues from the last checkpoint with the same batches and noise it would have drawn.
`--resume` refuses settings other than the run's own (data, split, seed, lr, widths ...), and a run never
overwrites a non-empty `--out` unless given `--overwrite`. Sampling writes finished batches to `--out/batches/`;
rerunning the same command skips them, while other settings (another model or classifier, by a hash of their
weights; any guard option, scheduler, dtype, seed) are refused unless `--overwrite`. `sample` never writes into a
model folder. A run whose loss or samples turn NaN/inf stops with an error and writes no result. Training and
sampling run unchanged under `accelerate launch` on several GPUs. Two runs never share an `--out`: the second is
refused at once, naming the first (command, pid, host); the lock is an OS lock (`filelock`), which ends with its
process, so a killed run never blocks the next one.

`train_state/` holds only safetensors (model, EMA and optimizer tensors, a classifier's labels) and JSON (step,
optimizer settings, run settings, loss history): resuming never unpickles anything. It is cpsample's own code,
not accelerate's `save_state`, because accelerate (1.16) pickles all but the model: `save_accelerator_state`
(`accelerate/checkpointing.py`) writes the optimizer to `optimizer.bin` with `torch.save` (`safe_serialization=False`
fixed), the RNG states to `random_states_0.pkl`, a gradient scaler to `scaler.pt`, and objects registered for
checkpointing (an EMA) to `custom_checkpoint_0.pkl`; `load_state` reads them back with `torch.load`, the last with
`weights_only=False` (`load_custom_state`). Its save/load hooks see only the models, so the optimizer and RNG files
cannot be redirected. Exact resume needs no RNG state here: batches and noise come from generators seeded by (seed,
step, process).

Data (`--data`): a bundled name (`mnist`: 5,000 MNIST digits; `digits`: scikit-learn's 1,797 8x8 digits;
`twemoji`: 1,026 32x32 RGB Twemoji pictures), a folder of PNG/JPG images (one size, grey or RGB) or an `.npz` file
with an `images` array (and optionally `labels`).

## Layout

    src/cpsample/
      data/        image sources (bundled MNIST/digits/Twemoji, PNG/JPG folders, .npz), member splits, samples files
      models/      denoiser (UNet2DModel), time-conditioned classifier; DiffusionModel / Classifier loaded once
      runs.py      RunFolder: a run's --out checked before anything is written, locked for the run, marked as cpsample's
      evaluation/  features, exact neighbours (faiss when installed, else NumPy), replication statistics, quality,
                   measures.py = the Measure registry and the Judge every table is measured by; the report
      sampling/    guards/ = strategies with validated options, one file each (plugins: the cpsample.guards entry
                   points); spec.py = GuardSpec, the one reader and writer of calibration.json; adapters/ = one file
                   per model kind (pixel, class-conditional, Stable Diffusion); generate.py = the one sampling run
                   over the one denoising loop (sampler.py); protect.py = a guard as a hook on a diffusers UNet
      training/    one accelerate training frame and loop (EMA, exact resume) used by every model
      attacks/     membership inference (loss attack, PIA, sample-only), SIDE extraction
      calibration/ Goal, Calibrator(...).fit() -> CalibrationResult (save, save_pretrained); seek.py = the
                   bisection on probes, search.py = the grid
      workflows/   the demo, negatives for a selective classifier
      cli/         the typer command line: parse -> one library call -> print (a module imports only its own or
                   lower layers, and no files import each other: tests/test_architecture.py)
      assets/      bundled checkpoints (safetensors) and data (.npz)
"""


def cell(text) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def option_rows(command) -> list[str]:
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for param in command.params:
        if param.name == "help" or getattr(param, "hidden", False):
            continue
        names = " / ".join(f"`{name}`" for name in (*param.opts, *param.secondary_opts))
        if getattr(param, "required", False):
            default = "required"
        elif getattr(param, "is_flag", False) and param.secondary_opts:
            default = f"`{param.opts[0]}`" if param.default else f"`{param.secondary_opts[0]}`"
        elif getattr(param, "is_flag", False):
            default = "on" if param.default else "off"
        elif param.default in (None, "", (), []):
            default = ""
        else:
            value = param.default
            default = f"`{', '.join(map(str, value)) if isinstance(value, (list, tuple)) else value}`"
        if getattr(param, "multiple", False):
            names += " (repeatable)"
        rows.append(f"| {names} | {default} | {cell(getattr(param, 'help', '') or '')} |")
    return rows


def commands(group, prefix=()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def guard_rows() -> list[str]:
    """The built-in guards' options (plugins installed here are left out: the docs describe the package)."""
    rows = ["| guard | option | default | meaning |", "|---|---|---|---|"]
    for name, option, default, meaning in guard_option_rows(GUARDS):
        if option == "-":  # a guard without options
            rows.append(f"| `{name}` | - | | {cell(meaning)} |")
        else:
            rows.append(f"| `{name}` | `{option}` | {cell(default)} | {cell(meaning)} |")
    return rows


def render() -> str:
    """docs/cli.md as the CLI and the guard registry give it today (tests/test_docs.py compares it with the file)."""
    root = typer.main.get_command(app)
    parts = [INTRO, "## Commands\n"]
    for path, command in commands(root):
        name = " ".join(path)
        parts.append(f"### `cpsample {name}`\n")
        if command.help:
            parts.append(" ".join(command.help.split("\n\n")[0].split()) + "\n")
        parts.append("\n".join(option_rows(command)) + "\n" if command.params else "No options.\n")
    parts.append("## Guard options\n")
    parts.append(
        "Set with `--option NAME=VALUE` (`-o`) on `sample`; `cpsample guards` prints the "
        "same table. 'calibrated': taken from the classifier's `calibration.json` (written by "
        "`cpsample calibrate`).\n"
    )
    parts.append("\n".join(guard_rows()) + "\n")
    return "\n".join(parts)


def main() -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render())
    print(f"{OUT}: {len(OUT.read_text().splitlines())} lines")


if __name__ == "__main__":
    main()
