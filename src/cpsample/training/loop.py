"""One training loop for every model cpsample trains (denoiser, classifier): accelerate, EMA, safetensors resume,
and one frame around it (`TrainingRun`), so each trainer adds only its model, loss and records.

Batches and noise come from a generator seeded by (seed, step, process), so a run resumed after a kill draws
exactly the batches the uninterrupted run would have drawn, and every process of a multi-GPU run draws its own.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from cpsample.data import Split
from cpsample.provenance import RUN_BOOKKEEPING, write_record
from cpsample.runs import as_os_error
from cpsample.training.settings import TrainConfig

# loss_fn(model, x0 batch, target batch or None, generator) -> (loss, {name: float})
LossFn = Callable[[torch.nn.Module, torch.Tensor, "torch.Tensor | None", torch.Generator], "tuple[torch.Tensor, dict]"]

STATE_DIR = "train_state"
# Settings a resumed run may change: how far it trains and how often it saves or logs, not what it trains.
RESUMABLE_CHANGES = ("steps", "save_every", "log_every")


def make_accelerator(mixed_precision: str = "no", cpu: bool | None = None) -> Accelerator:
    cpu = (not torch.cuda.is_available()) if cpu is None else cpu
    return Accelerator(cpu=cpu, mixed_precision=mixed_precision if not cpu else "no")


class Trainer:
    """Holds model, optimizer and EMA; `run_until(step)` trains; state survives kills via `train_state/`."""

    def __init__(
        self,
        model: torch.nn.Module,
        data: torch.Tensor,
        loss_fn: LossFn,
        config: TrainConfig,
        out_dir: Path,
        targets: torch.Tensor | None = None,
        accelerator: Accelerator | None = None,
        run_settings: dict | None = None,
        lr_factor: Callable[[int], float] | None = None,
    ):
        self.config = config
        self.lr_factor = lr_factor  # step -> multiple of config.lr (None: constant); a function of the step alone, so
        # a resumed run follows the same schedule
        self.run_settings = _as_json(run_settings or {})  # what it trains on: a resume must match them
        self.out_dir = Path(out_dir)
        self.accelerator = accelerator or make_accelerator(config.mixed_precision)
        self.data = data
        self.targets = targets
        self.loss_fn = loss_fn
        self.step = 0
        self.train_seconds = 0.0  # summed over every resumed run, so a killed-and-resumed run reports its true cost
        self.history: list[dict] = []
        # Relative odds of drawing each training item (None: uniform); set between run_until calls to train more on
        # items still misfit (hard-example sampling).
        self.sample_weights: torch.Tensor | None = None
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.ema = EMAModel(self.unwrapped.parameters(), decay=config.ema_decay, use_ema_warmup=True, power=0.75)

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def generator(self, step: int) -> torch.Generator:
        seed = (self.config.seed * 1_000_003 + step) * 64 + self.accelerator.process_index
        return torch.Generator().manual_seed(seed)

    def run_until(self, last_step: int, description: str = "training", bar_total: int | None = None) -> None:
        """Train up to last_step; bar_total: where the progress bar ends (a run trained in parts shows one total)."""
        device = self.accelerator.device
        self.model.train()
        bar = tqdm(
            total=bar_total or last_step,
            initial=self.step,
            desc=description,
            disable=not self.accelerator.is_local_main_process,
            dynamic_ncols=True,
        )
        try:
            while self.step < last_step:
                step_started = time.perf_counter()
                generator = self.generator(self.step)
                index = self._draw_batch(generator)
                x0 = self.data[index].to(device)
                target = None if self.targets is None else self.targets[index].to(device)
                loss, metrics = self.loss_fn(self.model, x0, target, generator)
                if self.lr_factor is not None:
                    for group in self.optimizer.param_groups:
                        group["lr"] = self.config.lr * self.lr_factor(self.step)
                self.accelerator.backward(loss)
                if self.accelerator.sync_gradients and self.config.grad_clip:
                    self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.ema.step(self.unwrapped.parameters())
                self.step += 1
                self.train_seconds += time.perf_counter() - step_started
                bar.update(1)
                logging = self.step % self.config.log_every == 0 or self.step == last_step
                if logging or self.step % self.config.save_every == 0:
                    _check_finite(float(loss.detach()), self.step, self.config.lr)  # before a NaN model can be saved
                if logging:
                    record = {"step": self.step, "loss": float(loss.detach()), **metrics}
                    self.history.append(record)
                    bar.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k != "step"})
                if self.step % self.config.save_every == 0 or self.step == last_step:
                    self.save_state()
        finally:
            bar.close()  # (an error then starts on a line of its own)

    def _draw_batch(self, generator: torch.Generator) -> torch.Tensor:
        if self.sample_weights is None:
            return torch.randint(0, len(self.data), (self.config.batch_size,), generator=generator)
        return torch.multinomial(self.sample_weights, self.config.batch_size, replacement=True, generator=generator)

    def ema_model(self) -> torch.nn.Module:
        """A copy of the model carrying the EMA weights (what gets exported and sampled from)."""
        model = copy.deepcopy(self.unwrapped).cpu()
        self.ema.copy_to(model.parameters())
        return model.eval()

    # --- resume -------------------------------------------------------------------------------------------
    def save_state(self, extra: dict | None = None) -> None:
        """Write model, EMA and optimizer tensors as safetensors and counters as JSON, atomically."""
        # Not accelerator.save_state: accelerate 1.16 pickles the optimizer and RNG states (docs/cli.md, resume).
        if not self.accelerator.is_main_process:
            return
        tmp = self.out_dir / (STATE_DIR + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            self._write_state(tmp, extra)
        except BaseException as error:  # a full disk, a kill: the last complete state stays; half a new one only
            shutil.rmtree(tmp, ignore_errors=True)  # takes space
            raise as_os_error(error, tmp)
        final = self.out_dir / STATE_DIR
        old = self.out_dir / (STATE_DIR + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)

    def _write_state(self, tmp: Path, extra: dict | None) -> None:
        tmp.mkdir(parents=True)
        names = [name for name, _ in self.unwrapped.named_parameters()]
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in self.unwrapped.state_dict().items()},
            tmp / "model.safetensors",
        )
        save_file(
            {n: p.detach().cpu().contiguous() for n, p in zip(names, self.ema.shadow_params)}, tmp / "ema.safetensors"
        )
        tensors, scalars = _flatten_optimizer(self.optimizer.state_dict())
        save_file(tensors, tmp / "optimizer.safetensors")
        if self.targets is not None:
            save_file({"targets": self.targets.cpu().contiguous()}, tmp / "targets.safetensors")
        if self.sample_weights is not None:  # a resumed run draws its batches as the uninterrupted one did
            save_file({"weights": self.sample_weights.cpu().contiguous()}, tmp / "sample_weights.safetensors")
        meta = {
            "step": self.step,
            "train_seconds": self.train_seconds,
            "ema_step": self.ema.optimization_step,
            "optimizer": scalars,
            "config": asdict(self.config),
            "run_settings": self.run_settings,
            "history": self.history,
            **(extra or {}),
        }
        (tmp / "state.json").write_text(json.dumps(meta))

    def load_state(self) -> dict | None:
        """Restore from train_state/ if present; returns its JSON (None when starting fresh).

        Refuses a state written with other settings (data, split, lr, seed, model shape ...): resuming it would
        train on one thing while the record claims another."""
        recover_state(self.out_dir)
        folder = self.out_dir / STATE_DIR
        if not (folder / "state.json").exists():
            return None
        try:
            meta = json.loads((folder / "state.json").read_text())
            mismatches = self._resume_mismatches(meta)
            if mismatches:
                raise ResumeMismatch(
                    f"{self.out_dir}: --resume with other settings than the run it continues "
                    f"({'; '.join(mismatches)}); rerun with the original settings, or pick a new --out"
                )
            self.unwrapped.load_state_dict(load_file(folder / "model.safetensors"))
            ema = load_file(folder / "ema.safetensors")
            names = [name for name, _ in self.unwrapped.named_parameters()]
            self.ema.shadow_params = [ema[n].to(p.device) for n, p in zip(names, self.unwrapped.parameters())]
            self.ema.optimization_step = meta["ema_step"]
            self.optimizer.load_state_dict(
                _unflatten_optimizer(load_file(folder / "optimizer.safetensors"), meta["optimizer"])
            )
            if (folder / "targets.safetensors").exists():
                self.targets = load_file(folder / "targets.safetensors")["targets"]
            if (folder / "sample_weights.safetensors").exists():
                self.sample_weights = load_file(folder / "sample_weights.safetensors")["weights"]
        except ResumeMismatch:
            raise
        except Exception as error:  # truncated safetensors, bad JSON, missing keys: all mean a damaged checkpoint
            raise ValueError(
                f"{folder}: damaged training checkpoint ({type(error).__name__}: {str(error)[:120]}); "
                "delete it to start again (or restore a copy)"
            ) from None
        self.step = meta["step"]
        self.train_seconds = meta.get("train_seconds", 0.0)
        self.history = meta.get("history", [])
        return meta

    def _resume_mismatches(self, meta: dict) -> list[str]:
        current = {**_as_json(asdict(self.config)), **self.run_settings}
        stored = {**meta.get("config", {}), **meta.get("run_settings", {})}
        return [
            f"{key}: {_short(stored.get(key))} then, {_short(current.get(key))} now"
            for key in sorted(current)
            if key not in RESUMABLE_CHANGES and key in stored and stored[key] != current[key]
        ]


class TrainingRun:
    """The frame of every training command: folder check and seed -> (the caller builds its model) -> `train`
    (resume, or start and save split.json) -> `finish` (export, provenance record, summary)."""

    def __init__(self, out_dir: Path, config: TrainConfig, resume: bool = False, overwrite: bool = False):
        self.out_dir, self.config, self.resume = Path(out_dir), config, resume
        prepare_run_folder(self.out_dir, resume, overwrite)
        # A run into an empty folder that fails before its first saved state leaves the folder empty again: its
        # split.json alone would make the folder look like a finished model, refused even with --overwrite.
        self.fresh_folder = not _entries(self.out_dir)
        torch.manual_seed(config.seed)  # before the caller builds its model: one seed, one set of initial weights
        self.state: dict = {}
        self.seconds = 0.0

    def train(
        self,
        model: torch.nn.Module,
        data: torch.Tensor,
        loss_fn: LossFn,
        split: Split,
        run_settings: dict,
        targets: torch.Tensor | None = None,
        description: str = "training",
        phases: Callable[[Trainer], None] | None = None,
        lr_factor: Callable[[int], float] | None = None,
    ) -> Trainer:
        """Continue the saved run (with --resume) or start one; train to config.steps, or through `phases`."""
        trainer = Trainer(
            model,
            data,
            loss_fn,
            self.config,
            self.out_dir,
            targets=targets,
            run_settings=run_settings,
            lr_factor=lr_factor,
        )
        self.state = (trainer.load_state() if self.resume else None) or {}
        if not self.state:  # a resumed run keeps the split it started with
            self.out_dir.mkdir(parents=True, exist_ok=True)
            split.save(self.out_dir / "split.json")
        started = time.time()
        try:
            if phases is None:
                trainer.run_until(self.config.steps, description=description)
            else:
                phases(trainer)
        except BaseException:
            if self.fresh_folder and not (self.out_dir / STATE_DIR / "state.json").exists():
                (self.out_dir / "split.json").unlink(missing_ok=True)
                shutil.rmtree(self.out_dir / (STATE_DIR + ".tmp"), ignore_errors=True)
            raise
        self.seconds = time.time() - started
        return trainer

    def finish(self, trainer: Trainer, command: str, settings: dict, save: Callable[[Path], None], **results) -> dict:
        """Export with `save(out_dir)` and record the settings and results (main process only); returns the summary."""
        summary = {
            "steps": trainer.step,
            "resumed_from": self.state.get("step", 0),
            "seconds_this_run": round(self.seconds, 1),
            "train_seconds_total": round(trainer.train_seconds, 1),
            "parameters": sum(p.numel() for p in trainer.unwrapped.parameters()),
            "final_loss": trainer.history[-1]["loss"] if trainer.history else None,
            **results,
        }
        if trainer.accelerator.is_main_process:
            before = set(_entries(self.out_dir))
            try:
                save(self.out_dir)
                write_record(
                    self.out_dir, command, {**asdict(self.config), **settings}, {**summary, "history": trainer.history}
                )
            except BaseException as error:  # (a full disk): half an export would make the folder look like a
                for name in set(_entries(self.out_dir)) - before:  # model; the saved state lets --resume export it
                    path = self.out_dir / name  # again
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
                raise as_os_error(error, self.out_dir)
        return summary


class ResumeMismatch(ValueError):
    """--resume asked to continue a run with settings other than its own."""


def prepare_run_folder(out_dir: Path, resume: bool, overwrite: bool = False) -> None:
    """Refuse to train into a folder that holds other work; --resume needs a run to continue.

    A folder holding anything is refused unless resuming (its run) or overwrite=True (which drops its training
    state, so the run starts afresh; the exported files are replaced at the end)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"--out {out_dir} is a file; pass a folder")
    recover_state(out_dir)
    has_state = (out_dir / STATE_DIR / "state.json").exists()
    if resume:
        if not has_state:
            raise FileNotFoundError(
                f"--resume: {out_dir} holds no {STATE_DIR}/ to continue; drop --resume to start a new run"
            )
        return
    if overwrite:
        shutil.rmtree(out_dir / STATE_DIR, ignore_errors=True)
        return
    if _entries(out_dir):
        what = "a training run" if has_state else "other files"
        raise FileExistsError(
            f"{out_dir} already holds {what}; pass --resume to continue its run, --overwrite to "
            "replace it, or pick a new --out"
        )


def _entries(folder: Path) -> list[str]:
    """What a folder holds, a RunFolder's bookkeeping (lock, holder, marker) aside ([] for a folder not there)."""
    folder = Path(folder)
    return [path.name for path in folder.iterdir() if path.name not in RUN_BOOKKEEPING] if folder.is_dir() else []


def recover_state(out_dir: Path) -> None:
    """A kill inside save_state's swap can leave the newest complete state only in train_state.tmp (between its
    two renames) or train_state.old: put it back in place instead of starting over."""
    out_dir = Path(out_dir)
    final = out_dir / STATE_DIR
    if (final / "state.json").exists():
        return
    for candidate in (out_dir / (STATE_DIR + ".tmp"), out_dir / (STATE_DIR + ".old")):
        if (candidate / "state.json").exists():  # state.json is written last: its presence means complete
            shutil.rmtree(final, ignore_errors=True)
            os.replace(candidate, final)
            return


def _check_finite(loss: float, step: int, lr: float) -> None:
    if not math.isfinite(loss):
        raise ValueError(
            f"training diverged: the loss is {loss} at step {step}; nothing was saved from this step on. "
            f"Lower --lr (now {lr:g}) and rerun"
        )


def _as_json(value):
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _flatten_optimizer(state_dict: dict) -> tuple[dict, dict]:
    """Split an optimizer state_dict into tensors (for safetensors) and plain values (for JSON)."""
    tensors, per_param = {}, {}
    for index, values in state_dict["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                per_param.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": per_param}


def _unflatten_optimizer(tensors: dict, scalars: dict) -> dict:
    state: dict = {}
    for name, tensor in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = tensor
    for index, values in scalars["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": scalars["param_groups"]}
