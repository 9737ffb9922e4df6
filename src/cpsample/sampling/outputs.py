"""What sampling writes: a PNG grid a person can look at, the images as .npz, and the guard's trace plot."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cpsample.data import to_uint8


def image_grid(
    images: torch.Tensor | np.ndarray, columns: int | None = None, upscale: int | None = None, pad: int = 1
) -> Image.Image:
    """Tile (N, C, H, W) images in [-1, 1] into one PIL image; small images are upscaled to stay visible."""
    pixels = to_uint8(images)  # (N, H, W, C)
    count, height, width, channels = pixels.shape
    columns = columns or max(1, math.ceil(math.sqrt(count)))
    rows = math.ceil(count / columns)
    canvas = np.full((rows * (height + pad) + pad, columns * (width + pad) + pad, channels), 255, dtype=np.uint8)
    for i in range(count):
        r, c = divmod(i, columns)
        top, left = pad + r * (height + pad), pad + c * (width + pad)
        canvas[top : top + height, left : left + width] = pixels[i]
    image = Image.fromarray(canvas[:, :, 0] if channels == 1 else canvas)
    upscale = upscale or max(1, 64 // max(height, 1))
    if upscale > 1:
        image = image.resize((image.width * upscale, image.height * upscale), Image.NEAREST)
    return image


def save_samples(
    folder: Path, images: torch.Tensor, grid_count: int | None = 100, columns: int | None = None, **arrays: np.ndarray
) -> dict:
    """Write samples.npz (float images in [-1, 1], uint8 NHWC, any extra arrays such as labels) and grid.png (the
    first grid_count images, all when None, `columns` per row); returns the paths written.

    The guard's trace is not in samples.npz: it tells which samples came near a training image (see save_trace)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    content = {"images": images.numpy().astype(np.float32), "uint8": to_uint8(images), **arrays}
    _write_npz(folder / "samples.npz", content)
    grid_tmp = folder / "grid.tmp.png"
    image_grid(images if grid_count is None else images[:grid_count], columns=columns).save(grid_tmp)
    grid_tmp.replace(folder / "grid.png")
    return {"samples": str(folder / "samples.npz"), "grid": str(folder / "grid.png")}


TRACE_FILES = ("trace.npz", "trace.png")
PRIVATE_RECORD = "private.json"
PRIVATE_NOTE = (
    "private: measured against the private (member) images - keep it with them, do not share it; "
    "cpsample.json beside it holds no such measurement"
)


def save_private(folder: Path, command: str, settings: dict, results: dict) -> dict:
    """Write private.json: what a run measured against the private images (nearest-member similarity, near-copy
    counts, private file names), kept out of the shareable cpsample.json. Nothing measured: no file (an older one
    goes). Returns the path written, for cpsample.json to point at."""
    from cpsample.provenance import write_record

    path = Path(folder) / PRIVATE_RECORD
    if not results:
        path.unlink(missing_ok=True)
        return {}
    write_record(folder, command, settings, {"note": PRIVATE_NOTE, **results}, name=PRIVATE_RECORD)
    return {"private_record": str(path)}


def save_trace(
    folder: Path, trace: dict, timesteps: np.ndarray | None, alpha: float | None = None, keep: bool = False
) -> dict:
    """With keep, write trace.npz (per step and sample: the classifier's p1, whether the guard fired) and trace.png.
    Without, write neither and remove old ones: the trace says what the classifier knows about each sample, so
    it is kept out of the shareable outputs unless asked for (--trace)."""
    folder = Path(folder)
    for name in TRACE_FILES:
        (folder / name).unlink(missing_ok=True)
    if not keep or not trace:
        return {}
    arrays = {**trace, **({"timesteps": np.asarray(timesteps)} if timesteps is not None else {})}
    _write_npz(folder / "trace.npz", arrays)
    paths = {"trace_arrays": str(folder / "trace.npz")}
    png = plot_trace(trace, timesteps, folder / "trace.png", alpha=alpha)
    if png is not None:
        paths["trace"] = str(png)
    return paths


def _write_npz(path: Path, arrays: dict) -> None:
    """Write whole or not at all: a kill mid-write leaves the old file (or none), never a truncated one."""
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def plot_trace(
    trace: dict, timesteps: np.ndarray, path: Path, alpha: float | None = None, max_lines: int = 32
) -> Path | None:
    """Per-step p(y=1 | x_t) for some samples (like the paper's Fig. 7) and the share of samples guided per step."""
    if "p1" not in trace:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p1, fired = trace["p1"], trace.get("fired")
    steps = np.arange(len(p1))
    figure, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    ever = fired.any(axis=0) if fired is not None else np.zeros(p1.shape[1], bool)
    order = np.concatenate([np.flatnonzero(ever), np.flatnonzero(~ever)])[:max_lines]
    for i in order:
        axes[0].plot(steps, p1[:, i], lw=0.8, alpha=0.8, color="tab:red" if ever[i] else "tab:blue")
    if alpha is not None and alpha > 0:
        for level in (alpha, 1 - alpha):
            axes[0].axhline(level, color="k", ls="--", lw=0.8)
    axes[0].set(
        xlabel="denoising step (later ->)",
        ylabel="p(y=1 | x_t)",
        ylim=(-0.02, 1.02),
        title="p(y=1 | x_t) per sample at each step the classifier judged\n"
        "(red: pushed at some step; dashed: alpha, 1 - alpha)",
    )
    if fired is not None:
        axes[1].plot(steps, fired.mean(axis=1) * 100, color="tab:red")
        axes[1].set(
            xlabel="denoising step (later ->)",
            ylabel="% of samples pushed",
            title="share of samples the guard pushed away at each step",
        )
    tick_positions = np.linspace(0, len(steps) - 1, min(6, len(steps))).astype(int)
    for axis in axes:
        axis.set_xticks(tick_positions)
        axis.set_xticklabels([f"{i}\n(t={int(timesteps[i])})" for i in tick_positions], fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)
