"""Choose CPSample's knobs: the least aggressive (alpha, s) whose near-copy share stays under a target.

Given a selective early classifier (`train-classifier --negatives samples`), the two-stage guard (cpsample-staged)
competes too, with its early and late scales searched; it becomes the classifier's default only when it wins.

"Least aggressive" is measured, not guessed: among the settings that meet the target on the calibration batch,
the one whose samples stay closest to held-out real images (lowest Frechet distance in the feature net's space),
ties broken by the smaller share of guided steps. Every setting starts from the same noise, so differences come
from the knobs alone. The same grid runner feeds the benchmark's trade-off table.

A small batch is a screen, not a verdict: its few best settings are measured again on fresh noise (a confirmation
round) and the choice is made on the pooled near-copies and the confirmation's Frechet distance.

The model may also be a Stable Diffusion pipeline folder with a latent classifier (`train-latent-classifier`): the
grid then samples the pipeline with prompts (the classifier's captions by default), counts near-copies
of the private images in pixels as `sample` does, and measures no FD (there are no held-out images), so the
least aggressive feasible setting is the one guiding the fewest steps. Two stages are not offered there.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from pathlib import Path

from tqdm.auto import tqdm

from cpsample.calibration import grid
from cpsample.calibration.settings import FINALISTS, GridSettings, latent_heldout, model_for, parse_caps  # noqa: F401 (their home was here)
from cpsample.evaluation.detector import NearCopyDetector
from cpsample.evaluation.measures import MEASURES, Judge, Reference, pool_rows
from cpsample.models.bundle import resolve_model_dir
from cpsample.models.pretrained import Classifier, DiffusionModel
from cpsample.sampling.adapters import LatentAdapter, PixelAdapter
from cpsample.sampling.generate import SampleConfig, generate
from cpsample.sampling.guards import CPSampleGuard, GuardContext, NoGuard, StagedCPSampleGuard
from cpsample.sampling.guards.cpsample import CHECK_EVERY_STEP
from cpsample.sampling.guards.staged import StagedCPSampleOptions
from cpsample.sampling.pipeline import check_classifier_fits, check_same_schedule
from cpsample.sampling.spec import GuardSpec

# The grid's kinds of row, by their guards' own names: plain sampling (every cut is measured against it), CPSample's
# one-stage rule, its two stages.
PLAIN, ONE_STAGE, TWO_STAGE = NoGuard.name, CPSampleGuard.name, StagedCPSampleGuard.name


def run_grid(settings: GridSettings, progress: bool = True, candidates: list[dict] | None = None) -> list[dict]:
    """Plain sampling plus every (alpha, s) in the grid (or the given candidates, plain first) on the same seeds; one
    row of measurements each."""
    candidates = grid_candidates(settings) if candidates is None else [setting_of(row) for row in candidates]
    if candidates[0]["guard"] != PLAIN:
        raise ValueError("the first candidate must be plain sampling: every row's time is measured against it")
    run, reference = (_latent_runner if settings.latent else _pixel_runner)(settings)
    judge = Judge.from_reference(reference, (*GRID_MEASURES, *settings.measures))
    rows = []
    for candidate in tqdm(candidates, desc="settings", disable=not progress):
        started = time.time()
        result = run(candidate)
        rows.append({**candidate, **judge(result, seconds=time.time() - started)})
    return judge.relate(rows)


# A grid row's measurements, in its columns' order: n, near_copies, near_copy_share, ci_low, ci_high, steps_guided,
# last_fired_t, frechet_distance, seconds (then time_vs_plain against plain's row).
GRID_MEASURES = ("near_copy_share", "guided_share", "frechet_distance", "time")


def _pixel_runner(settings: GridSettings):
    """(sample a candidate, what its rows are measured against) for a pixel-space denoiser."""
    adapter, classifier, reference, config = pixel_parts(settings)

    def run(candidate: dict):
        return generate(adapter, candidate_spec(settings, candidate), config, classifier)

    return run, reference


def pixel_parts(settings: GridSettings) -> tuple[PixelAdapter, Classifier, Reference, SampleConfig]:
    """(the model's adapter, the classifier, what rows are measured against, how to sample) for a pixel-space
    denoiser: the weights and data read once, every classifier checked against the model before anything runs."""
    model = DiffusionModel.from_pretrained(settings.model, settings.device)
    classifier = Classifier.from_pretrained(settings.classifier, settings.device)
    for folder in settings.late_classifiers:  # refused before the grid starts, not half-way through it
        other = Classifier.from_pretrained(folder, settings.device)
        check_classifier_fits(other.model, other.folder, model.unet, model.schedule, model.folder)
    if model.conditional:
        raise ValueError(
            f"{model.folder or 'this model'} is a class-conditional model: sample it with `cpsample sample --classes`"
        )
    reference = Reference(
        detector=NearCopyDetector(model.members.images, settings.threshold, settings.features),
        net=_quality_net(settings.quality_net, model.nonmembers.images.shape[1]),
        heldout=model.nonmembers.images,
    )
    config = SampleConfig(
        n=settings.n_samples,
        steps=settings.steps,
        scheduler=settings.scheduler,
        batch_size=settings.batch_size,
        device=settings.device,
        seed=settings.seed,
        progress=False,
    )
    return PixelAdapter(model, settings.scheduler), classifier, reference, config


def _latent_runner(settings: GridSettings):
    """(sample a candidate, what its rows are measured against: no quality net) for a Stable Diffusion pipeline: each
    prompt gets ceil(n_samples / prompts) images, every setting the same noise; near-copies of the private images in
    pixels, as `sample` counts them."""
    from cpsample.sampling.latent import (
        check_latent_classifier,
        latent_shape,
        load_private_images,
        load_sd_pipeline,
        nearest_private,
    )
    from cpsample.sampling.latent_pairing import check_latent_pairing, private_images_of

    pipe = load_sd_pipeline(
        resolve_model_dir(settings.model, "denoiser"), scheduler=settings.scheduler, device=settings.device
    )
    classifier = Classifier.from_pretrained(settings.classifier, settings.device)
    check_latent_classifier(classifier.model, pipe)  # as `sample` checks it
    check_same_schedule(
        classifier.folder,
        pipe.scheduler,
        "train it with `cpsample train-latent-classifier --model` on this pipeline",
        "this pipeline's",
    )
    _, height, width = latent_shape(pipe)
    if height != width:
        raise ValueError(f"near-copies are counted on square images; this pipeline makes {height}x{width} latents")
    private = load_private_images(
        settings.private or private_images_of(classifier.folder), height * pipe.vae_scale_factor
    )
    check_latent_pairing(classifier.folder, pipe, private)  # its VAE and its private images, as `sample` checks
    per_prompt = math.ceil(settings.n_samples / len(settings.prompts))
    context = GuardContext(model=None, classifier=classifier, device=settings.device)
    adapter = LatentAdapter(pipe).conditioned(list(settings.prompts), settings.cfg_scale)
    config = SampleConfig(
        n=per_prompt, steps=settings.steps, batch_size=settings.batch_size, seed=settings.seed, progress=False
    )

    def run(candidate: dict):
        guard = NoGuard() if candidate["guard"] == PLAIN else candidate_spec(settings, candidate).build(context)
        return generate(adapter, guard, config)

    def detector(images):
        return nearest_private(images, private, settings.threshold).copies

    heldout = latent_heldout(settings.model)
    if heldout is None or settings.quality_net is None:
        return run, Reference(detector=detector)
    net = _quality_net(settings.quality_net, heldout.channels)
    return run, Reference(detector=detector, net=net, heldout=heldout.images)


SETTING_KEYS = ("guard", "alpha", "scale", "early_scale", "max_push", "late_denoised", "late_classifier")


def setting_of(row: dict) -> dict:
    """The knobs of a grid row (its candidate), without the measurements."""
    return {key: row.get(key, False if key == "late_denoised" else None) for key in SETTING_KEYS}


def grid_candidates(settings: GridSettings) -> list[dict]:
    """Plain, the one-stage grid (the paper's rule, uncapped), then, if an early classifier is given, the two-stage
    grid: late stage on x_t (the main classifier, then each of `late_classifiers`) or on x0_hat (the early
    classifier), each with its scales."""

    def candidate(
        guard, alpha=None, scale=None, early_scale=None, max_push=None, late_denoised=False, late_classifier=None
    ):
        return {
            "guard": guard,
            "alpha": alpha,
            "scale": scale,
            "early_scale": early_scale,
            "max_push": max_push,
            "late_denoised": late_denoised,
            "late_classifier": late_classifier,
        }

    latent = settings.latent
    alphas = settings.alphas or (grid.LATENT_ALPHAS if latent else grid.ALPHAS)
    scales = settings.scales or (grid.LATENT_SCALES if latent else grid.SCALES)
    one_stage = [candidate(ONE_STAGE, a, s) for a, s in itertools.product(alphas, scales)]
    late_options = [
        (False, STAGED_ALPHA, s, late) for late in (None, *settings.late_classifiers) for s in settings.staged_scales
    ] + [(True, DENOISED_LATE_ALPHA, s, None) for s in settings.denoised_late_scales]
    two_stage = (
        []
        if settings.early_classifier is None
        else [
            candidate(TWO_STAGE, alpha, s, e, cap, denoised, late)
            for cap, e, (denoised, alpha, s, late) in itertools.product(
                settings.push_caps, settings.early_scales, late_options
            )
        ]
    )
    return [candidate(PLAIN)] + one_stage + two_stage


# The two-stage grid moves the scales only; its alphas and windows are cpsample-staged's defaults (bench/README.md,
# Findings 9-10: moving them did not help on the bundled model), except that the stages take turns: the early stage
# stops where the late one starts (t > 200), so no step pays for both classifiers. Finding 11: with late s 30 this
# keeps the near-copy share (0.7% over 4 seeds) at FD +0.26 +- 0.21, and cuts time from 1.28x to 1.16x plain.
STAGED_ALPHA = 0.1
# A selective late stage (the early classifier on x0_hat at t <= 200) fires on few samples, so it can afford a looser
# alpha: on the bundled model (4 seeds, Finding 13) alpha 0.3 left 1.4-1.5% near-copies where 0.1 left 2.3%, at the
# same FD.
DENOISED_LATE_ALPHA = 0.3
STAGED_EARLY_MIN_T = StagedCPSampleOptions().max_t + 1


def candidate_spec(settings: GridSettings, candidate: dict) -> GuardSpec:
    """The guard a grid row samples with."""
    return GuardSpec.create(candidate["guard"], **_knobs(settings, candidate))


def _knobs(settings: GridSettings, candidate: dict) -> dict:
    guard, alpha, scale = candidate["guard"], candidate["alpha"], candidate["scale"]
    if guard == ONE_STAGE:  # every step is checked, so the highest timestep at which the guard fires is measured
        return dict(alpha=alpha, scale=scale, tau=settings.tau, max_t=CHECK_EVERY_STEP)
    if guard == TWO_STAGE:
        return dict(
            early_classifier=settings.early_classifier,
            alpha=alpha,
            scale=scale,
            early_scale=candidate["early_scale"],
            early_min_t=STAGED_EARLY_MIN_T,
            tau=settings.tau,
            max_push=candidate["max_push"],
            late_denoised=candidate["late_denoised"],
            late_classifier=candidate["late_classifier"],
        )
    return {key: candidate[key] for key in ("alpha", "scale") if candidate.get(key) is not None}  # any other guard


def share_limit(rows: list[dict], target: float | None = None, reduction: float | None = None) -> float:
    """The highest near-copy share that meets the goal: <= target (absolute) and <= (1 - reduction) x plain's share."""
    limit = 1.0 if target is None else target
    if reduction is not None:
        limit = min(limit, (1.0 - reduction) * next(r for r in rows if r["guard"] == PLAIN)["near_copy_share"])
    return limit


def feasible_rows(rows: list[dict], target: float | None = None, reduction: float | None = None) -> list[dict]:
    """Guarded rows that meet the goal (share_limit)."""
    limit = share_limit(rows, target, reduction)
    return [r for r in rows if r["guard"] != PLAIN and r["near_copy_share"] <= limit]


def choose_setting(rows: list[dict], target: float | None = None, reduction: float | None = None) -> dict | None:
    """The feasible CPSample row with the best quality (then the fewest guided steps); None when none is feasible."""
    feasible = feasible_rows(rows, target, reduction)
    return min(feasible, key=_quality_order) if feasible else None


def _quality_order(row: dict) -> tuple:
    """Best quality first (lowest FD), then the fewest guided steps, then the gentlest knobs."""
    return (
        row["frechet_distance"] if row["frechet_distance"] is not None else 0.0,
        row["steps_guided"] or 0.0,
        row["alpha"],
        row["scale"],
        row.get("early_scale") or 0.0,
        cap_order(row.get("max_push")),
    )


# Below this many images per setting, FD differences of ~20% are within seed noise (bench/README.md, Findings 10-11:
# on 600 images plain FD moves 5.5 -> 10.3 between seeds, and seed 0 picked a setting 2,400 images overturned).
RELIABLE_IMAGES = 2000
CLOSE_FD = 0.2


# The confirmation round: the screen's FINALISTS best feasible settings (settings.py says why) and plain, sampled
# again from noise CONFIRM_SEED_OFFSET seeds away (clear of the seeds 0-3 the benchmarks evaluate on).
CONFIRM_SEED_OFFSET = 1000


def finalists(
    rows: list[dict], target: float | None = None, reduction: float | None = None, count: int = FINALISTS
) -> list[dict]:
    """The `count` feasible rows with the best quality, best first."""
    return sorted(feasible_rows(rows, target, reduction), key=_quality_order)[:count]


def confirm_finalists(
    rows: list[dict],
    settings: GridSettings,
    target: float | None = None,
    reduction: float | None = None,
    count: int = FINALISTS,
    n_samples: int | None = None,
    progress: bool = True,
) -> list[dict]:
    """Plain and the screen's finalists measured again on `n_samples` fresh images (default: twice the screen's),
    each pooled with its screen row: near-copies counted over both rounds, FD and time from the confirmation (every
    finalist sees its noise, so their FDs compare pairwise). Plain first; empty when nothing was feasible."""
    chosen_few = finalists(rows, target, reduction, count)
    if not chosen_few:
        return []
    plain = next(row for row in rows if row["guard"] == PLAIN)
    again = dataclasses.replace(
        settings, n_samples=n_samples or 2 * settings.n_samples, seed=settings.seed + CONFIRM_SEED_OFFSET
    )
    confirmed = run_grid(again, progress=progress, candidates=[plain, *chosen_few])
    return [pool_rounds(screen, second) for screen, second in zip([plain, *chosen_few], confirmed)]


def choose_confirmed(
    confirmed: list[dict], target: float | None = None, reduction: float | None = None
) -> tuple[dict, bool]:
    """The best feasible finalist after the confirmation round, and True; when every finalist lost the cut once
    pooled, the most protective one (fewest near-copies, then best FD), and False."""
    chosen = choose_setting(confirmed, target, reduction)
    if chosen is not None:
        return chosen, True
    return min(confirmed[1:], key=lambda row: (row["near_copy_share"], row["frechet_distance"] or 0.0)), False


def one_stage_setting(
    rows: list[dict], chosen: dict | None, target: float | None = None, reduction: float | None = None
) -> dict | None:
    """The setting the paper's one-stage rule keeps (`--option one_stage=true`, or any knob given): the chosen row when
    it is one-stage (after a confirmation round that can differ from the screen's best one-stage row, and the chosen
    row is the one `--guard cpsample` must run), else the screen's best feasible one-stage row, else the chosen row."""
    if chosen is not None and chosen["guard"] == ONE_STAGE:
        return chosen
    return choose_setting([row for row in rows if row["guard"] != TWO_STAGE], target, reduction) or chosen


def pool_rounds(screen: dict, confirmation: dict) -> dict:
    """One setting's screen and confirmation rows as one row: near-copies and guided steps over both rounds; FD,
    time and the rest from the confirmation (FD is not additive; the screen's stays as screen_frechet_distance)."""
    return {
        **pool_rows(screen, confirmation, [MEASURES[name] for name in GRID_MEASURES]),
        "confirmation_n": confirmation["n"],
        "screen_frechet_distance": screen["frechet_distance"],
    }


def close_calls(
    rows: list[dict],
    chosen: dict,
    target: float | None = None,
    reduction: float | None = None,
    margin: float = CLOSE_FD,
) -> list[dict]:
    """Other feasible rows whose FD is within `margin` (relative) of the chosen row's: on a small batch the choice
    between them is a coin toss."""
    best = chosen.get("frechet_distance")
    if best is None:
        return []
    return [
        r
        for r in feasible_rows(rows, target, reduction)
        if r is not chosen and r.get("frechet_distance") is not None and r["frechet_distance"] <= best * (1.0 + margin)
    ]


# What a user can expect CPSample to cost (the project's aims; bench/README.md measures both models against them).
AIMED_FD_INCREASE = 0.10
AIMED_TIME_RATIO = 1.15


def cost_warnings(chosen: dict, plain: dict) -> list[str]:
    """Plain-language warnings where the chosen setting costs more quality or time than the project aims for. Such a
    cost is a property of the model as much as of the guard: where plain sampling copies often, every defence moves
    many samples (bench/README.md, Finding 12: on a model copying 45% of the time even rejection sampling costs
    +135% FD)."""
    warnings = []
    fd, plain_fd = chosen.get("frechet_distance"), plain.get("frechet_distance")
    if fd is not None and plain_fd and fd > (1 + AIMED_FD_INCREASE) * plain_fd:
        warnings.append(
            f"quality: FD {fd / plain_fd - 1:+.0%} vs plain on this batch (aim: at most "
            f"{AIMED_FD_INCREASE:+.0%}). Plain sampling copies {plain['near_copy_share']:.0%} of the time "
            "here; removing that many copies costs quality with any defence. Compare AMG and rejection "
            "sampling on your model with bench/bench_seeds.py before you rely on it"
        )
    ratio = chosen.get("time_vs_plain")
    if ratio is not None and ratio > AIMED_TIME_RATIO:
        # the goal-seeking search times plain on its screen, minutes earlier: other load on the machine moves it
        when = ", plain timed on the screen" if plain.get("plain_from") == "screen" else ""
        warnings.append(
            f"time: {ratio:.2f}x plain on this batch (aim: at most {AIMED_TIME_RATIO:.2f}x; one draw{when}, "
            "bench/bench_time.py measures it over repeats)"
        )
    return warnings


def narrowed_grid_flags(candidates: list[dict]) -> str:
    """calibrate flags that rerun only these candidates (their alphas and scales; two-stage rows their two scales,
    push caps and other late classifiers)."""

    def values(rows, key):
        return ",".join(f"{v:g}" for v in sorted({r[key] for r in rows}))

    one = [r for r in candidates if r["guard"] == ONE_STAGE]
    two = [r for r in candidates if r["guard"] == TWO_STAGE]
    flags = [f"--alphas {values(one, 'alpha')} --scales {values(one, 'scale')}"] if one else []
    if two:
        caps = sorted({r.get("max_push") for r in two}, key=cap_order)
        on_x_t = [r for r in two if not r.get("late_denoised")]
        on_x0 = [r for r in two if r.get("late_denoised")]
        flags.append(
            f"--early-scales {values(two, 'early_scale')} --staged-scales {values(on_x_t, 'scale') or 'none'} "
            f"--denoised-late-scales {values(on_x0, 'scale') or 'none'} "
            f"--push-caps {','.join(cap_text(cap) for cap in caps)}"
        )
        others = sorted({r["late_classifier"] for r in on_x_t if r.get("late_classifier") is not None})
        flags.extend(f"--late-classifier {folder}" for folder in others)
    return " ".join(flags)


# The guard skips its checks above max_t: the highest t at which it fired on the calibration batch, plus at least
# MAX_T_MARGIN (one step of 50-step DDIM), rounded up to a multiple of 100. Measured on the bundled model: 380 on
# the calibration batch, 380 and 400 on 600 samples each of two other seeds -> max_t 400.
MAX_T_MARGIN = 20


def calibrated_settings(chosen: dict, tau: float, num_train_timesteps: int = 1000) -> dict:
    """The one-stage knobs written to calibration.json for a chosen grid row (the window only for a one-stage row:
    a two-stage row's late stage has its own)."""
    if chosen.get("guard") != ONE_STAGE:
        max_t = None
    elif chosen.get("max_t") is not None:  # the goal-seeking search checked this window in full
        max_t = chosen["max_t"]
    else:
        max_t = check_window(chosen.get("last_fired_t"), num_train_timesteps)
    return {"alpha": chosen["alpha"], "scale": chosen["scale"], "tau": tau, "max_t": max_t}


def check_window(last_fired_t: int | None, num_train_timesteps: int = 1000) -> int | None:
    """max_t for a guard that last fired at `last_fired_t`: MAX_T_MARGIN above it, rounded up to a hundred (None:
    it never fired, so every step stays checked)."""
    if last_fired_t is None:
        return None
    return min(num_train_timesteps - 1, math.ceil((int(last_fired_t) + MAX_T_MARGIN) / 100) * 100)


def two_stage_calibration(chosen: dict, settings: GridSettings) -> dict | None:
    """cpsample-staged's options for a chosen two-stage row (what calibration.json records as "two_stage"), else
    None."""
    if chosen.get("guard") != TWO_STAGE:
        return None
    capped = {"max_push": chosen["max_push"]} if chosen.get("max_push") is not None else {}
    selective_late = {"late_denoised": True} if chosen.get("late_denoised") else {}
    other_late = (
        {"late_classifier": _folder_record(chosen["late_classifier"])}
        if chosen.get("late_classifier") is not None
        else {}
    )
    return {
        "early_classifier": _folder_record(settings.early_classifier),
        "early_scale": chosen["early_scale"],
        "early_min_t": STAGED_EARLY_MIN_T,
        "alpha": chosen["alpha"],
        "scale": chosen["scale"],
        "tau": settings.tau,
        **capped,
        **selective_late,
        **other_late,
    }


def _folder_record(folder: str) -> str:
    """A classifier folder as calibration.json records it: absolute, so commands run elsewhere find it ("bundled" as
    is)."""
    from cpsample.models.bundle import is_bundled

    return folder if is_bundled(folder) else str(Path(folder).resolve())


def _quality_net(quality_net: str | None, channels: int):
    """The feature net FD is measured in, or None when no net is given (the FD column stays empty)."""
    if quality_net is None:
        return None
    from cpsample.evaluation import load_feature_net

    return load_feature_net(quality_net, channels=channels)


def plot_grid(rows: list[dict], path: Path, chosen: dict | None = None, limit: float | None = None) -> Path:
    """Near-copy share (with its 95% interval) against Frechet distance, one numbered point per setting and a key
    beside the plot (labels next to clustered points overlap), plain in red, the chosen one circled, and the share
    that meets the goal as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    # Without a quality score (a Stable Diffusion pipeline: no held-out images), the share of guided steps stands in.
    by_fd = any(r["frechet_distance"] is not None for r in rows)
    x_of = (lambda r: r["frechet_distance"]) if by_fd else (lambda r: 100 * (r["steps_guided"] or 0.0))
    rows = [r for r in rows if x_of(r) is not None]
    figure, axis = plt.subplots(figsize=(11, max(4.5, 1.2 + 0.16 * len(rows))))
    colours = {PLAIN: "red", ONE_STAGE: "tab:blue", TWO_STAGE: "tab:orange"}
    key = []
    for number, row in enumerate(rows):
        x, y, colour = x_of(row), 100 * row["near_copy_share"], colours.get(row["guard"], "tab:blue")
        if row.get("ci_low") is not None:
            axis.errorbar(
                x,
                y,
                yerr=[[y - 100 * row["ci_low"]], [100 * row["ci_high"] - y]],
                fmt="none",
                ecolor=colour,
                alpha=0.35,
                capsize=2,
            )
        axis.scatter(x, y, color=colour, zorder=3)
        if chosen is not None and setting_of(row) == setting_of(chosen):
            axis.scatter(x, y, s=180, facecolors="none", edgecolors="green", linewidths=2, label="chosen", zorder=4)
        axis.annotate(str(number), (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
        key.append(
            f"{number}: {setting_label(row)} ({row['near_copies']}/{row['n']}, "
            + (f"FD {x:.2f})" if by_fd else f"{x:.0f}% steps guided)")
        )
    if limit is not None and limit < 1.0:
        axis.axhline(100 * limit, color="grey", linestyle="--", linewidth=1, label=f"goal: <= {100 * limit:.1f}%")
    fds = [r["frechet_distance"] for r in rows] if by_fd else []
    if fds and min(fds) > 0 and max(fds) > 5 * min(fds):
        axis.set_xscale("log")  # one wrecked setting would squeeze every other point into a corner
        axis.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axis.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    axis.set_xlabel(
        "Frechet distance to held-out images (feature net; lower = better quality)"
        if by_fd
        else "steps guided (% of sample-steps; no quality score without held-out images)"
    )
    axis.set_ylabel("near-copies (% of samples, 95% interval)")
    figure.suptitle(
        "CPSample near-copies vs quality (red: plain, blue: one stage, orange: two stages)", x=0.02, ha="left"
    )
    if chosen is not None or limit is not None:
        axis.legend(loc="upper right")
    figure.text(0.56, 0.5, "\n".join(key), fontsize=7, va="center", family="monospace")
    figure.subplots_adjust(left=0.07, right=0.54, bottom=0.12, top=0.92)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)


def setting_label(row: dict) -> str:
    if row["guard"] == PLAIN:
        return "plain"
    label = f"a={row['alpha']:g}, s={row['scale']:g}"
    if row["guard"] == ONE_STAGE:
        return label
    cap = "" if row.get("max_push") is None else f", cap {row['max_push']:g}"
    judged = late_judges(row)
    late = {"x0_hat": "late on x0_hat", "x_t": "late"}.get(judged, f"late {judged}")
    return f"2 stages: early s={row['early_scale']:g}, {late} s={row['scale']:g}{cap}"


def late_judges(row: dict) -> str:
    """What a two-stage row's late stage judges: "x0_hat" (the selective classifier), "x_t" (the main one) or
    "x_t by NAME" (another late classifier, by its folder's name)."""
    if row.get("late_denoised"):
        return "x0_hat"
    other = row.get("late_classifier")
    return "x_t" if other is None else f"x_t by {Path(other).name}"


def cap_order(cap: float | None) -> float:
    """Caps from tightest to none: uncapped (None) sorts last."""
    return math.inf if cap is None else cap


def cap_text(cap: float | None) -> str:
    """A push cap as `--push-caps` reads it (none: uncapped)."""
    return "none" if cap is None else f"{cap:g}"
