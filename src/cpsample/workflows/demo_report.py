"""What both demos (pixel models: demo.py; text-to-image models: demo_t2i.py) do once their methods are sampled:
the sample figures, then judging every method's images against the members, and the report, samples.npz and record
in the demo's folder."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from cpsample.sampling.outputs import image_grid, plot_trace


def late_alpha(guard_settings: dict) -> float:
    """The alpha of the x_t rule (the only one for one stage; the late stage's for two)."""
    return guard_settings["late"]["alpha"] if "late" in guard_settings else guard_settings["alpha"]


def sample_figures(out: Path, images: dict, protected) -> dict:
    """A grid of (up to 64 of) each method's images, and the CPSample run's trace plot; {figure key: file}."""
    figures = {}
    for name, batch in images.items():
        image_grid(batch[:64], columns=8).save(out / f"grid_{name}.png")
        figures[f"grid_{name}"] = f"grid_{name}.png"
    plot_trace(protected.trace, protected.timesteps, out / "trace.png", alpha=late_alpha(protected.guard_settings))
    figures["trace"] = "trace.png"
    return figures


def write_demo(
    out: Path,
    settings,
    images: dict,
    members,
    nonmembers,
    sampled: dict,
    membership: dict | None,
    started: float,
    title: str,
    sample_labels: dict | None = None,
    progress: bool = True,
) -> dict:
    """Evaluate {method: images} against the members (settings: the demo's DemoSettings), add what sampling measured
    (`sampled`: its costs, cpsample_settings and figures, and anything else to report) and the membership rows, and
    write report.{json,md,html}, samples.npz and the record; returns the results."""
    from cpsample.evaluation import evaluate, write_report
    from cpsample.provenance import write_record

    membership_figures = membership.pop("figures") if membership else {}
    arrays = {name: np.asarray(batch) for name, batch in images.items()}
    results = evaluate(
        arrays,
        members,
        nonmembers,
        features=settings.features,
        threshold=settings.threshold,
        sample_labels=sample_labels,
        figures_dir=out,
        membership=membership,
        seed=settings.seed,
        progress=progress,
    )
    results.update({key: value for key, value in sampled.items() if key != "figures"})
    results["figures"] = {**results.get("figures", {}), **sampled["figures"], **membership_figures}
    results["seconds_total"] = round(time.time() - started, 1)
    paths = write_report(out, results, title=title)
    np.savez_compressed(out / "samples.npz", **arrays)
    record = {"report": str(paths["html"]), "seconds": results["seconds_total"]}
    write_record(out, "demo", asdict(settings), {**record, "cpsample_settings": results["cpsample_settings"]})
    return results
