"""The demo: plain sampling, CPSample as calibrated (and the paper's one-stage rule, where the calibration chose two
stages) and rejection sampling, side by side.

All start from the same seeds. Rejection sampling reuses the plain batch as its first round (that is what
it would have drawn) and pays for every redraw, so its cost per accepted image is honest.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from cpsample.attacks.threat_models import membership_rows
from cpsample.evaluation.detector import NearCopyDetector
from cpsample.evaluation.measures import COST_MEASURES, Judge
from cpsample.models.pretrained import DiffusionModel
from cpsample.sampling.adapters import PixelAdapter
from cpsample.sampling.generate import SampleConfig, generate
from cpsample.sampling.guards import StagedCPSampleGuard
from cpsample.sampling.rejection import rejection_sample
from cpsample.sampling.spec import GuardSpec
from cpsample.workflows.demo_report import sample_figures, write_demo
from cpsample.workflows.settings import DemoSettings  # noqa: F401 (its home was here)


def sample_three_ways(
    settings: DemoSettings, out: Path, model: DiffusionModel, progress: bool = True
) -> tuple[dict, dict]:
    """Returns ({method: images}, {method: cost and guard statistics})."""
    members = model.members.images
    adapter = PixelAdapter(model, settings.scheduler)
    config = SampleConfig(
        n=settings.n_samples,
        steps=settings.steps,
        scheduler=settings.scheduler,
        batch_size=settings.batch_size,
        device=settings.device,
        seed=settings.seed,
        overwrite=True,  # samples/ is the demo's own cache: a rerun with other settings redraws it
        progress=progress,
    )

    def run(spec: GuardSpec, folder: str):
        return generate(adapter, spec, replace(config, work_dir=out / "samples" / folder), settings.classifier)

    plain = run(GuardSpec.create("none"), "plain")
    knobs = dict(alpha=settings.alpha, scale=settings.scale, tau=settings.tau)
    protected = run(GuardSpec.create("cpsample", **knobs), "cpsample")
    one_stage = None
    if settings.one_stage_row and protected.guard_settings["guard"] == StagedCPSampleGuard.name:
        one_stage = run(GuardSpec.create("cpsample", one_stage=True), ONE_STAGE)
    detector = NearCopyDetector(members, settings.threshold, settings.features)

    def draw(count: int, round_index: int):
        if round_index == 0:
            return plain
        redraw = replace(config, n=count, seed=settings.seed + 1000 * round_index, overwrite=False)
        return generate(adapter, GuardSpec.create("none"), redraw)

    detect_started = time.time()
    rejected = rejection_sample(draw, settings.n_samples, detector)
    guarded = {"cpsample": protected, **({} if one_stage is None else {ONE_STAGE: one_stage})}
    cost = Judge(COST_MEASURES)
    costs = {
        "plain": cost(plain),
        **{name: cost(result) for name, result in guarded.items()},
        # the plain round was already paid for; the redraws and the copy checks are rejection sampling's own cost
        "rejection": {
            **cost(rejected, seconds=plain.seconds + (time.time() - detect_started)),
            "drawn": rejected.drawn,
            "rejected": rejected.rejected,
            "rounds": rejected.rounds,
        },
    }
    cost.relate(list(costs.values()))  # time_vs_plain
    images = {
        "plain": plain.images,
        **{name: result.images for name, result in guarded.items()},
        "rejection": rejected.images,
    }
    figures = sample_figures(out, images, protected)
    settings_used = {name: result.guard_settings for name, result in guarded.items()}
    return images, {"costs": costs, "figures": figures, "cpsample_settings": settings_used}


ONE_STAGE = "cpsample-one-stage"  # the paper's rule, shown next to a two-stage default


def run_demo(out: Path, settings: DemoSettings, progress: bool = True) -> dict:
    """Sample three ways, evaluate, attack, and write report.{json,md,html} with figures into out."""
    from cpsample.provenance import seed_everything
    from cpsample.sampling.adapters import LatentAdapter, adapter_class

    if adapter_class(settings.model) is LatentAdapter:
        from cpsample.workflows.demo_t2i import run_t2i_demo

        return run_t2i_demo(out, settings, progress)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(settings.seed)
    started = time.time()
    model = DiffusionModel.from_pretrained(settings.model, settings.device)  # weights and data read once
    members, nonmembers = model.members.images, model.nonmembers.images
    images, sampled = sample_three_ways(settings, out, model, progress)
    membership = membership_rows(settings, model, images, out, progress) if settings.mia_members > 0 else None
    title = "cpsample demo: plain vs CPSample vs rejection sampling"
    return write_demo(out, settings, images, members, nonmembers, sampled, membership, started, title, None, progress)
