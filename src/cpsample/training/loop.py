"""One training loop for every model cpsample trains (denoiser, classifier): accelerate, EMA, safetensors resume.

Batches and noise come from a generator seeded by (seed, step, process), so a run resumed after a kill draws
exactly the batches the uninterrupted run would have drawn, and every process of a multi-GPU run draws its own.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

# loss_fn(model, x0 batch, target batch or None, generator) -> (loss, {name: float})
LossFn = Callable[[torch.nn.Module, torch.Tensor, "torch.Tensor | None", torch.Generator], "tuple[torch.Tensor, dict]"]

STATE_DIR = "train_state"


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    ema_decay: float = 0.999
    seed: int = 0
    save_every: int = 500
    log_every: int = 50
    grad_clip: float = 1.0
    mixed_precision: str = "no"  # "no", "fp16" or "bf16" (accelerate)


def make_accelerator(mixed_precision: str = "no", cpu: bool | None = None) -> Accelerator:
    cpu = (not torch.cuda.is_available()) if cpu is None else cpu
    return Accelerator(cpu=cpu, mixed_precision=mixed_precision if not cpu else "no")


class Trainer:
    """Holds model, optimizer and EMA; `run_until(step)` trains; state survives kills via `train_state/`."""

    def __init__(self, model: torch.nn.Module, data: torch.Tensor, loss_fn: LossFn, config: TrainConfig,
                 out_dir: Path, targets: torch.Tensor | None = None, accelerator: Accelerator | None = None):
        self.config = config
        self.out_dir = Path(out_dir)
        self.accelerator = accelerator or make_accelerator(config.mixed_precision)
        self.data = data
        self.targets = targets
        self.loss_fn = loss_fn
        self.step = 0
        self.train_seconds = 0.0  # summed over every resumed run, so a killed-and-resumed run reports its true cost
        self.history: list[dict] = []
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.ema = EMAModel(self.unwrapped.parameters(), decay=config.ema_decay, use_ema_warmup=True, power=0.75)

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def generator(self, step: int) -> torch.Generator:
        seed = (self.config.seed * 1_000_003 + step) * 64 + self.accelerator.process_index
        return torch.Generator().manual_seed(seed)

    def run_until(self, last_step: int, description: str = "training") -> None:
        device = self.accelerator.device
        self.model.train()
        bar = tqdm(total=last_step, initial=self.step, desc=description, disable=not self.accelerator.is_local_main_process,
                   dynamic_ncols=True)
        while self.step < last_step:
            step_started = time.perf_counter()
            generator = self.generator(self.step)
            index = torch.randint(0, len(self.data), (self.config.batch_size,), generator=generator)
            x0 = self.data[index].to(device)
            target = None if self.targets is None else self.targets[index].to(device)
            loss, metrics = self.loss_fn(self.model, x0, target, generator)
            self.accelerator.backward(loss)
            if self.accelerator.sync_gradients and self.config.grad_clip:
                self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.ema.step(self.unwrapped.parameters())
            self.step += 1
            self.train_seconds += time.perf_counter() - step_started
            bar.update(1)
            if self.step % self.config.log_every == 0 or self.step == last_step:
                record = {"step": self.step, "loss": float(loss.detach()), **metrics}
                self.history.append(record)
                bar.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k != "step"})
            if self.step % self.config.save_every == 0 or self.step == last_step:
                self.save_state()
        bar.close()

    def ema_model(self) -> torch.nn.Module:
        """A copy of the model carrying the EMA weights (what gets exported and sampled from)."""
        model = self._fresh_copy()
        self.ema.copy_to(model.parameters())
        return model.eval()

    def _fresh_copy(self) -> torch.nn.Module:
        import copy

        return copy.deepcopy(self.unwrapped).cpu()

    # --- resume -------------------------------------------------------------------------------------------
    def save_state(self, extra: dict | None = None) -> None:
        """Write model, EMA and optimizer tensors as safetensors and counters as JSON, atomically."""
        if not self.accelerator.is_main_process:
            return
        tmp = self.out_dir / (STATE_DIR + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        names = [name for name, _ in self.unwrapped.named_parameters()]
        save_file({k: v.detach().cpu().contiguous() for k, v in self.unwrapped.state_dict().items()}, tmp / "model.safetensors")
        save_file({n: p.detach().cpu().contiguous() for n, p in zip(names, self.ema.shadow_params)}, tmp / "ema.safetensors")
        tensors, scalars = _flatten_optimizer(self.optimizer.state_dict())
        save_file(tensors, tmp / "optimizer.safetensors")
        if self.targets is not None:
            save_file({"targets": self.targets.cpu().contiguous()}, tmp / "targets.safetensors")
        meta = {"step": self.step, "train_seconds": self.train_seconds, "ema_step": self.ema.optimization_step, "optimizer": scalars,
                "config": asdict(self.config), "history": self.history, **(extra or {})}
        (tmp / "state.json").write_text(json.dumps(meta))
        final = self.out_dir / STATE_DIR
        old = self.out_dir / (STATE_DIR + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)

    def load_state(self) -> dict | None:
        """Restore from train_state/ if present; returns its JSON (None when starting fresh)."""
        folder = self.out_dir / STATE_DIR
        if not (folder / "state.json").exists():
            return None
        meta = json.loads((folder / "state.json").read_text())
        self.unwrapped.load_state_dict(load_file(folder / "model.safetensors"))
        ema = load_file(folder / "ema.safetensors")
        names = [name for name, _ in self.unwrapped.named_parameters()]
        self.ema.shadow_params = [ema[n].to(p.device) for n, p in zip(names, self.unwrapped.parameters())]
        self.ema.optimization_step = meta["ema_step"]
        self.optimizer.load_state_dict(_unflatten_optimizer(load_file(folder / "optimizer.safetensors"), meta["optimizer"]))
        if (folder / "targets.safetensors").exists():
            self.targets = load_file(folder / "targets.safetensors")["targets"]
        self.step = meta["step"]
        self.train_seconds = meta.get("train_seconds", 0.0)
        self.history = meta.get("history", [])
        return meta


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
