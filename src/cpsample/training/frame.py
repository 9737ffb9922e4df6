"""The frame every training command shares around `Trainer`; each trainer adds only its model, loss and records.

    run = TrainingRun(out_dir, config, resume, overwrite)   # folder check, then the seed of the model's weights
    model = ...                                              # the trainer's own
    trainer = run.train(model, data, loss_fn, split, run_settings)   # resume or save split.json; train; time it
    return run.finish(trainer, "train-x", settings, save, **results)  # export, provenance record, summary
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from cpsample.data import Split
from cpsample.provenance import write_record
from cpsample.training.loop import LossFn, TrainConfig, Trainer, prepare_run_folder


class TrainingRun:
    def __init__(self, out_dir: Path, config: TrainConfig, resume: bool = False, overwrite: bool = False):
        self.out_dir, self.config, self.resume = Path(out_dir), config, resume
        prepare_run_folder(self.out_dir, resume, overwrite)
        torch.manual_seed(config.seed)  # before the caller builds its model: one seed, one set of initial weights
        self.state: dict = {}
        self.seconds = 0.0

    def train(self, model: torch.nn.Module, data: torch.Tensor, loss_fn: LossFn, split: Split, run_settings: dict,
              targets: torch.Tensor | None = None, description: str = "training",
              phases: Callable[[Trainer], None] | None = None) -> Trainer:
        """Continue the saved run (with --resume) or start one; train to config.steps, or through `phases`."""
        trainer = Trainer(model, data, loss_fn, self.config, self.out_dir, targets=targets, run_settings=run_settings)
        self.state = (trainer.load_state() if self.resume else None) or {}
        if not self.state:  # a resumed run keeps the split it started with
            self.out_dir.mkdir(parents=True, exist_ok=True)
            split.save(self.out_dir / "split.json")
        started = time.time()
        if phases is None:
            trainer.run_until(self.config.steps, description=description)
        else:
            phases(trainer)
        self.seconds = time.time() - started
        return trainer

    def finish(self, trainer: Trainer, command: str, settings: dict, save: Callable[[Path], None], **results) -> dict:
        """Export (main process only) with `save(out_dir)`, record settings and results; returns the summary."""
        summary = {"steps": trainer.step, "resumed_from": self.state.get("step", 0),
                   "seconds_this_run": round(self.seconds, 1), "train_seconds_total": round(trainer.train_seconds, 1),
                   "parameters": sum(p.numel() for p in trainer.unwrapped.parameters()),
                   "final_loss": trainer.history[-1]["loss"] if trainer.history else None, **results}
        if trainer.accelerator.is_main_process:
            save(self.out_dir)
            write_record(self.out_dir, command, {**asdict(self.config), **settings}, {**summary, "history": trainer.history})
        return summary
