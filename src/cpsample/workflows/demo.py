"""The demo: plain sampling, CPSample as calibrated (and the paper's one-stage rule, where the calibration chose two
stages) and rejection sampling, side by side.

All start from the same seeds. Rejection sampling reuses the plain batch as its first round (that is what
it would have drawn) and pays for every redraw, so its cost per accepted image is honest.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from cpsample.evaluation.detector import NearCopyDetector
from cpsample.evaluation.measures import DenoiserCalls, GuardActivity, Judge, Time
from cpsample.evaluation.nearcopy import resolve_threshold
from cpsample.models.pretrained import DiffusionModel
from cpsample.sampling.adapters import PixelAdapter
from cpsample.sampling.generate import SampleConfig, generate
from cpsample.sampling.guards import StagedCPSampleGuard
from cpsample.sampling.outputs import image_grid, plot_trace
from cpsample.sampling.rejection import rejection_sample
from cpsample.sampling.spec import GuardSpec


@dataclass
class DemoSettings:
    model: str = "bundled"
    classifier: str = "bundled"
    n_samples: int = 500
    steps: int = 50
    scheduler: str = "ddim"
    # None: the classifier's calibration (calibration.json next to it, as `cpsample calibrate` writes it).
    alpha: float | None = None
    scale: float | None = None
    tau: float | None = None
    threshold: float | None = None  # None: the near-copy yardstick's default for `features`
    features: str = "pixels"
    mia_members: int = 200
    batch_size: int = 250
    device: str = "cpu"
    seed: int = 0
    # Where the classifier's calibration chose two stages, also sample the paper's one-stage rule (its calibrated
    # knobs).
    one_stage_row: bool = True

    def __post_init__(self):
        self.threshold = resolve_threshold(self.threshold, self.features)


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
    figures = _sample_figures(out, images, protected, _late_alpha(protected.guard_settings))
    settings_used = {name: result.guard_settings for name, result in guarded.items()}
    return images, {"costs": costs, "figures": figures, "cpsample_settings": settings_used}


ONE_STAGE = "cpsample-one-stage"  # the paper's rule, shown next to a two-stage default
# What each method's accepted images cost (seconds, denoiser calls: in all and per image) and, for the guards, how
# often they acted.
COST_MEASURES = (Time(), Time(per_image=True), DenoiserCalls(), GuardActivity())


def _late_alpha(guard_settings: dict) -> float:
    """The alpha of the x_t rule (the only one for one stage; the late stage's for two)."""
    return guard_settings["late"]["alpha"] if "late" in guard_settings else guard_settings["alpha"]


def _sample_figures(out: Path, images: dict, protected, alpha: float) -> dict:
    figures = {}
    for name, batch in images.items():
        image_grid(batch[:64], columns=8).save(out / f"grid_{name}.png")
        figures[f"grid_{name}"] = f"grid_{name}.png"
    plot_trace(protected.trace, protected.timesteps, out / "trace.png", alpha=alpha)
    figures["trace"] = "trace.png"
    return figures


WHITE_BOX = "white box (holds the weights)"
BLACK_BOX = "black box (sees only samples)"


def membership_rows(
    settings: DemoSettings,
    model: DiffusionModel,
    images: dict | None = None,
    out: Path | None = None,
    progress: bool = True,
) -> dict:
    """Membership inference per threat model, on the same members and non-members.

    White box: loss attack and PIA against the plain and the CPSample-guarded denoiser (same images, same noise).
    Black box: the sample-only attack (each candidate's distance to its nearest generated sample) on every method's
    samples in `images`; with `out`, its ROC goes to out/mia_sample_nn_roc.png (returned under "figures").
    """
    from cpsample.attacks import run_mia, run_sample_attack
    from cpsample.attacks.sample_nn import plot_sample_attacks

    rows = []
    defences = {
        "plain": GuardSpec.create("none"),
        "cpsample": GuardSpec.create("cpsample", alpha=settings.alpha, scale=settings.scale, tau=settings.tau),
    }
    for defence, spec in defences.items():
        attacks = run_mia(
            model,
            guard=spec,
            classifier=settings.classifier,
            n_members=settings.mia_members,
            seed=settings.seed,
            device=settings.device,
            progress=progress,
        )
        for name, result in attacks.items():
            best = result.best
            rows.append(
                {
                    "threat model": WHITE_BOX,
                    "defence": defence,
                    "attack": name,
                    "best t": result.best_t,
                    "AUC": round(best.auc, 4),
                    "TPR@1%FPR": round(best.tpr_at_1pct_fpr, 4),
                    "Z": round(best.z, 3),
                    "p (one-sided)": best.p_value,
                }
            )
    figures, sample_only = {}, {}
    if images:
        # The same candidates as run_mia's (same counts, same seed), in the near-copy yardstick's feature space.
        sample_only = run_sample_attack(
            {name: np.asarray(batch) for name, batch in images.items()},
            model=model,
            n_members=settings.mia_members,
            features=settings.features,
            threshold=settings.threshold,
            seed=settings.seed,
        )
        for name, result in sample_only.items():
            rows.append(
                {
                    "threat model": BLACK_BOX,
                    "defence": name,
                    "attack": result.attack,
                    "best t": "-",
                    **result.row(),
                    "members copied": round(result.member_copied_share, 4),
                }
            )
        if out is not None:
            plot_sample_attacks(
                sample_only,
                Path(out) / "mia_sample_nn_roc.png",
                title=f"sample-only attack: {settings.n_samples} samples per method",
            )
            figures["mia_sample_nn_roc"] = "mia_sample_nn_roc.png"
    first = next(iter(sample_only.values()), None)
    note = (
        f"{settings.mia_members} members vs as many random non-members (the same images for every attack); "
        "AUC 0.5 = no leak, TPR@1%FPR = share of members found while flagging 1% of non-members. "
        "White box: loss attack (paper Alg. 1) and PIA query the denoiser (as CPSample guards it), so they model "
        "whoever holds the weights. Black box: sample-nn scores each candidate by the cosine distance of its "
        f"{settings.features} features to its nearest generated sample"
        + (f" ({first.n_samples} samples per method)" if first else "")
        + ", so it models anyone who sees the shared outputs and applies to every defence, rejection sampling "
        "included; its p is a one-sided Mann-Whitney U test (members closer), 'members copied' the share of "
        f"members with a near-copy (> {settings.threshold}) among the samples."
    )
    return {"rows": rows, "note": note, "figures": figures}


def run_demo(out: Path, settings: DemoSettings, progress: bool = True) -> dict:
    """Sample three ways, evaluate, attack, and write report.{json,md,html} with figures into out."""
    from cpsample.evaluation import evaluate, write_report
    from cpsample.provenance import seed_everything, write_record

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(settings.seed)
    started = time.time()
    model = DiffusionModel.from_pretrained(settings.model, settings.device)  # weights and data read once
    members, nonmembers = model.members.images, model.nonmembers.images
    images, sampled = sample_three_ways(settings, out, model, progress)
    membership = membership_rows(settings, model, images, out, progress) if settings.mia_members > 0 else None
    membership_figures = membership.pop("figures") if membership else {}
    results = evaluate(
        {name: batch.numpy() for name, batch in images.items()},
        members,
        nonmembers,
        features=settings.features,
        threshold=settings.threshold,
        figures_dir=out,
        membership=membership,
        seed=settings.seed,
        progress=progress,
    )
    results["costs"] = sampled["costs"]
    results["cpsample_settings"] = sampled["cpsample_settings"]  # as used: calibrated knobs resolved
    results["figures"] = {**results.get("figures", {}), **sampled["figures"], **membership_figures}
    results["seconds_total"] = round(time.time() - started, 1)
    paths = write_report(out, results, title="cpsample demo: plain vs CPSample vs rejection sampling")
    np.savez_compressed(out / "samples.npz", **{name: batch.numpy() for name, batch in images.items()})
    write_record(
        out,
        "demo",
        asdict(settings),
        {
            "report": str(paths["html"]),
            "seconds": results["seconds_total"],
            "cpsample_settings": results["cpsample_settings"],
        },
    )
    return results
